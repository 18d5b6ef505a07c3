"""Folding inference-mode BatchNorm into the convolution that feeds it.

In eval mode a BatchNorm is a per-channel affine map ``y = s·x + t`` with ``s = γ / √(var + ε)`` and
``t = β − s·mean``. When it reads a convolution's output directly, the map moves into the convolution:
``W' = s·W`` (per output channel) and ``b' = s·b + t``. That is exact in real arithmetic; in floating
point it changes rounding only, so the arithmetic is done in float64 and cast back once.

Only a BatchNorm *after* a convolution is folded. A BatchNorm *before* one (the pre-activation family)
cannot move into it exactly: the convolution's zero padding would see the shifted border ``t`` instead
of zeros, and a ReLU usually sits in between anyway.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def batch_norm_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) in float64 such that eval-mode ``bn(x) = scale·x + shift`` per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fuse_conv_bn_weights(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of one convolution computing ``bn(conv(x))`` in eval mode."""
    if conv.out_channels != bn.num_features:
        raise ValueError(f"cannot fold a BatchNorm of {bn.num_features} channels into a conv with "
                         f"{conv.out_channels} outputs")
    scale, shift = batch_norm_affine(bn)
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros(bn.num_features, dtype=torch.float64)
    fused_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
    fused_bias = bias * scale + shift
    return fused_weight.to(conv.weight.dtype), fused_bias.to(conv.weight.dtype)


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Make ``conv`` compute ``bn(conv(x))`` (eval-mode statistics); ``bn`` can then be dropped."""
    weight, bias = fuse_conv_bn_weights(conv, bn)
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)


def last_conv(module: nn.Module) -> nn.Conv2d | None:
    """The convolution whose output ``module`` returns unchanged, if there is one.

    That is the module itself, or, for a ``Sequential``, the last conv of its last step; anything after
    the conv (an activation, a pool) means the output is no longer the conv's.
    """
    if isinstance(module, nn.Conv2d):
        return module
    if isinstance(module, nn.Sequential) and len(module) > 0:
        return last_conv(module[-1])
    return None


def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a conv inside a ``Sequential``.

    Folded BatchNorms are replaced by ``nn.Identity`` so that module names (and anything that looks them
    up) stay valid. Returns how many were folded.
    """
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        names = list(seq._modules)
        for before, name in itertools.pairwise(names):
            bn, conv = seq._modules[name], last_conv(seq._modules[before])
            if isinstance(bn, nn.BatchNorm2d) and conv is not None and conv.out_channels == bn.num_features:
                fold_conv_bn(conv, bn)
                seq._modules[name] = nn.Identity()
                folded += 1
    return folded


def fold_xception(model: nn.Module) -> int:
    """:func:`fold_batch_norms`, plus the one cross-module case of the Xception family.

    In the pre-activation family the stem ends in a bare conv whose only reader is the first module's
    ``pre`` BatchNorm, so that BatchNorm folds into the stem too.
    """
    folded = fold_batch_norms(model)
    blocks = list(model.blocks()) if hasattr(model, "blocks") else []
    for (_, before), (_, block) in itertools.pairwise(blocks):
        pre = getattr(block, "pre", None)
        conv = last_conv(before)
        if pre is not None and isinstance(pre[0], nn.BatchNorm2d) and conv is not None:
            fold_conv_bn(conv, pre[0])
            pre[0] = nn.Identity()
            folded += 1
    return folded

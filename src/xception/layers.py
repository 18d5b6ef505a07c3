"""Layers: the depthwise separable convolution and the padding rules it needs.

Two padding rules exist in the wild, and reproducing a framework's outputs needs the right one:

* ``"tf"``: TensorFlow/Keras 'same'. Output size is ``ceil(size / stride)``; when the padding needed is
  odd, the extra pixel goes bottom/right. At stride 2 this depends on the input size, so it is computed
  per call.
* ``"symmetric"``: PyTorch's usual ``padding=(k - 1) * d // 2`` on both sides, as timm's ports use.

Both agree at stride 1 with odd kernels, where a static padding is used for speed.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

PaddingRule = Literal["tf", "symmetric"]
Activation = Literal["relu", "elu"] | None
SeparableOrder = Literal["depthwise_first", "pointwise_first"]
ConvKind = Literal["separable", "standard"]

PADDING_RULES: tuple[str, ...] = ("tf", "symmetric")
ACTIVATIONS: tuple[str | None, ...] = (None, "relu", "elu")
ORDERS: tuple[str, ...] = ("depthwise_first", "pointwise_first")
CONV_KINDS: tuple[str, ...] = ("separable", "standard")


def tf_same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Padding (before, after) along one axis for TF 'same'; the odd pixel goes after."""
    span = (kernel - 1) * dilation + 1
    total = max((math.ceil(size / stride) - 1) * stride + span - size, 0)
    return total // 2, total - total // 2


class TFSamePad2d(nn.Module):
    """Pads an NCHW tensor as TF 'same' would before a strided k×k window.

    ``value=-inf`` makes it suitable in front of a max-pool (padding never wins the max).
    """

    def __init__(self, kernel: int, stride: int, dilation: int = 1, value: float = 0.0) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation, self.value = kernel, stride, dilation, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[-2], self.kernel, self.stride, self.dilation)
        left, right = tf_same_padding(x.shape[-1], self.kernel, self.stride, self.dilation)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom), value=self.value)
        return x

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, dilation={self.dilation}, value={self.value}"


def same_padding(
    kernel: int, stride: int, dilation: int, rule: PaddingRule, value: float = 0.0
) -> tuple[nn.Module | None, int]:
    """How to 'same'-pad a k×k window: (a padding module or None, the static padding for the layer).

    Static padding is used whenever both rules agree (stride 1, odd span), so the common case costs
    nothing extra; only TF's strided windows need a module that looks at the input size.
    """
    if rule not in PADDING_RULES:
        raise ConfigError(f"padding rule must be one of {PADDING_RULES}, got {rule!r}")
    span = (kernel - 1) * dilation
    if rule == "symmetric" or (stride == 1 and span % 2 == 0):
        return None, span // 2
    return TFSamePad2d(kernel, stride, dilation, value), 0


class _StridedPointwise(torch.autograd.Function):
    """A strided 1×1 convolution whose weight gradient is one matrix product on the subsampled input.

    torch 2.14's CPU weight-gradient kernel for strided 1×1 convolutions on channels_last tensors
    corrupts the heap for some shapes (e.g. 8 → 16 channels at 56 px; ``benchmarks/NOTES.md`` has a
    one-line reproduction). A stride-s 1×1 conv only reads every s-th pixel, so its weight gradient is
    ``grad_outputᵀ · x[::s, ::s]`` over all output pixels: the same sum, computed by a GEMM, and as fast.
    The forward pass and the input gradient keep PyTorch's own kernels.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: tuple[int, int]) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):  # compute in the autocast dtype, as F.conv2d would
            dtype = torch.get_autocast_dtype("cpu")
            x, weight = x.to(dtype), weight.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        with torch.autocast("cpu", enabled=False):
            return F.conv2d(x, weight, bias, stride)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        sh, sw = ctx.stride
        grad = grad.to(x.dtype)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [sh, sw], [0, 0], [1, 1], False, [0, 0], 1, [True, False, False]
            )[0]
        if ctx.needs_input_grad[1]:
            cols = x[:, :, ::sh, ::sw].permute(0, 2, 3, 1).reshape(-1, x.shape[1])
            rows = grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1])
            grad_w = (rows.t() @ cols).view(weight.shape)
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


class StridedPointwiseConv2d(nn.Conv2d):
    """The 1×1 stride-s convolution of a residual shortcut (no padding).

    Exactly ``nn.Conv2d(in, out, 1, stride)`` in weights and outputs; when training on the CPU its
    weight gradient avoids a PyTorch kernel that corrupts memory (see :class:`_StridedPointwise`).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, 1, stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        params = (self.weight,) if self.bias is None else (self.weight, self.bias)
        if (self.stride != (1, 1) and x.device.type == "cpu" and torch.is_grad_enabled()
                and (x.requires_grad or any(p.requires_grad for p in params))):
            return _StridedPointwise.apply(x, self.weight, self.bias, self.stride)
        return super().forward(x)


class DepthwiseConv2d(nn.Conv2d):
    """The depthwise step of a separable conv: exactly ``nn.Conv2d(c, c·m, k, stride, padding, dilation,
    groups=c)`` in weights and outputs.

    On a map smaller than its kernel (the exit flow sees 2×2 at a 28 px input), torch 2.14's CPU backward of
    a depthwise conv with implicit padding takes a path 10–20× slower than the same conv on the map padded
    first (35.6 ms against 1.6 ms for 256 images of 192 channels at 2×2, 1 thread; ``benchmarks/NOTES.md``).
    Training on the CPU therefore pads such maps explicitly: the same sums, the fast kernels. In eval mode
    (inference, export) the layer is the plain conv, so traced graphs never see the branch.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if (self.training and x.device.type == "cpu" and torch.is_grad_enabled() and self.dilation == (1, 1)
                and (ph or pw) and (x.shape[-2] < kh or x.shape[-1] < kw)):
            return F.conv2d(F.pad(x, (pw, pw, ph, ph)), self.weight, self.bias, self.stride, 0, 1, self.groups)
        return super().forward(x)


def _row_fold(x: torch.Tensor) -> tuple[int, int]:
    """(pixels, fold) of a (n, c, h, w) tensor: how many pixels' channels make one row of at least 64 floats
    (a power of two that divides the pixel count)."""
    c = x.shape[1]
    pixels = x.numel() // c
    fold = max(1, 64 // c)
    while pixels % fold:
        fold //= 2
    return pixels, fold


def _pixel_rows(x: torch.Tensor, fold: int) -> torch.Tensor:
    """The memory of a channels_last (n, c, h, w) tensor as a matrix of ``fold`` pixels' channels a row."""
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).view(n * h * w // fold, fold * c)


def _channel_sums(rows: torch.Tensor, fold: int) -> torch.Tensor:
    """Per-channel sums of a :func:`_pixel_rows` matrix."""
    return rows.sum(0).view(fold, -1).sum(0)


class _PixelRowsBatchNorm(torch.autograd.Function):
    """Training-mode batch norm of a channels_last tensor, its per-channel sums taken over the (pixels,
    channels) matrix the memory already is, folded to rows of at least 64 floats (see :class:`BatchNorm2d`).

    Forward: the mean, then the variance from the centred values (two passes: no cancellation), then one
    multiply-add; the running statistics updated as ``nn.BatchNorm2d`` does (the unbiased variance, ``factor`` of
    the new batch). Backward: PyTorch's own kernel, given the batch's mean and inverse deviation (it is not the
    slow part).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                running_mean: torch.Tensor | None, running_var: torch.Tensor | None, factor: float) -> torch.Tensor:
        pixels, fold = _row_fold(x)
        rows = _pixel_rows(x, fold)
        mean = _channel_sums(rows, fold) / pixels
        centred = rows - mean.repeat(fold)
        var = _channel_sums(centred.square(), fold) / pixels
        invstd = torch.rsqrt(var + eps)
        out = torch.empty_like(x)  # channels_last, as x; written through its (pixels, channels) view
        torch.addcmul(bias.repeat(fold), centred, (weight * invstd).repeat(fold), out=_pixel_rows(out, fold))
        if running_mean is not None and running_var is not None:
            running_mean.mul_(1 - factor).add_(mean, alpha=factor)
            running_var.mul_(1 - factor).add_(var * (pixels / max(pixels - 1, 1)), alpha=factor)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(memory_format=torch.channels_last), x, weight, None, None, mean, invstd, True, ctx.eps,
            list(ctx.needs_input_grad[:3]),
        )
        return dx, dweight, dbias, None, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` in weights, buffers, state-dict keys and outputs.

    torch 2.14's CPU batch norm forward takes a slow path in training on channels_last maps of 8 channels or
    fewer (the demo model's stem: 8.1 ms for 256 images of 8 × 28 × 28 on 2 threads, where sums over the NHWC
    memory take 2.8; ``benchmarks/NOTES.md``). Training on the CPU computes those maps' statistics that way, and
    leaves the backward to PyTorch's kernel; every other case, eval mode (inference, export) included, is the
    PyTorch layer.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and self.num_features <= 8 and self.affine and x.dim() == 4 and x.device.type == "cpu"
                and x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
                and not torch.compiler.is_compiling()):
            return super().forward(x)
        factor = 0.0
        if self.track_running_stats and self.num_batches_tracked is not None:  # nn.BatchNorm2d's bookkeeping
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        return _PixelRowsBatchNorm.apply(x, self.weight, self.bias, self.eps, self.running_mean, self.running_var,
                                         factor)


def make_activation(name: str | None, inplace: bool = False) -> nn.Module | None:
    """The activations a separable conv may carry between its two steps (None: the paper's choice)."""
    if name is None or name == "none":
        return None
    if name == "relu":
        return nn.ReLU(inplace=inplace)
    if name == "elu":
        return nn.ELU(inplace=inplace)
    raise ConfigError(f"activation must be one of None, 'relu', 'elu', got {name!r}")


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of ``divisor``, never dropping more than 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class SeparableConv2d(nn.Sequential):
    """Depthwise separable convolution: a depthwise k×k conv per channel, then a pointwise 1×1 conv.

    Cost for a D×D output: ``D²·k²·M + D²·M·N`` multiply-adds against ``D²·k²·M·N`` for a standard
    k×k conv from M to N channels (see :func:`xception.analysis.separable_cost`).

    Args:
        in_channels, out_channels: M and N.
        kernel_size, stride, dilation: of the depthwise (spatial) step.
        depth_multiplier: depthwise filters per input channel; the pointwise step sees ``M·multiplier``.
        padding: ``"tf"`` (Keras 'same') or ``"symmetric"`` (PyTorch/timm).
        activation: what sits between the two steps: None (the paper's choice), ``"relu"`` or ``"elu"``
            (the paper's Fig. 10 ablation).
        norm_between: a BatchNorm between the two steps, as the aligned Xception of DeepLabv3+ has.
        order: ``"depthwise_first"`` (a depthwise separable conv) or ``"pointwise_first"`` (the 1×1 first,
            as in an "extreme" Inception module).
        bias: bias on the pointwise step (off: a BatchNorm always follows in Xception).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        *,
        depth_multiplier: int = 1,
        padding: PaddingRule = "tf",
        activation: Activation = None,
        norm_between: bool = False,
        order: SeparableOrder = "depthwise_first",
        bias: bool = False,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
    ) -> None:
        if order not in ORDERS:
            raise ConfigError(f"order must be one of {ORDERS}, got {order!r}")
        if depth_multiplier < 1:
            raise ConfigError(f"depth_multiplier must be ≥ 1, got {depth_multiplier}")
        if order == "pointwise_first" and depth_multiplier != 1:
            raise ConfigError("order='pointwise_first' needs depth_multiplier=1")
        pad, static = same_padding(kernel_size, stride, dilation, padding)
        depthwise_first = order == "depthwise_first"
        # The spatial step runs on whichever channels it receives; the bias, if any, goes on the last step.
        spatial = in_channels if depthwise_first else out_channels
        mid = in_channels * depth_multiplier if depthwise_first else out_channels
        depthwise = DepthwiseConv2d(
            spatial, spatial * depth_multiplier, kernel_size, stride, static, dilation,
            groups=spatial, bias=bias and not depthwise_first,
        )
        pointwise = nn.Conv2d(mid if depthwise_first else in_channels, out_channels, 1,
                              bias=bias and depthwise_first)
        norm = BatchNorm2d(mid, eps=bn_eps, momentum=bn_momentum) if norm_between else None
        act = make_activation(activation, inplace=True)
        steps = (
            [("pad", pad), ("depthwise", depthwise), ("norm", norm), ("act", act), ("pointwise", pointwise)]
            if depthwise_first
            else [("pointwise", pointwise), ("norm", norm), ("act", act), ("pad", pad), ("depthwise", depthwise)]
        )
        super().__init__()
        for name, layer in steps:
            if layer is not None:
                self.add_module(name, layer)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation
        self.depth_multiplier, self.order = depth_multiplier, order


class StandardConv2d(nn.Sequential):
    """A standard k×k convolution from M to N channels, standing where a separable conv would.

    The network of the paper's §3 comparison made real: same kernel, stride, dilation and padding rule as
    the :class:`SeparableConv2d` it replaces, no bias (a BatchNorm follows), and nothing in between since
    there are no two steps. ``k²·M·N`` parameters and ``D²·k²·M·N`` multiply-adds for a D×D output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        dilation: int = 1,
        *,
        padding: PaddingRule = "tf",
        bias: bool = False,
    ) -> None:
        pad, static = same_padding(kernel_size, stride, dilation, padding)
        super().__init__()
        if pad is not None:
            self.add_module("pad", pad)
        self.add_module("conv", nn.Conv2d(in_channels, out_channels, kernel_size, stride, static, dilation,
                                          bias=bias))
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

"""The inference program: an Xception with BatchNorm folded away and activations fused into convolutions.

:func:`build_program` turns a (folded) :class:`~xception.models.Xception` into a flat list of steps per
module. Every convolution becomes a :class:`FusedConv`, which may also apply a ReLU to its input
(``relu_in``), add a residual and apply a ReLU to its output (``relu_out``), so that the separate ReLU and
add passes of the plain model disappear where a backend can do them inside the convolution:

* ``"mkldnn"`` (CPU, float32): oneDNN convolutions with pre-packed (blocked) weights and fused
  ReLU / residual-add post-ops, the calls Inductor emits when it freezes a model, without compiling.
  In bfloat16 the 1×1 convs run as one matrix product of the NHWC rows instead (:meth:`FusedConv._gemm`):
  oneDNN's bf16 convolution falls back to a reference kernel for most of Xception's 1×1 shapes
  (12 GFLOP/s for 1536→2048 at 10², where its matmul runs at 400+ with AMX; benchmarks/NOTES.md).
* ``"triton"`` (CUDA, depthwise convs only): one kernel for pad → ReLU → depthwise → bias → ReLU
  (:mod:`xception.fast.triton_depthwise`).
* ``"cudnn"`` (CUDA): cuDNN's fused convolution + bias (+ residual) + ReLU where a ReLU follows; elsewhere
  the bias goes through PyTorch's channels_last BatchNorm kernel, because ``F.conv2d``'s own bias add on
  NHWC tensors is a broadcasting, non-vectorised kernel slower than the BatchNorm it replaced
  (benchmarks/NOTES.md: 46.7 → 32.9 ms per batch of 256 on an H200).
* ``"torch"``: plain ``F.conv2d`` followed by in-place ops; always available, and what ``torch.compile``
  sees (Inductor then does its own fusion).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layers import TFSamePad2d, tf_same_padding
from ..models.xception import ClassifierHead, Xception, XceptionModule
from . import triton_depthwise
from .fold import batch_norm_affine

Backend = Literal["torch", "mkldnn", "triton", "cudnn"]
BACKENDS: tuple[str, ...] = ("torch", "mkldnn", "triton", "cudnn")
BIAS_EPS = 1e-5  # batch_norm needs eps > 0: a variance of 1 − eps makes its scale 1 up to rounding


def cudnn_fusion_available(device: torch.device | str) -> bool:
    """Whether cuDNN's fused convolution + bias + ReLU ops can run on ``device``."""
    return (torch.device(device).type == "cuda" and torch.backends.cudnn.is_available()
            and hasattr(torch, "cudnn_convolution_relu") and hasattr(torch, "cudnn_convolution_add_relu"))


def add_channel_bias(y: torch.Tensor, bias: torch.Tensor, unit_var: torch.Tensor,
                     zero_mean: torch.Tensor) -> torch.Tensor:
    """``y + bias`` per channel through the BatchNorm kernel (mean 0, variance 1 − eps, weight 1)."""
    return F.batch_norm(y, zero_mean, unit_var, None, bias, False, 0.0, BIAS_EPS)


def mkldnn_available() -> bool:
    """Whether oneDNN's fused convolution ops (the ones Inductor uses on CPU) exist in this PyTorch."""
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return (torch.backends.mkldnn.is_available() and ops is not None
                and hasattr(ops, "_convolution_pointwise") and hasattr(ops, "_reorder_convolution_weight"))
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def mkldnn_bf16_available() -> bool:
    """Whether oneDNN runs bfloat16 convolutions natively here (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return False


def onednn_linear_available() -> bool:
    """Whether oneDNN's matmul with a pre-packed weight (Inductor's CPU linear) exists in this PyTorch."""
    ops = getattr(torch.ops, "mkldnn", None)
    return ops is not None and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")


class Affine(nn.Module):
    """``x·scale + shift`` per channel: an eval-mode BatchNorm that has no convolution to fold into."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale, shift = batch_norm_affine(bn)
        dtype = bn.running_mean.dtype
        self.register_buffer("scale", scale.to(dtype).view(1, -1, 1, 1))
        self.register_buffer("shift", shift.to(dtype).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x, self.scale)


class FusedConv(nn.Module):
    """``relu?(conv(pad(relu?(x))) + add?)`` with BatchNorm already folded into weight and bias."""

    takes_residual = True  # forward(x, add=...) adds a residual before the output ReLU

    def __init__(self, conv: nn.Conv2d, pad: TFSamePad2d | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("FusedConv supports explicit zero padding only")
        self.register_buffer("weight", conv.weight.detach().clone())
        self.register_buffer("bias", conv.bias.detach().clone() if conv.bias is not None else None)
        self.in_channels, self.out_channels, self.groups = conv.in_channels, conv.out_channels, conv.groups
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding, self.dilation = tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation)
        self.pad = pad
        self.relu_in = False
        self.relu_out = False
        self.backend: Backend = "torch"
        # oneDNN's blocked weight, for its conv or (bf16 1×1 convs, beside _matrix) its matmul; not a buffer
        self._packed: torch.Tensor | None = None
        self._taps: torch.Tensor | None = None  # the Triton kernel's (kh·kw, C) float32 weight
        self._bn_stats: tuple[torch.Tensor, torch.Tensor] | None = None  # cudnn: (variance, mean) for the bias
        self._matrix: torch.Tensor | None = None  # mkldnn, bf16 1×1 convs: the (out, in) weight of the GEMM

    @property
    def depthwise(self) -> bool:
        return self.groups == self.in_channels == self.out_channels and self.groups > 1

    @property
    def pointwise(self) -> bool:
        """A plain 1×1 conv (any stride): a matrix product of the pixels' channel vectors. (TF-'same'
        padding of a 1×1 kernel is always zero.)"""
        return self.kernel_size == (1, 1) and self.groups == 1 and self.padding == (0, 0) and self.dilation == (1, 1)

    def supports(self, backend: Backend) -> bool:
        if backend == "triton":
            return (self.depthwise and triton_depthwise.available(self.weight.device)
                    and len(set(self.stride)) == 1 and len(set(self.dilation)) == 1)
        if backend == "mkldnn":
            return (mkldnn_available() and self.weight.device.type == "cpu"
                    and (self.weight.dtype == torch.float32
                         or (self.weight.dtype == torch.bfloat16 and mkldnn_bf16_available())))
        if backend == "cudnn":
            return cudnn_fusion_available(self.weight.device)
        return True

    def set_backend(self, backend: Backend) -> FusedConv:
        """Use ``backend`` if this layer supports it, else keep PyTorch's ops (never fails)."""
        if backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend if self.supports(backend) else "torch"
        self._packed = self._taps = self._bn_stats = self._matrix = None
        if self.backend == "mkldnn" and self.pointwise and self.weight.dtype == torch.bfloat16:
            self._matrix = self.weight.reshape(self.out_channels, self.in_channels).contiguous()
            if onednn_linear_available():  # the weight packed once for oneDNN's AMX/AVX-512 matmul
                self._packed = torch.ops.mkldnn._reorder_linear_weight(self._matrix)
        elif self.backend == "mkldnn":
            self._packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, list(self.padding), list(self.stride), list(self.dilation), self.groups, None
            )
        elif self.backend == "triton":
            self._taps = triton_depthwise.depthwise_taps(self.weight)
        elif self.backend == "cudnn" and self.bias is not None:
            self._bn_stats = (torch.ones_like(self.bias) - BIAS_EPS, torch.zeros_like(self.bias))
        return self

    def _apply(self, fn, recurse=True):
        # .to()/.cuda()/.half() change the weights: re-derive the backend's copy of them.
        super()._apply(fn, recurse)
        if any(t is not None for t in (self._packed, self._taps, self._bn_stats, self._matrix)):
            self.set_backend(self.backend)
        return self

    def pads(self, x: torch.Tensor) -> tuple[int, int, int, int]:
        """(top, bottom, left, right): the TF 'same' padding of this input, or the static padding."""
        if self.pad is None:
            (ph, pw) = self.padding
            return ph, ph, pw, pw
        top, bottom = tf_same_padding(x.shape[-2], self.pad.kernel, self.pad.stride, self.pad.dilation)
        left, right = tf_same_padding(x.shape[-1], self.pad.kernel, self.pad.stride, self.pad.dilation)
        return top, bottom, left, right

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        if self.backend == "triton":
            y = triton_depthwise.depthwise_conv2d_taps(
                x, self._taps, self.bias, self.kernel_size, stride=self.stride[0], dilation=self.dilation[0],
                padding=self.pads(x), relu_in=self.relu_in, relu_out=self.relu_out and add is None,
            )
            return y if add is None else self._finish(y, add)
        if self.pad is not None:
            x = self.pad(x)
        if self.relu_in:
            x = F.relu(x)
        if self._matrix is not None:
            return self._gemm(x, add)
        if self.backend == "mkldnn":
            args = (list(self.padding), list(self.stride), list(self.dilation), self.groups)
            if add is None:
                return torch.ops.mkldnn._convolution_pointwise(
                    x, self._packed, self.bias, *args, "relu" if self.relu_out else "none", [None], ""
                )
            return torch.ops.mkldnn._convolution_pointwise.binary(
                x, add.contiguous(memory_format=_layout(x)), self._packed, self.bias, *args, "add", 1.0,
                "relu" if self.relu_out else None, [None], None,
            )
        if self.backend == "cudnn":
            return self._cudnn(x, add)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if add is None:
            return y.relu_() if self.relu_out else y
        return self._finish(y, add)

    def _gemm(self, x: torch.Tensor, add: torch.Tensor | None) -> torch.Tensor:
        """The 1×1 conv as ``rows @ weightᵀ + bias`` over the (N·H·W, C) rows of an NHWC tensor; the
        result is NHWC too (a channels_last view), with the residual add and ReLU done in place."""
        sy, sx = self.stride
        if (sy, sx) != (1, 1):
            x = x[:, :, ::sy, ::sx]
        n, _, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(n * h * w, self.in_channels)  # a view when x is NHWC
        residual = None if add is None else add.permute(0, 2, 3, 1).reshape(n * h * w, self.out_channels)
        if self._packed is None:
            y = F.linear(rows, self._matrix, self.bias)
            if residual is not None:
                y.add_(residual)
        elif residual is None:
            y = torch.ops.mkldnn._linear_pointwise(rows, self._packed, self.bias, "relu" if self.relu_out else "none",
                                                   [], "")
            return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)
        else:
            y = torch.ops.mkldnn._linear_pointwise.binary(rows, residual.contiguous(), self._packed, self.bias, "add")
        if self.relu_out:
            y.relu_()
        return y.view(n, h, w, self.out_channels).permute(0, 3, 1, 2)

    def _cudnn(self, x: torch.Tensor, add: torch.Tensor | None) -> torch.Tensor:
        args = (list(self.stride), list(self.padding), list(self.dilation), self.groups)
        if self.relu_out and self.bias is not None:
            if add is None:
                return torch.cudnn_convolution_relu(x, self.weight, self.bias, *args)
            add = add.contiguous(memory_format=_layout(x))
            return torch.cudnn_convolution_add_relu(x, self.weight, add, 1.0, self.bias, *args)
        y = F.conv2d(x, self.weight, None, self.stride, self.padding, self.dilation, self.groups)
        if self._bn_stats is not None:
            y = add_channel_bias(y, self.bias, *self._bn_stats)
        if add is None:
            return y.relu_() if self.relu_out else y
        return self._finish(y, add)

    def _finish(self, y: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
        y = y.add_(add)
        return y.relu_() if self.relu_out else y

    def extra_repr(self) -> str:
        kind = "depthwise" if self.depthwise else f"{self.in_channels}→{self.out_channels}"
        flags = [f for f, on in (("relu_in", self.relu_in), ("relu_out", self.relu_out),
                                 ("tf_pad", self.pad is not None)) if on]
        return ", ".join([kind, f"k={self.kernel_size}", f"s={self.stride}", f"backend={self.backend}", *flags])


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format


def _leaves(module: nn.Module) -> Iterable[nn.Module]:
    """The single-input layers of nested Sequentials, in execution order, without the Identities."""
    if isinstance(module, nn.Sequential):
        for child in module:
            yield from _leaves(child)
    elif not isinstance(module, nn.Identity):
        yield module


def fuse_steps(layers: Iterable[nn.Module], prefer_relu_in: bool) -> list[nn.Module]:
    """Turn a chain of layers into :class:`FusedConv` steps, absorbing pads, BatchNorms and ReLUs.

    A TF-'same' pad goes into the conv after it; a ReLU goes into the conv before it as a post-op, or,
    with ``prefer_relu_in`` (the Triton depthwise kernel reads its input once anyway), into the
    depthwise conv after it. What cannot be absorbed stays a step of its own.
    """
    steps: list[nn.Module] = []
    pending_pad: TFSamePad2d | None = None
    for layer in layers:
        if isinstance(layer, TFSamePad2d) and layer.value == 0.0:
            pending_pad = layer
            continue
        if isinstance(layer, nn.Conv2d):
            steps.append(FusedConv(layer, pending_pad))
            pending_pad = None
            continue
        if pending_pad is not None:  # a pad whose consumer is not a conv stays a step
            steps.append(pending_pad)
            pending_pad = None
        if isinstance(layer, nn.BatchNorm2d):
            steps.append(Affine(layer))
        elif isinstance(layer, TFSamePad2d):
            steps.append(layer)
        else:
            steps.append(layer)
    if pending_pad is not None:
        steps.append(pending_pad)

    fused: list[nn.Module] = []
    for i, step in enumerate(steps):
        if isinstance(step, nn.ReLU):
            after = steps[i + 1] if i + 1 < len(steps) else None
            before = fused[-1] if fused else None
            if prefer_relu_in and isinstance(after, FusedConv) and after.depthwise:
                after.relu_in = True
                continue
            if isinstance(before, FusedConv) and not before.relu_out:
                before.relu_out = True
                continue
            if isinstance(after, FusedConv) and not after.relu_in:
                after.relu_in = True
                continue
        fused.append(step)
    return fused


class FusedBlock(nn.Module):
    """One residual module: ``pre`` steps, the main branch, and the shortcut, with the add fused in."""

    def __init__(self, block: XceptionModule, prefer_relu_in: bool) -> None:
        super().__init__()
        pre = list(_leaves(block.pre)) if block.pre is not None else []
        self.pre = nn.ModuleList(fuse_steps(pre, prefer_relu_in))
        self.main = nn.ModuleList(fuse_steps(_leaves(block.main), prefer_relu_in))
        self.identity = isinstance(block.shortcut, nn.Identity)
        self.shortcut: FusedConv | None = None
        if block.shortcut is not None and not self.identity:
            (self.shortcut,) = fuse_steps(_leaves(block.shortcut), prefer_relu_in)
        # The module's closing ReLU runs after the residual add: it goes to whichever conv does the add.
        self.act = block.act is not None
        closer = self.shortcut if self.shortcut is not None else self.main[-1]
        if self.act and isinstance(closer, FusedConv) and not closer.relu_out:
            closer.relu_out, self.act = True, False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.pre:
            x = step(x)
        h = x
        for step in self.main[:-1]:
            h = step(h)
        last = self.main[-1]
        if self.shortcut is not None:
            out = self.shortcut(x, add=last(h))
        elif self.identity:
            out = last(h, add=x) if getattr(last, "takes_residual", False) else last(h) + x
        else:
            out = last(h)
        return F.relu(out) if self.act else out


class FusedXception(nn.Module):
    """A folded Xception as fused steps (inference only). Build with :func:`xception.optimize`."""

    def __init__(self, model: Xception, prefer_relu_in: bool = False) -> None:
        super().__init__()
        if model.features_only:
            raise ConfigError("optimize() speeds up classifiers; build the model without features_only")
        self.config = model.config
        self.stem = nn.ModuleList(fuse_steps(_leaves(model.entry_flow.block1), prefer_relu_in))
        self.blocks = nn.ModuleList(
            FusedBlock(block, prefer_relu_in) for name, block in model.blocks() if name != "entry_flow.block1"
        )
        self.head: ClassifierHead = model.head

    def convs(self) -> list[FusedConv]:
        return [m for m in self.modules() if isinstance(m, FusedConv)]

    def set_backend(self, backend: Backend, depthwise_only: bool = False) -> FusedXception:
        for conv in self.convs():
            if conv.depthwise or not depthwise_only:
                conv.set_backend(backend)
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for step in self.stem:
            x = step(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

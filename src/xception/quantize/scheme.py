"""The int8 scheme as integer arithmetic: what every kernel of a quantised Xception computes, step by step.

Tensors between steps are uint8 with one scale ``s`` and zero point ``z`` each (real value ``s·(q − z)``);
weights are int8, symmetric per output channel in [−127, 127] (real value ``s_w[c]·w``; [−63, 63] with 7-bit
weights, which AVX2 CPUs multiply exactly twice as wide, see ``fast/csrc/qkernels_avx2_s7.cpp``); biases are int32 in
the accumulator's scale ``s_in·s_w[c]``. One step (a conv, or the classifier) is::

    acc[c] = bias[c] + Σ_k (q_in[k] − z_in) · w[c, k]                                  int32, exact
    v      = f32(acc[c]) · M[c]  (+ f32(q_res − z_res) · R)                              float32, IEEE
    q_out  = int(clamp(round_half_even(v), lo − z_out, Q − z_out)) + z_out               uint8

``Q`` is the top code, 255; with 7-bit activations (``activation_bits=7``, what FBGEMM calls a reduced range)
every activation is a code in [0, 127], which lets AVX2 CPUs add two ``vpmaddubsw`` results in int16 before
widening them (``fast/csrc/qkernels_avx2_s7a7.cpp``). ``M[c] = f32(s_in·s_w[c] / s_out)`` and
``R = f32(s_res / s_out)`` are worked out in float64 and rounded once, when the model is quantised, and
stored; ``lo`` is ``z_out`` when a ReLU follows (the ReLU is the clamp) and 0 otherwise. The float32 epilogue
is a product, then a sum, each rounded (no fused multiply-add), so a vector kernel (``cvtepi32_ps``,
``mul_ps``, ``add_ps``, ``round_ps``/``cvtps_epi32`` under the default rounding mode, ``min_ps``/``max_ps``
before the conversion) reproduces it bit for bit.

Padding pixels are ``z_in``, a real zero, so a kernel may fold ``−z_in·Σ_k w[c, k]`` into the bias and
accumulate ``Σ q_in·w`` as VNNI/AMX do (u8 × s8 → s32). On AVX2 without VNNI, ``vpmaddubsw`` adds pairs of
u8·s8 products in int16 with saturation (2·255·127 > 32767): a kernel there must widen to int16 first
(``vpmaddwd``) to stay exact. Every accumulator fits int32: at most ``K·255·127`` plus the bias, checked
when a layer is quantised.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError

QMIN, QMAX = 0, 255  # activations: uint8
ACTIVATION_BITS = (8, 7)  # 7: codes in [0, 127]
WMAX = 127  # weights: int8 in [−127, 127] (symmetric: −128 unused, so that −w is always representable)
WEIGHT_BITS = (8, 7)  # 7: [−63, 63]
INT32_MAX = 2**31 - 1


class QParams(NamedTuple):
    """Scale (a float32 value) and zero point of one uint8 tensor."""

    scale: float
    zero_point: int


class QTensor(NamedTuple):
    """A uint8 activation with its quantisation: real value ``scale·(q − zero_point)``."""

    q: torch.Tensor
    scale: float
    zero_point: int

    @property
    def params(self) -> QParams:
        return QParams(self.scale, self.zero_point)


class Residual(NamedTuple):
    """What a step's epilogue adds before requantising: a uint8 tensor, its zero point, ``R``."""

    q: torch.Tensor
    zero_point: int
    multiplier: torch.Tensor  # float32, one value


def f32(value: float) -> float:
    """``value`` rounded to the nearest float32, as a Python float."""
    return torch.tensor(value, dtype=torch.float64).float().item()


def code_max(activation_bits: int) -> int:
    """The top activation code: 255 for 8 bits, 127 for 7."""
    if activation_bits not in ACTIVATION_BITS:
        raise ConfigError(f"activations are quantised to 8 or 7 bits, not {activation_bits}")
    return 2**activation_bits - 1


def qparams_for_range(lo: float, hi: float, qmax: int = QMAX) -> QParams:
    """uint8 scale and zero point covering [lo, hi] with codes 0 … ``qmax``, widened to hold 0 so that zero
    padding is exact."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:  # a tensor that is always 0: any scale represents it
        return QParams(1.0, 0)
    scale = f32((hi - lo) / (qmax - QMIN))
    zero_point = min(max(round(-lo / scale), QMIN), qmax)
    return QParams(scale, int(zero_point))


def quantize_weight(weight: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 weight and float32 scale per output channel (dim 0), symmetric: ``scale[c] = max|w[c]| / 127``
    (``/ 63`` with 7 bits)."""
    if bits not in WEIGHT_BITS:
        raise ConfigError(f"weights are quantised to 8 or 7 bits, not {bits}")
    wmax = 2 ** (bits - 1) - 1
    w = weight.detach().double()
    amax = w.reshape(len(w), -1).abs().amax(1)
    scale = torch.where(amax > 0, amax / wmax, torch.ones_like(amax)).float()
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.round(w / scale.double().view(shape)).clamp(-wmax, wmax)
    return q.to(torch.int8), scale


def quantize_bias(bias: torch.Tensor | None, in_scale: float, weight_scale: torch.Tensor) -> torch.Tensor:
    """int32 bias in the accumulator's scale ``s_in·s_w[c]`` (zeros when there is none)."""
    if bias is None:
        return torch.zeros(len(weight_scale), dtype=torch.int32)
    q = torch.round(bias.detach().double() / (in_scale * weight_scale.double()))
    return q.clamp(-INT32_MAX, INT32_MAX).to(torch.int32)


def multiplier(in_scale: float, weight_scale: torch.Tensor, out_scale: float) -> torch.Tensor:
    """``Q`` is the top code, 255; with 7-bit activations (``activation_bits=7``, what FBGEMM calls a reduced range)
every activation is a code in [0, 127], which lets AVX2 CPUs add two ``vpmaddubsw`` results in int16 before
widening them (``fast/csrc/qkernels_avx2_s7a7.cpp``). ``M[c] = f32(s_in·s_w[c] / s_out)``, from float64."""
    return (in_scale * weight_scale.double() / out_scale).float()


def check_accumulator(weight: torch.Tensor, bias: torch.Tensor, name: str) -> None:
    """Refuse a layer whose worst-case accumulator would not fit int32."""
    reach = weight.reshape(len(weight), -1).abs().long().sum(1) * (QMAX - QMIN) + bias.abs().long()
    if int(reach.max()) > INT32_MAX:
        raise ConfigError(f"{name}: its int32 accumulator could overflow ({int(reach.max())} > 2^31 − 1)")


def pad_codes(q: torch.Tensor, pads: tuple[int, int, int, int], value: int) -> torch.Tensor:
    """Pad (top, bottom, left, right) with the code ``value``: the zero point before a conv, 0 before a max-pool."""
    top, bottom, left, right = pads
    if not (top or bottom or left or right):
        return q
    return F.pad(q, (left, right, top, bottom), value=value)


def _conv_int(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], dilation: tuple[int, int],
              groups: int) -> torch.Tensor:
    """An int32 convolution of int32 tensors, no padding. PyTorch has no integer kernel for dilated convs:
    those go through float64, exact here since every product and partial sum is an integer below 2^53."""
    if dilation == (1, 1):
        return F.conv2d(x, weight, None, stride, 0, 1, groups)
    out = F.conv2d(x.double(), weight.double(), None, stride, 0, dilation, groups)
    return out.to(torch.int32)


def conv_accumulate(q: torch.Tensor, zero_point: int, weight: torch.Tensor, bias: torch.Tensor, *,
                    stride: tuple[int, int], dilation: tuple[int, int], pads: tuple[int, int, int, int],
                    groups: int) -> torch.Tensor:
    """int32 ``acc`` of a k×k conv (depthwise when ``groups`` is the channel count): the input padded with
    its zero point, then ``Σ (q − z)·w + bias``."""
    x = pad_codes(q, pads, zero_point).to(torch.int32) - zero_point
    acc = _conv_int(x, weight.to(torch.int32), stride, dilation, groups)
    return acc + bias.view(1, -1, 1, 1)


def gemm_accumulate(q: torch.Tensor, zero_point: int, weight: torch.Tensor, bias: torch.Tensor, *,
                    stride: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """int32 ``acc`` of a 1×1 conv as one GEMM over the NHWC rows: (N·H·W, in) · (in, out) + bias."""
    sy, sx = stride
    if (sy, sx) != (1, 1):
        q = q[:, :, ::sy, ::sx]
    n, c, h, w = q.shape
    rows = q.permute(0, 2, 3, 1).reshape(n * h * w, c).to(torch.int32) - zero_point
    acc = rows @ weight.reshape(len(weight), c).to(torch.int32).t() + bias
    return acc.view(n, h, w, -1).permute(0, 3, 1, 2)


def requantize(acc: torch.Tensor, mult: torch.Tensor, zero_point: int, *, relu: bool = False,
               residual: Residual | None = None, qmax: int = QMAX) -> torch.Tensor:
    """The epilogue: int32 ``acc`` (N, C, …) → codes 0 … ``qmax`` (uint8), per channel ``M`` (C,), residual and
    ReLU included."""
    shape = (1, -1) + (1,) * (acc.dim() - 2)
    v = acc.to(torch.float32) * mult.view(shape)
    if residual is not None:
        v = v + (residual.q.to(torch.int32) - residual.zero_point).to(torch.float32) * residual.multiplier
    low = zero_point if relu else QMIN
    v = torch.round(v).clamp_(low - zero_point, qmax - zero_point)
    return (v.to(torch.int32) + zero_point).to(torch.uint8)


def quantize_input(x: torch.Tensor, params: QParams, qmax: int = QMAX) -> torch.Tensor:
    """float32 → uint8 as ONNX's QuantizeLinear: ``saturate(round_half_even(x / s) + z)``, to 0 … ``qmax``."""
    v = torch.round(x.to(torch.float32) / params.scale)
    v = v.clamp_(QMIN - params.zero_point, qmax - params.zero_point)
    return (v.to(torch.int32) + params.zero_point).to(torch.uint8)


def dequantize(t: QTensor) -> torch.Tensor:
    """uint8 → float32 real values."""
    return (t.q.to(torch.int32) - t.zero_point).to(torch.float32) * t.scale


def relu(q: torch.Tensor, zero_point: int) -> torch.Tensor:
    """ReLU on codes: ``max(q, z)``, exact, same scale."""
    return q.clamp(min=zero_point)


def max_pool(q: torch.Tensor, kernel: int, stride: int, padding: int, pads: tuple[int, int, int, int]) -> torch.Tensor:
    """Max-pool on codes, exact (the map from code to value is increasing): same scale and zero point out.
    TF-'same' pads are code 0, which never exceeds a real value; ``padding`` is ignored by the max, as in float.
    (PyTorch's uint8 max-pool indexes with the element type: it fails past 255 elements, so int32 here.)"""
    return F.max_pool2d(pad_codes(q, pads, QMIN).to(torch.int32), kernel, stride, padding).to(torch.uint8)


def global_sum(q: torch.Tensor, zero_point: int) -> torch.Tensor:
    """int32 ``Σ_hw (q − z)`` per image and channel (N, C): the accumulator of a global average pool."""
    return (q.to(torch.int32) - zero_point).sum((2, 3), dtype=torch.int32)


def pool_multiplier(in_scale: float, pixels: int, out_scale: float) -> torch.Tensor:
    """The average pool's ``M = f32(s_in / (H·W·s_out))``: it depends on the input size, so it is worked out
    per call (in float64, rounded once), the same way everywhere."""
    return torch.tensor([in_scale / (pixels * out_scale)], dtype=torch.float64).float()

"""A fused depthwise k×k convolution for channels_last tensors on CUDA, written in Triton.

One kernel does what takes PyTorch up to four passes over memory: (TF-'same' or symmetric) zero padding,
an optional ReLU on the input, the depthwise convolution with its folded BatchNorm bias, and an optional
ReLU on the output. Depthwise convolutions do ~9 multiply-adds per value they read, so they are bound by
memory traffic, and every pass saved is time saved.

Each program computes a tile of ``BLOCK_W`` output pixels of one output row by ``BLOCK_C`` channels.
In channels_last memory the channels of one pixel are contiguous, so every tap is one coalesced load of
``BLOCK_C`` channels per pixel; accumulation is in float32 whatever the storage dtype.

Triton is optional: :func:`available` says whether the kernel can run, and callers fall back to PyTorch
otherwise. Setting ``TRITON_INTERPRET=1`` runs the kernel on CPU tensors (slowly) for testing.
"""

from __future__ import annotations

import functools
import os

import torch

try:  # Triton is an optional dependency: the library works without it.
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None

__all__ = ["available", "depthwise_conv2d", "depthwise_conv2d_taps", "depthwise_taps", "interpreting"]


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernel can run on ``device`` (CUDA with Triton, or any device when interpreting)."""
    if triton is None:
        return False
    if interpreting():
        return True
    device = torch.device(device) if device is not None else None
    return torch.cuda.is_available() and (device is None or device.type == "cuda")


if triton is not None:

    @triton.jit
    def _depthwise_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        C, H, W, H_OUT, W_OUT,
        sxn, sxc, sxh, sxw,
        syn, syc, syh, syw,
        STRIDE: tl.constexpr, DILATION: tl.constexpr, PAD_TOP: tl.constexpr, PAD_LEFT: tl.constexpr,
        KH: tl.constexpr, KW: tl.constexpr,
        RELU_IN: tl.constexpr, RELU_OUT: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        row = tl.program_id(0)  # n * H_OUT + output row
        n = (row // H_OUT).to(tl.int64)
        oh = row % H_OUT
        ow = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
        c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = c < C
        acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
        x_base = x_ptr + n * sxn + c[None, :] * sxc
        for kh in tl.static_range(KH):
            ih = oh * STRIDE - PAD_TOP + kh * DILATION
            row_ok = (ih >= 0) & (ih < H)
            for kw in tl.static_range(KW):
                iw = ow * STRIDE - PAD_LEFT + kw * DILATION
                ok = row_ok & (iw >= 0) & (iw < W)
                v = tl.load(x_base + ih * sxh + iw[:, None] * sxw, mask=ok[:, None] & c_ok[None, :], other=0.0)
                v = v.to(tl.float32)
                if RELU_IN:
                    v = tl.maximum(v, 0.0)  # ReLU(0) = 0, so zero padding commutes with it
                wk = tl.load(w_ptr + (kh * KW + kw) * C + c, mask=c_ok, other=0.0)
                acc += v * wk[None, :]
        if HAS_BIAS:
            acc += tl.load(b_ptr + c, mask=c_ok, other=0.0)[None, :]
        if RELU_OUT:
            acc = tl.maximum(acc, 0.0)
        y = y_ptr + n * syn + oh * syh + ow[:, None] * syw + c[None, :] * syc
        tl.store(y, acc.to(y_ptr.dtype.element_ty), mask=(ow < W_OUT)[:, None] & c_ok[None, :])


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.lru_cache(maxsize=256)
def _blocks(channels: int, w_out: int) -> tuple[int, int, int]:
    """(BLOCK_W, BLOCK_C, num_warps): 64 channels (128 bytes of bf16) per pixel, wide rows where there are any."""
    block_c = min(64, _next_pow2(channels))
    block_w = min(32 if w_out >= 32 else 16, _next_pow2(w_out))
    return block_w, block_c, 4 if block_w * block_c >= 1024 else 2


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    relu_in: bool = False,
    relu_out: bool = False,
) -> torch.Tensor:
    """``relu?(conv2d(pad(relu?(x)), weight, bias, groups=C))`` in one pass, output in channels_last.

    Args:
        x: (N, C, H, W), any strides (channels_last is the fast layout).
        weight: (C, 1, kh, kw); kept in float32 for accuracy whatever ``x``'s dtype.
        bias: (C,) or None.
        padding: (top, bottom, left, right) zero padding, e.g. TF 'same' asymmetric padding.
        relu_in, relu_out: apply a ReLU to the input (before padding: they commute) / to the output.
    """
    c = x.shape[1]
    if weight.dim() != 4 or weight.shape[0] != c or weight.shape[1] != 1:
        raise ValueError(f"expected a depthwise weight of shape ({c}, 1, kh, kw), got {tuple(weight.shape)}")
    kernel = (weight.shape[2], weight.shape[3])
    return depthwise_conv2d_taps(x, depthwise_taps(weight), bias, kernel, stride=stride, dilation=dilation,
                                 padding=padding, relu_in=relu_in, relu_out=relu_out)


def depthwise_taps(weight: torch.Tensor) -> torch.Tensor:
    """A (C, 1, kh, kw) depthwise weight as the kernel reads it: (kh·kw, C) float32, one row per tap."""
    return weight.detach().reshape(weight.shape[0], -1).t().contiguous().float()


def depthwise_conv2d_taps(
    x: torch.Tensor,
    taps: torch.Tensor,
    bias: torch.Tensor | None,
    kernel: tuple[int, int],
    *,
    stride: int = 1,
    dilation: int = 1,
    padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    relu_in: bool = False,
    relu_out: bool = False,
) -> torch.Tensor:
    """:func:`depthwise_conv2d` with the weight already laid out by :func:`depthwise_taps` (no per-call copy)."""
    if triton is None:
        raise RuntimeError("Triton is not installed; use the PyTorch path (xception.optimize falls back to it)")
    n, c, h, w = x.shape
    kh, kw = kernel
    top, bottom, left, right = padding
    h_out = (h + top + bottom - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + left + right - dilation * (kw - 1) - 1) // stride + 1
    y = torch.empty((n, c, h_out, w_out), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    b = bias if bias is not None else taps  # any pointer when HAS_BIAS is off
    block_w, block_c, warps = _blocks(c, w_out)
    grid = (n * h_out, triton.cdiv(w_out, block_w), triton.cdiv(c, block_c))
    _depthwise_kernel[grid](
        x, taps, b, y, c, h, w, h_out, w_out, *x.stride(), *y.stride(),
        STRIDE=stride, DILATION=dilation, PAD_TOP=top, PAD_LEFT=left, KH=kh, KW=kw,
        RELU_IN=relu_in, RELU_OUT=relu_out, HAS_BIAS=bias is not None,
        BLOCK_W=block_w, BLOCK_C=block_c, num_warps=warps,
    )
    return y

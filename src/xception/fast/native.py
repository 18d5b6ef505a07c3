"""The fast path's own CPU kernels: every convolution of the network as one fused GEMM (``csrc/``).

oneDNN runs a separable conv as two passes over memory (the depthwise output is written, then read by
the 1×1 conv) and, on AVX2, its depthwise kernel is 2–2.6× slower than ONNX Runtime's
(``benchmarks/NOTES.md``). Here a separable conv is one GEMM whose prologue computes the depthwise
output for a block of pixels straight into the buffer the GEMM reads (ReLU before, folded-BN bias and
ReLU between, as the layer needs), and whose epilogue adds the bias and the residual and applies the
ReLU. Plain convs gather their k×k patches the same way; max-pools (+ the residual add) have a kernel of
their own. Register tiles and cache blocking are written for AVX-512 and for AVX2 + FMA; the instruction
set is chosen at run time. A bfloat16 program runs on a third build where the CPU has AVX-512 BF16: the same
prologues on bfloat16 tensors, the GEMM on ``vdpbf16ps`` (:func:`bf16_available`).

The kernels are a compiled extension (``xception.fast._cpu``), built when the package is installed;
where it could not be built, or the CPU has neither instruction set, :func:`available` is False and the
fast path runs on oneDNN instead. ``XCEPTION_CPU_ISA=avx2`` forces the AVX2 kernels (to test them on an
AVX-512 machine).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib.util
import logging
import platform
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..hardware import KERNEL_ISAS, load_kernels
from ..layers import TFSamePad2d, tf_same_padding
from .fused import FusedBlock, FusedConv, FusedXception

log = logging.getLogger("xception.fast")

POINTWISE, SEPARABLE, PATCHES = 0, 1, 2
ISAS = dict(enumerate(KERNEL_ISAS))


class _Conv(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "kind", "n", "h", "w", "c", "oh", "ow", "kernel", "stride", "dilation", "pad_top", "pad_left", "relu_in",
    )] + [
        ("dw_weight", ctypes.c_void_p), ("dw_bias", ctypes.c_void_p), ("relu_mid", ctypes.c_int),
        ("k_dim", ctypes.c_int), ("cout", ctypes.c_int), ("packed", ctypes.c_void_p), ("bias", ctypes.c_void_p),
        ("residual", ctypes.c_void_p), ("relu_out", ctypes.c_int), ("bf16", ctypes.c_int),
    ]


class _Pool(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "n", "h", "w", "c", "oh", "ow", "kernel", "stride", "pad_top", "pad_left",
    )] + [("residual", ctypes.c_void_p), ("bf16", ctypes.c_int)]


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = load_kernels()
    if lib is None:
        return None
    lib.xc_packed_floats.restype = ctypes.c_size_t
    lib.xc_packed_floats.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.xc_pack_weights.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    if hasattr(lib, "xc_bf16"):  # (builds of earlier revisions, which benchmarks/kernel_ab.py loads, have none)
        lib.xc_packed_bf16_words.restype = ctypes.c_size_t
        lib.xc_packed_bf16_words.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.xc_pack_weights_bf16.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.xc_conv_forward.argtypes = [ctypes.POINTER(_Conv), ctypes.c_void_p, ctypes.c_void_p]
    lib.xc_pool_forward.argtypes = [ctypes.POINTER(_Pool), ctypes.c_void_p, ctypes.c_void_p]
    return lib


def isa() -> str:
    """The instruction set the kernels use here: ``"avx512"``, ``"avx2"``, or ``"none"``."""
    lib = _library()
    return ISAS[lib.xc_isa()] if lib is not None else "none"


def available() -> bool:
    """Whether the compiled kernels are installed and this CPU can run them."""
    return isa() != "none"


def bf16_available() -> bool:
    """Whether the bfloat16 kernels run here: the AVX-512 kernels in use on a CPU with AVX-512 BF16."""
    lib = _library()
    return lib is not None and hasattr(lib, "xc_bf16") and bool(lib.xc_bf16())


def built() -> bool:
    """Whether the compiled kernels are installed and load (whatever this CPU can run)."""
    return _library() is not None


def _load_error() -> str | None:
    """Why the extension cannot be used, as the loader says it, or None when it loads (or is absent)."""
    spec = importlib.util.find_spec("xception.fast._cpu")
    if spec is None or spec.origin is None:
        return None
    try:
        ctypes.CDLL(spec.origin)
    except OSError as err:
        return str(err)
    return None


def problem() -> tuple[str, bool] | None:
    """Why the compiled kernels do not run here, with the consequence and what to do, and whether the user can
    fix it (a failed build can be; a CPU without the instruction sets cannot); None when they run."""
    if available():
        return None
    consequence = ("the fast path runs its convolutions on oneDNN instead, about 0.77× the speed of the native "
                   "kernels (AVX-512 Xeon, float32, batch 8; benchmarks/NOTES.md)")
    if importlib.util.find_spec("xception.fast._cpu") is None:
        return ("the compiled CPU kernels (xception.fast._cpu) were not built when the package was installed "
                f"(no C++ compiler, or the compile failed); {consequence}. Fix: install a C++ compiler "
                "(apt-get install g++) and reinstall the package (pip install --no-deps --force-reinstall -e .; "
                "add -v to see the compiler's error)"), True
    if (error := _load_error()) is not None:
        return (f"the compiled CPU kernels cannot be loaded ({error}); {consequence}. Fix: reinstall the "
                "package (pip install --no-deps --force-reinstall -e .)"), True
    return (f"this CPU ({platform.machine()}) has neither AVX-512 nor AVX2 + FMA, which the compiled CPU kernels "
            f"need; {consequence}"), False


@functools.cache
def warn_if_unavailable() -> bool:
    """Say once per process why the compiled kernels do not run, if they do not: a warning when it can be
    fixed, an info line when the CPU cannot run them. Returns whether they run."""
    found = problem()
    if found is not None:
        text, fixable = found
        log.log(logging.WARNING if fixable else logging.INFO, "%s", text)
    return found is None


_lock = threading.Lock()  # the kernels share one thread pool: one forward pass at a time


def _set_threads(lib: ctypes.CDLL) -> None:
    lib.xc_set_threads(torch.get_num_threads())  # a no-op unless the count changed


@dataclass
class Call:
    """One kernel call as a pass made it: the function, its arguments, and the tensors they point into."""

    call: Callable[..., int]
    op: ctypes.Structure
    x: torch.Tensor
    out: torch.Tensor
    add: torch.Tensor | None
    checked: bool  # returns a status


_recorder = threading.local()


@contextlib.contextmanager
def recording() -> Iterator[list[Call]]:
    """Record the kernel calls this thread makes inside the block (and keep their tensors alive: no address
    is reused by another value while recording)."""
    calls: list[Call] = []
    _recorder.calls = calls
    try:
        yield calls
    finally:
        _recorder.calls = None


def _record(call: Call) -> None:
    calls = getattr(_recorder, "calls", None)
    if calls is not None:
        calls.append(call)


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _pack(weight: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """B of the GEMM, packed in the kernels' panels, from a (cout, k_dim) matrix: float32, or (``bf16``, for the bf16
    kernels) rounded to bfloat16 and packed in pairs, one 32-bit word each."""
    lib = _library()
    cout, k_dim = weight.shape
    if bf16:
        weight = weight.to(torch.bfloat16).contiguous()
        packed = torch.empty(lib.xc_packed_bf16_words(k_dim, cout), dtype=torch.int32)
        lib.xc_pack_weights_bf16(weight.data_ptr(), k_dim, cout, packed.data_ptr())
    else:
        weight = weight.float().contiguous()
        packed = torch.empty(lib.xc_packed_floats(k_dim, cout), dtype=torch.float32)
        lib.xc_pack_weights(weight.data_ptr(), k_dim, cout, packed.data_ptr())
    return packed


def _padded_bias(bias: torch.Tensor | None, cout: int) -> torch.Tensor:
    """The bias, zero-padded to whole register tiles (the kernels read whole tiles of it)."""
    cols = _library().xc_tile_cols()
    out = torch.zeros((cout + cols - 1) // cols * cols, dtype=torch.float32)
    if bias is not None:
        out[:cout] = bias.detach().float()
    return out


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class NativeConv(nn.Module):
    """One convolution of the fused program as a fused GEMM: a plain k×k or 1×1 conv (``first``), or a
    depthwise conv followed by a 1×1 conv (``first`` the depthwise step, ``second`` the pointwise one).

    In float32, or in bfloat16 (a bfloat16 program, where :func:`bf16_available`): bfloat16 activations and
    weights, the GEMM's products summed in float32, the depthwise step (float32 taps of bfloat16 values) and the
    epilogue in float32, each result rounded to bfloat16 once."""

    takes_residual = True  # forward(x, add=...) adds a residual inside the kernel

    def __init__(self, first: FusedConv, second: FusedConv | None = None) -> None:
        super().__init__()
        conv = second or first
        self.window = first  # where the GEMM's rows come from: its kernel, stride, padding
        self.kind = SEPARABLE if second is not None else (
            POINTWISE if first.kernel_size == (1, 1) and first.stride == (1, 1) else PATCHES)
        self.cout, self.relu_out = conv.out_channels, conv.relu_out
        self.relu_in = first.relu_in
        self.dtype = conv.weight.dtype
        kh, kw = first.kernel_size
        weight = conv.weight.detach().float()
        if second is None:  # columns of A in the order the patches are gathered: (dy, dx, channel)
            self.k_dim = kh * kw * first.in_channels
            matrix = weight.permute(0, 2, 3, 1).reshape(self.cout, self.k_dim)
            self.dw_weight = self.dw_bias = None
            self.relu_mid = False
        else:
            self.k_dim = first.in_channels
            matrix = weight.reshape(self.cout, self.k_dim)
            self.dw_weight = first.weight.detach().float().reshape(first.in_channels, kh * kw).t().contiguous()
            self.dw_bias = first.bias.detach().float().contiguous() if first.bias is not None else None
            self.relu_mid = first.relu_out
        self.packed = _pack(matrix, bf16=self.dtype == torch.bfloat16)
        self.bias = _padded_bias(conv.bias, self.cout)
        self.packed_for = isa()  # the register tiles (and so the packing) differ between instruction sets

    @staticmethod
    def supports(first: FusedConv, second: FusedConv | None = None) -> bool:
        dtype = first.weight.dtype
        if first.weight.device.type != "cpu" or not (
                dtype == torch.float32 or (dtype == torch.bfloat16 and bf16_available())):
            return False
        if second is not None and second.weight.dtype != dtype:
            return False
        kh, kw = first.kernel_size
        square = kh == kw and len(set(first.stride)) == 1 and len(set(first.dilation)) == 1
        if second is None:
            return square and first.groups == 1
        return (square and first.depthwise and second.kernel_size == (1, 1) and second.stride == (1, 1)
                and second.groups == 1 and second.padding == (0, 0) and second.pad is None
                and not second.relu_in and second.in_channels == first.out_channels)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        lib = _library()
        if self.packed_for != isa():
            raise RuntimeError(f"weights packed for {self.packed_for} kernels, but {isa()} ones are in use")
        if x.dtype != self.dtype:
            raise TypeError(f"a {str(self.dtype).removeprefix('torch.')} conv got a {x.dtype} input")
        x = _nhwc(x)
        n, c, h, w = x.shape
        top, bottom, left, right = self.window.pads(x)
        k, stride, dilation = self.window.kernel_size[0], self.window.stride[0], self.window.dilation[0]
        oh = (h + top + bottom - dilation * (k - 1) - 1) // stride + 1
        ow = (w + left + right - dilation * (k - 1) - 1) // stride + 1
        out = torch.empty((n, self.cout, oh, ow), dtype=self.dtype, memory_format=torch.channels_last)
        if add is not None:
            add = _nhwc(add.to(self.dtype))
            if add.shape != out.shape:
                raise ValueError(f"residual of shape {tuple(add.shape)} for an output of {tuple(out.shape)}")
        op = _Conv(self.kind, n, h, w, c, oh, ow, k, stride, dilation, top, left, int(self.relu_in),
                   _ptr(self.dw_weight), _ptr(self.dw_bias), int(self.relu_mid), self.k_dim, self.cout,
                   _ptr(self.packed), _ptr(self.bias), _ptr(add), int(self.relu_out), int(self.dtype == torch.bfloat16))
        with _lock:
            _set_threads(lib)
            status = lib.xc_conv_forward(ctypes.byref(op), x.data_ptr(), out.data_ptr())
        _record(Call(lib.xc_conv_forward, op, x, out, add, checked=True))
        if status == 1:
            raise RuntimeError("the bfloat16 kernels do not run on this CPU (they need AVX-512 BF16)")
        if status:
            raise MemoryError("the CPU kernels could not allocate their scratch memory")
        return out

    def extra_repr(self) -> str:
        kind = {POINTWISE: "1×1", SEPARABLE: "separable", PATCHES: "patches"}[self.kind]
        dtype = str(self.dtype).removeprefix("torch.")
        return (f"{kind}, {dtype}, k_dim={self.k_dim}, cout={self.cout}, relu_in={self.relu_in}, "
                f"relu_out={self.relu_out}")


class NativeMaxPool(nn.Module):
    """A k×k max-pool whose padding never wins (TF 'same' with -inf, or PyTorch's static padding),
    with the residual add of the module it closes; float32 or bfloat16, as the input comes."""

    takes_residual = True

    def __init__(self, pool: nn.MaxPool2d, pad: TFSamePad2d | None = None) -> None:
        super().__init__()
        self.kernel, self.stride = int(pool.kernel_size), int(pool.stride)
        self.padding = int(pool.padding)
        self.same = pad

    @staticmethod
    def supports(pool: nn.Module) -> bool:
        return (isinstance(pool, nn.MaxPool2d) and isinstance(pool.kernel_size, int) and pool.kernel_size <= 7
                and isinstance(pool.stride, int) and isinstance(pool.padding, int) and pool.dilation == 1
                and not pool.ceil_mode)

    def forward(self, x: torch.Tensor, add: torch.Tensor | None = None) -> torch.Tensor:
        lib = _library()
        x = _nhwc(x)
        n, c, h, w = x.shape
        if self.same is not None:
            (top, bottom), (left, right) = (tf_same_padding(s, self.kernel, self.stride) for s in (h, w))
        else:
            top = bottom = left = right = self.padding
        oh = (h + top + bottom - self.kernel) // self.stride + 1
        ow = (w + left + right - self.kernel) // self.stride + 1
        if x.dtype not in (torch.float32, torch.bfloat16):
            raise TypeError(f"the native max-pool takes float32 or bfloat16, got {x.dtype}")
        out = torch.empty((n, c, oh, ow), dtype=x.dtype, memory_format=torch.channels_last)
        if add is not None:
            add = _nhwc(add.to(x.dtype))
        op = _Pool(n, h, w, c, oh, ow, self.kernel, self.stride, top, left, _ptr(add), int(x.dtype == torch.bfloat16))
        with _lock:
            _set_threads(lib)
            lib.xc_pool_forward(ctypes.byref(op), x.data_ptr(), out.data_ptr())
        _record(Call(lib.xc_pool_forward, op, x, out, add, checked=False))
        return out


def _native_steps(steps: list[nn.Module], pools_only: bool = False) -> list[nn.Module]:
    """Replace what the kernels can run: depthwise + 1×1 pairs, plain convs, padded max-pools (only the
    max-pools with ``pools_only``)."""
    out: list[nn.Module] = []
    i = 0
    while i < len(steps):
        step = steps[i]
        after = steps[i + 1] if i + 1 < len(steps) else None
        if pools_only and isinstance(step, FusedConv):
            pass
        elif isinstance(step, FusedConv) and step.depthwise:
            if isinstance(after, FusedConv) and NativeConv.supports(step, after):
                out.append(NativeConv(step, after))
                i += 2
                continue
        elif isinstance(step, FusedConv) and NativeConv.supports(step):
            out.append(NativeConv(step))
            i += 1
            continue
        elif isinstance(step, TFSamePad2d) and step.value == float("-inf") and NativeMaxPool.supports(after):
            out.append(NativeMaxPool(after, step))
            i += 2
            continue
        elif NativeMaxPool.supports(step):
            out.append(NativeMaxPool(step))
            i += 1
            continue
        out.append(step)
        i += 1
    return out


def use_native_kernels(program: FusedXception, pools_only: bool = False) -> int:
    """Run ``program``'s convolutions and max-pools on the compiled kernels where they can; returns how
    many steps now do (the rest stay as they were: oneDNN or PyTorch). ``pools_only``: the max-pools alone
    (a bfloat16 program whose convs stay on oneDNN: a CPU with AMX, or without the bf16 kernels)."""
    if not available():
        return 0
    program.stem = nn.ModuleList(_native_steps(list(program.stem), pools_only))
    for block in program.blocks:
        assert isinstance(block, FusedBlock)
        block.pre = nn.ModuleList(_native_steps(list(block.pre), pools_only))
        block.main = nn.ModuleList(_native_steps(list(block.main), pools_only))
        if not pools_only and block.shortcut is not None and NativeConv.supports(block.shortcut):
            block.shortcut = NativeConv(block.shortcut)  # type: ignore[assignment]
    return sum(isinstance(m, (NativeConv, NativeMaxPool)) for m in program.modules())

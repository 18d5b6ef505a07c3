"""The int8 network on the fast path's compiled int8 kernels (``fast/csrc/qkernels*.{h,cpp}``).

The same steps as :class:`~.reference.QuantizedXception`, computed the same way (the integer parts exactly,
the float epilogue bit for bit: the tests compare every output code), on uint8 NHWC tensors:

* a depthwise conv and the pointwise conv after it are **one kernel call**: the depthwise step, requantised to
  codes as the reference does, is the pointwise GEMM's prologue and never goes to memory;
* every other conv is one GEMM over its k×k patches (or its input rows, for a 1×1 conv); the epilogue adds
  the bias and the residual, applies the ReLU in its clamp and writes uint8 codes;
* max-pools run on codes; the global average pool and the input's quantisation are PyTorch's (one pass each,
  with the reference's own functions); the classifier is the GEMM again, its epilogue writing float32 logits.

The input's zero point is folded into each GEMM's bias (``bias − z·Σw``), so the kernels multiply the codes
as they are (u8 × s8 → s32, what the CPU's dot instructions take).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import torch
from torch import nn

from ..fast import native
from ..fast.replay import NativeReplay
from ..hardware import INT8_KERNEL_ISAS
from .reference import QBlock, QConv, QHead, QMaxPool, QReLU, QuantizedXception
from .scheme import QParams, QTensor, pool_multiplier

POINTWISE, SEPARABLE, PATCHES = native.POINTWISE, native.SEPARABLE, native.PATCHES
DEPTHWISE = 3  # int8 only: a depthwise conv on its own
QISAS = dict(enumerate(INT8_KERNEL_ISAS))
# The GEMM kernels: int16 pairs (vpmaddwd, any weights), byte quads (vpmaddubsw, 7-bit weights), VNNI quads
# (vpdpbusd, any weights, on AVX-512 VNNI CPUs, where every layer takes them).
PAIRS, QUADS, VNNI, OCTETS = 0, 1, 2, 3
KERNEL_NAMES = {PAIRS: "int16 pairs, vpmaddwd", QUADS: "byte quads, vpmaddubsw", VNNI: "VNNI quads, vpdpbusd",
                OCTETS: "byte octets, vpmaddubsw twice per vpmaddwd"}
PAD = 64  # per-channel tables are read in whole vectors: padded to a multiple of this


class _QConvOp(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int) for name in (
        "kind", "n", "h", "w", "c", "oh", "ow", "kernel", "stride", "dilation", "pad_top", "pad_left", "in_zero",
        "relu_in",
    )] + [
        ("dw_weight", ctypes.c_void_p), ("dw_bias", ctypes.c_void_p), ("dw_mult", ctypes.c_void_p),
        ("dw_start", ctypes.c_void_p),
        ("mid_zero", ctypes.c_int), ("mid_lo", ctypes.c_int), ("k_dim", ctypes.c_int), ("cout", ctypes.c_int),
        ("packed", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("mult", ctypes.c_void_p),
        ("residual", ctypes.c_void_p), ("res_zero", ctypes.c_int), ("res_mult", ctypes.c_float),
        ("out_zero", ctypes.c_int), ("out_lo", ctypes.c_int), ("code_max", ctypes.c_int), ("out_float", ctypes.c_int),
        ("kernels", ctypes.c_int), ("dw_quads", ctypes.c_void_p), ("dw_start_q", ctypes.c_void_p),
    ]


class _QGlobalOp(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int), ("pixels", ctypes.c_int), ("c", ctypes.c_int), ("in_zero", ctypes.c_int),
                ("mult", ctypes.c_float), ("out_zero", ctypes.c_int), ("code_max", ctypes.c_int),
                ("max_pool", ctypes.c_int)]


@functools.cache
def _library() -> ctypes.CDLL | None:
    lib = native._library()
    if lib is None or not hasattr(lib, "xc_qconv_forward"):
        return None
    lib.xc_qpacked_bytes.restype = ctypes.c_size_t
    lib.xc_qpacked_bytes.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.xc_qpack_weights.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.xc_qconv_forward.argtypes = [ctypes.POINTER(_QConvOp), ctypes.c_void_p, ctypes.c_void_p]
    lib.xc_qpool_forward.argtypes = [ctypes.POINTER(native._Pool), ctypes.c_void_p, ctypes.c_void_p]
    lib.xc_qglobal_pool.argtypes = [ctypes.POINTER(_QGlobalOp), ctypes.c_void_p, ctypes.c_void_p]
    lib.xc_quantize_input.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 4, ctypes.c_float, ctypes.c_int,
                                      ctypes.c_int, ctypes.c_void_p]
    return lib


def isa() -> str:
    """The instruction set of the int8 kernels this CPU runs: ``"avx512-vnni"`` (where the CPU has it and the
    kernels pass their start-up check against the AVX2 ones), ``"avx2"``, or ``"none"``."""
    lib = _library()
    return QISAS.get(lib.xc_qisa(), "none") if lib is not None else "none"


def available() -> bool:
    return isa() != "none"


def fastest_bits(*, onnx: bool = False) -> tuple[int, int]:
    """(weight bits, activation bits) this CPU's int8 kernels run fastest, exactly: 7 and 7 on AVX2 without
    VNNI, where 8-bit weights need the int16 pairs (half the byte quads' rate) and 7-bit operands let two
    ``vpmaddubsw`` sums add before widening; 8 and 8 where VNNI multiplies any 8-bit operands exactly, or where
    no kernels run (the reference's speed does not depend on them). ``onnx``: activations stay 8, the only
    width ONNX's QDQ format has."""
    seven = 7 if isa() == "avx2" else 8
    return seven, 8 if onnx else seven


def _padded(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out = torch.zeros((len(values) + PAD - 1) // PAD * PAD, dtype=dtype)
    out[: len(values)] = values.to(dtype)
    return out


def _lowest(zero_point: int, relu: bool) -> int:
    return zero_point if relu else 0


def fits_byte_quads(matrix: torch.Tensor) -> bool:
    """Whether vpmaddubsw's int16 pair sums are exact for these (cout, k) weights: |w[k]| + |w[k+1]| ≤ 128 for
    every even k (so 255·128 < 2^15 bounds each), as for any weights within [−64, 64]."""
    w = matrix.abs().int()
    if w.shape[1] % 2:
        w = torch.nn.functional.pad(w, (0, 1))
    return bool((w[:, 0::2] + w[:, 1::2]).max() <= 128)


def _depthwise_start(bias: torch.Tensor, taps: torch.Tensor, in_zero: int) -> torch.Tensor | None:
    """Where the depthwise sums may start, bias − z·Σw (float32), so that the kernels multiply the codes as they
    are: Σ (q − z)·w + bias = Σ q·w + (bias − z·Σw). None unless every partial sum from there stays an integer
    below 2^24 in magnitude, where float32 adds exactly; the kernels then take the general path."""
    start = bias.long() - in_zero * taps.long().sum(0)
    reach = len(taps) * 255 * int(taps.abs().max()) if taps.numel() else 0
    if int(start.abs().max()) + reach >= 2**24:
        return None
    return _padded(start, torch.float32)


def _depthwise_quads(bias: torch.Tensor, taps: torch.Tensor, in_zero: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A 3×3 window's taps as byte quads for a dot-product instruction (vpdpbusd), and where their int32 sums
    start: (3, c) words holding column dx's int8 taps (top, middle, bottom, 0), and bias − z·Σw. None for other
    windows, or where the start does not fit int32."""
    if len(taps) != 9:
        return None
    start = bias.long() - in_zero * taps.long().sum(0)
    if int(start.abs().max()) + 9 * 255 * 128 >= 2**31:
        return None
    channels = taps.shape[1]
    quads = torch.zeros(3, (channels + PAD - 1) // PAD * PAD, 4, dtype=torch.int8)
    quads[:, :channels, :3] = taps.reshape(3, 3, channels).permute(1, 2, 0).to(torch.int8)  # [dx, channel, dy]
    return quads.view(torch.int32).reshape(3, -1).contiguous(), _padded(start, torch.int32)


class NativeQConv(nn.Module):
    """One GEMM of the int8 network: a 1×1 or k×k conv, a depthwise conv joined to the pointwise conv after it
    (:meth:`of`), or the classifier (:meth:`classifier`). ``forward(x, add)`` takes and returns codes as
    :class:`QTensor` with NHWC (N, H, W, C) tensors."""

    def __init__(self, name: str, weight: torch.Tensor | None, bias: torch.Tensor | None,
                 multiplier: torch.Tensor | None, *, gemm_in_zero: int, window: QConv | None, output: QParams | None,
                 relu_out: bool = False, residual_multiplier: float = 0.0, dw: QConv | None = None,
                 mid_relu: bool = False, code_max: int = 255) -> None:
        super().__init__()
        self.name, self.window, self.output, self.relu_out = name, window, output, relu_out
        self.code_max = code_max  # every activation code (inputs included) is at most this
        self.residual_multiplier = residual_multiplier
        if weight is None:
            self.kind = DEPTHWISE
        elif dw is not None:
            self.kind = SEPARABLE
        elif window is None or (window.kernel_size == (1, 1) and window.stride == (1, 1)):
            self.kind = POINTWISE
        else:
            self.kind = PATCHES
        self.in_zero = int(window.input_zero_point.item()) if window is not None else gemm_in_zero
        self.dw_weight = self.dw_bias = self.dw_mult = self.dw_start = self.dw_quads = self.dw_start_q = None
        self.mid_zero = self.mid_lo = 0
        if dw is not None:
            kk = dw.kernel_size[0] * dw.kernel_size[1]
            self.dw_weight = dw.weight.float().reshape(len(dw.weight), kk).t().contiguous()
            self.dw_bias, self.dw_mult = _padded(dw.bias, torch.int32), _padded(dw.multiplier, torch.float32)
            self.dw_start = _depthwise_start(dw.bias, self.dw_weight, self.in_zero)
            self.dw_quads, self.dw_start_q = _depthwise_quads(dw.bias, self.dw_weight, self.in_zero) or (None, None)
            # A ReLU on the depthwise output (or on the pointwise conv's input): the clamp's lower end.
            self.mid_zero, self.mid_lo = gemm_in_zero, _lowest(gemm_in_zero, mid_relu)
        if weight is None or bias is None or multiplier is None:  # a depthwise conv on its own: no GEMM
            assert dw is not None
            self.cout, self.k_dim, self.kernels = len(dw.weight), 0, PAIRS
            self.packed = self.bias = self.mult = None
            return
        self.cout = len(weight)
        matrix = weight.permute(0, 2, 3, 1).reshape(self.cout, -1).contiguous()  # (dy, dx, channel) columns
        self.k_dim = matrix.shape[1]
        lib = _library()
        # Byte octets need 7-bit codes and byte-quad weights; on depths below 64 (the first conv's 27) they
        # measured slower than the quads (21 against 13 ms for the stem's first conv, batch 8, Zen 3).
        quads = fits_byte_quads(matrix)
        octets = quads and code_max <= 127 and self.k_dim >= 64
        self.kernels = VNNI if lib.xc_qisa() == 2 else OCTETS if octets else QUADS if quads else PAIRS
        self.packed = torch.empty(lib.xc_qpacked_bytes(self.k_dim, self.cout, self.kernels), dtype=torch.uint8)
        lib.xc_qpack_weights(matrix.data_ptr(), self.k_dim, self.cout, self.kernels, self.packed.data_ptr())
        folded = bias.long() - gemm_in_zero * matrix.long().sum(1)  # acc = Σ q·w + (bias − z·Σw)
        if int(folded.abs().max()) >= 2**31:
            raise ValueError(f"{name}: the folded bias does not fit int32")
        self.bias, self.mult = _padded(folded, torch.int32), _padded(multiplier, torch.float32)

    @classmethod
    def of(cls, conv: QConv, dw: QConv | None = None) -> NativeQConv:
        """``conv``, or ``dw`` then ``conv``: its input zero point is then the depthwise output's."""
        residual = float(conv.residual_multiplier.item()) if conv.adds_residual else 0.0
        return cls(conv.name, conv.weight, conv.bias, conv.multiplier, gemm_in_zero=int(conv.input_zero_point.item()),
                   window=dw or conv, output=conv.output_params, relu_out=conv.relu_out,
                   residual_multiplier=residual, dw=dw, mid_relu=dw is not None and (dw.relu_out or conv.relu_in),
                   code_max=conv.code_max)

    @classmethod
    def depthwise(cls, dw: QConv) -> NativeQConv:
        """A depthwise conv with no pointwise conv after it (``separable_order="pointwise_first"``)."""
        residual = float(dw.residual_multiplier.item()) if dw.adds_residual else 0.0
        return cls(dw.name, None, None, None, gemm_in_zero=int(dw.output_zero_point.item()), window=dw,
                   output=dw.output_params, residual_multiplier=residual, dw=dw, mid_relu=dw.relu_out,
                   code_max=dw.code_max)

    @classmethod
    def classifier(cls, head: QHead) -> NativeQConv:
        """The classifier as a 1×1 GEMM over the pooled codes whose epilogue writes float32 logits."""
        return cls(head.name, head.weight[:, :, None, None], head.bias, head.multiplier,
                   gemm_in_zero=head.pool_params.zero_point, window=None, output=None, code_max=head.code_max)

    @staticmethod
    def supports(conv: QConv, dw: QConv | None = None) -> bool:
        window = dw or conv
        k, s, d = window.kernel_size, window.stride, window.dilation
        square = k[0] == k[1] <= 7 and s[0] == s[1] and d[0] == d[1]
        if dw is None:
            return square and (conv.kind != "depthwise" or len(conv.weight) == conv.groups)
        return (square and dw.kind == "depthwise" and conv.kind == "pointwise" and conv.stride == (1, 1)
                and conv.weight.shape[1] == len(dw.weight))

    def _geometry(self, h: int, w: int) -> tuple[int, int, int, int, int, int, int]:
        """kernel, stride, dilation, top, left padding and output size for an h × w input."""
        if self.window is None:
            return 1, 1, 1, 0, 0, h, w
        top, bottom, left, right = self.window.pads(h, w)
        k, s, d = self.window.kernel_size[0], self.window.stride[0], self.window.dilation[0]
        span = d * (k - 1) + 1
        return k, s, d, top, left, (h + top + bottom - span) // s + 1, (w + left + right - span) // s + 1

    def forward(self, x: QTensor, add: QTensor | None = None) -> QTensor | torch.Tensor:
        n, h, w, c = x.q.shape
        k, s, d, top, left, oh, ow = self._geometry(h, w)
        logits = self.output is None
        out = torch.empty((n, oh, ow, self.cout), dtype=torch.float32 if logits else torch.uint8)
        out_zero = 0 if self.output is None else self.output.zero_point
        if add is not None and add.q.shape != out.shape:
            raise ValueError(f"{self.name}: residual of shape {tuple(add.q.shape)} for an output of {tuple(out.shape)}")
        relu_in = bool(self.window is not None and self.window.relu_in)
        op = _QConvOp(self.kind, n, h, w, c, oh, ow, k, s, d, top, left, self.in_zero, int(relu_in),
                      native._ptr(self.dw_weight), native._ptr(self.dw_bias), native._ptr(self.dw_mult),
                      native._ptr(self.dw_start),
                      self.mid_zero, self.mid_lo, self.k_dim, self.cout, native._ptr(self.packed),
                      native._ptr(self.bias), native._ptr(self.mult), native._ptr(None if add is None else add.q),
                      0 if add is None else add.zero_point, self.residual_multiplier, out_zero,
                      _lowest(out_zero, self.relu_out), self.code_max, int(logits), self.kernels,
                      native._ptr(self.dw_quads), native._ptr(self.dw_start_q))
        _run("xc_qconv_forward", op, x.q, out, None if add is None else add.q)
        return out if self.output is None else QTensor(out, *self.output)


class NativeQMaxPool(nn.Module):
    def __init__(self, pool: QMaxPool) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: QTensor) -> QTensor:
        n, h, w, c = x.q.shape
        top, bottom, left, right = self.pool.pads(h, w)
        if self.pool.padding:
            top = bottom = left = right = self.pool.padding
        k, s = self.pool.kernel, self.pool.stride
        oh, ow = (h + top + bottom - k) // s + 1, (w + left + right - k) // s + 1
        out = torch.empty((n, oh, ow, c), dtype=torch.uint8)
        op = native._Pool(n, h, w, c, oh, ow, k, s, top, left, None, 0)
        _run("xc_qpool_forward", op, x.q, out)
        return QTensor(out, x.scale, x.zero_point)


class NativeQGlobalPool(nn.Module):
    """The head's global pool (:meth:`QHead.pooled`) on NHWC codes: (N, H, W, C) → (N, 1, 1, C) codes."""

    def __init__(self, head: QHead) -> None:
        super().__init__()
        # The pooled codes' scale and zero point; a max pool keeps its input's.
        self.params = head.pool_params if head.pool_type == "avg" else None
        self.code_max = head.code_max

    def forward(self, x: QTensor) -> QTensor:
        n, h, w, c = x.q.shape
        out = torch.empty((n, 1, 1, c), dtype=torch.uint8)
        if self.params is None:
            op = _QGlobalOp(n, h * w, c, x.zero_point, 0.0, x.zero_point, self.code_max, 1)
            params = QParams(x.scale, x.zero_point)
        else:
            params = self.params
            mult = float(pool_multiplier(x.scale, h * w, params.scale))
            op = _QGlobalOp(n, h * w, c, x.zero_point, mult, params.zero_point, self.code_max, 0)
        _run("xc_qglobal_pool", op, x.q, out)
        return QTensor(out, *params)


def _call(fn: Callable[[ctypes.CDLL], int]) -> None:
    lib = _library()
    with native._lock:
        native._set_threads(lib)
        status = fn(lib)
    if status:
        raise MemoryError("the int8 CPU kernels could not run (no scratch memory, or no kernels for this CPU)")


def _run(entry: str, op: ctypes.Structure, x: torch.Tensor, out: torch.Tensor, add: torch.Tensor | None = None) -> None:
    """The kernel ``entry`` on ``op`` from ``x`` into ``out``, recorded for a replay (:func:`native.recording`)."""
    kernel = getattr(_library(), entry)
    _call(lambda _lib: kernel(ctypes.byref(op), x.data_ptr(), out.data_ptr()))
    native._record(native.Call(kernel, op, x, out, add, checked=True))


def _native_steps(steps: list[nn.Module]) -> list[nn.Module]:
    """The kernels' steps for a chain of integer steps: each depthwise conv joined to the pointwise conv after it."""
    out: list[nn.Module] = []
    i = 0
    while i < len(steps):
        step, after = steps[i], steps[i + 1] if i + 1 < len(steps) else None
        if isinstance(step, QConv) and step.kind == "depthwise" and isinstance(after, QConv) and \
                NativeQConv.supports(after, step):
            out.append(NativeQConv.of(after, step))
            i += 2
            continue
        if isinstance(step, QConv):
            if not NativeQConv.supports(step):
                raise ValueError(f"{step.name}: a conv the int8 kernels do not cover")
            out.append(NativeQConv.depthwise(step) if step.kind == "depthwise" else NativeQConv.of(step))
        elif isinstance(step, QMaxPool):
            out.append(NativeQMaxPool(step))
        elif isinstance(step, QReLU):  # max(q, z): the same on NHWC codes
            out.append(step)
        else:
            raise ValueError(f"no int8 kernel for {type(step).__name__}")
        i += 1
    return out


class NativeQBlock(QBlock):
    """A residual module on the kernels: the reference's own data flow (:meth:`QBlock.forward`) over their steps."""

    def __init__(self, block: QBlock) -> None:
        nn.Module.__init__(self)
        self.main = nn.ModuleList(_native_steps(list(block.main)))
        self.shortcut = NativeQConv.of(block.shortcut) if block.shortcut is not None else None
        self.identity, self.act = block.identity, block.act


class NativeQuantizedXception(nn.Module):
    """``model(images)``: float batch in, float32 logits out, equal to the reference's
    (:class:`~.reference.QuantizedXception`) on the int8 kernels. Built from it; raises ``ValueError`` for a
    network with a step the kernels do not cover. ``replay``: each input shape's kernel calls are recorded on its
    first pass and replayed on later ones (:mod:`xception.fast.replay`; the same bits, without the Python
    between the calls)."""

    def __init__(self, reference: QuantizedXception, replay: bool = True) -> None:
        super().__init__()
        if not available():
            raise ValueError("the int8 CPU kernels are not available here")
        self.reference = reference
        self.stem = nn.ModuleList(_native_steps(list(reference.stem)))
        self.blocks = nn.ModuleList(NativeQBlock(b) for b in reference.blocks)
        self.pool = NativeQGlobalPool(reference.head)
        self.head = NativeQConv.classifier(reference.head)
        self.features_params: QParams | None = None  # the last step's codes' scale and zero point, once seen
        # The whole pass is recorded, the head's pool and classifier included: only the logits' reshape is left.
        self.replay = NativeReplay(self, prepare=self.input_codes, features=self._logits, head=_flat,
                                   isa=isa) if replay else None

    def kernels(self) -> str:
        """What runs the GEMMs, e.g. ``"avx2: byte quads, vpmaddubsw (37 layers), int16 pairs, vpmaddwd (1)"``."""
        counts: dict[int, int] = {}
        for m in self.modules():
            if isinstance(m, NativeQConv) and m.kind != DEPTHWISE:
                counts[m.kernels] = counts.get(m.kernels, 0) + 1
        return f"{isa()}: " + ", ".join(f"{KERNEL_NAMES[k]} ({n} layers)" for k, n in sorted(counts.items(),
                                                                                         key=lambda kv: -kv[1]))

    def input_codes(self, x: torch.Tensor) -> torch.Tensor:
        """The images' uint8 codes, NHWC, as the reference's ``quantize_input`` makes them (one kernel call)."""
        self.reference.check_input(x)
        x = x.detach().to("cpu", torch.float32).contiguous()
        n, c, h, w = x.shape
        out = torch.empty((n, h, w, c), dtype=torch.uint8)
        params = self.reference.input_params
        _call(lambda lib: lib.xc_quantize_input(x.data_ptr(), n, c, h, w, params.scale, params.zero_point,
                                                self.reference.code_max, out.data_ptr()))
        return out

    def _features(self, codes: torch.Tensor) -> torch.Tensor:
        h = QTensor(codes, *self.reference.input_params)
        for step in self.stem:
            h = step(h)
        for block in self.blocks:
            h = block(h)
        self.features_params = QParams(h.scale, h.zero_point)
        return h.q

    def _logits(self, codes: torch.Tensor) -> torch.Tensor:
        """The input's codes → the classifier's float32 logits, (N, 1, 1, classes): every step a kernel call."""
        features = self._features(codes)
        assert self.features_params is not None  # set by that pass
        return self.head(self.pool(QTensor(features, *self.features_params)))

    def forward_features(self, x: torch.Tensor) -> QTensor:
        """The last module's codes (N, H, W, C), step by step."""
        with torch.no_grad():
            codes = self._features(self.input_codes(x))
        assert self.features_params is not None
        return QTensor(codes, *self.features_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if self.replay is not None:
                return self.replay(x)
            return _flat(self._logits(self.input_codes(x)))


def _flat(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(len(logits), -1)


def on_kernels(reference: QuantizedXception) -> tuple[nn.Module, str]:
    """The network to run (the compiled kernels where they cover it, else the reference: the same logits bit for
    bit) and what runs it, in words."""
    if not available():
        return reference, "pytorch integer reference (no compiled int8 kernels for this CPU)"
    try:
        network = NativeQuantizedXception(reference)
    except ValueError as err:
        return reference, f"pytorch integer reference ({err})"
    return network, f"native int8 ({network.kernels()})"


"""The int8 Xception as a PyTorch reference: integer tensors for every integer part (:mod:`.scheme`).

The network is the fast path's program (:class:`~xception.fast.fused.FusedXception`: BatchNorm folded, each
ReLU, pad and residual add given to the conv that can do it), with every step in the quantised domain:

* a **depthwise** conv: int32 accumulation over k×k taps of the zero-point-padded uint8 input, then the
  epilogue (bias, ReLU, requantisation) into uint8;
* a **pointwise** conv: one GEMM over the NHWC rows (u8 × s8 → s32) with the epilogue: bias, residual
  add, ReLU, requantisation. The classifier is the same GEMM over one pixel, its epilogue dequantising;
* any other conv (the stem's, ``conv="standard"``): the same GEMM over k×k patches;
* ReLU before a conv: ``max(q, z)`` on codes; max-pool: on codes. Both exact, no requantisation.

**The depthwise output is requantised to uint8 before the pointwise GEMM**: the GEMM's inputs are 8-bit
(that is what VNNI's ``vpdpbusd`` and AMX's tiles multiply), and its int32 accumulator cannot feed another
GEMM. A kernel that fuses the two steps (as the float kernels do, the depthwise rows made into an
L2-resident buffer the GEMM reads) still writes that buffer as uint8 codes; only the memory traffic goes.
Every other conv output is requantised too: it is the next conv's 8-bit input. A residual add happens in
the epilogue of the conv that produces the sum (the shortcut's 1×1 conv, or the last pointwise conv of an
identity module), on the int32 accumulator's dequantised value: one rounding for ``conv + residual``.

Each step quantises itself from the tensors that actually reach it: :meth:`QuantizedXception.build` runs one
example through the network, and every conv takes its input's (and its residual's) scale as it goes.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..fast.fold import fold_xception
from ..fast.fused import FusedBlock, FusedConv, FusedXception
from ..layers import TFSamePad2d, tf_same_padding
from ..models import Xception
from ..models.xception import ClassifierHead
from .scheme import (
    QMAX,
    QParams,
    QTensor,
    Residual,
    check_accumulator,
    code_max,
    conv_accumulate,
    gemm_accumulate,
    global_sum,
    max_pool,
    multiplier,
    pool_multiplier,
    qparams_for_range,
    quantize_bias,
    quantize_input,
    quantize_weight,
    relu,
    requantize,
)

INPUT = "input"
HEAD = "head.fc"


def check_quantizable(model: object) -> None:
    """Refuse, in one line, a model the int8 network cannot compute."""
    if not isinstance(model, Xception):
        raise ConfigError(f"quantize() takes an xception.Xception (or its weights), got {type(model).__name__}")
    if model.features_only or model.config.num_classes == 0:
        raise ConfigError("int8 quantisation is for classifiers, and this model has no classifier (features_only "
                          "or num_classes=0): quantise weights that have their classification head")
    if model.config.architecture.family == "preact":
        raise ConfigError(f"int8 quantisation covers the paper's and the aligned Xceptions, not {model.config.arch}: "
                          "a pre-activation module's BatchNorm cannot fold into a conv")
    if model.config.activation == "elu":
        raise ConfigError("int8 quantisation has no ELU step: quantise a model with activation=None or 'relu' "
                          "between the separable steps")


def float_program(model: Xception) -> tuple[FusedXception, list[str]]:
    """The float32 program the int8 network mirrors (a folded copy; ``model`` is untouched) and the float
    model's name for each of its convs, in order."""
    check_quantizable(model)
    meta, model.weights_meta = model.weights_meta, None  # the copy needs none of it
    try:
        plain = copy.deepcopy(model).float().cpu().eval()
    finally:
        model.weights_meta = meta
    names = [name for name, m in plain.named_modules() if isinstance(m, nn.Conv2d)]
    fold_xception(plain)
    program = FusedXception(plain).eval()
    convs = program.convs()
    # Both walk module by module (stem, then each module's pre, main and shortcut), so the orders match.
    if len(convs) != len(names) or any(c.weight.shape != plain.get_submodule(n).weight.shape
                                       for c, n in zip(convs, names, strict=False)):
        raise RuntimeError("the fused program's convs do not line up with the model's")
    return program, names


def _scalar(value: float, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([value], dtype=dtype)


def _params(module: nn.Module, prefix: str) -> QParams:
    scale, zero = getattr(module, f"{prefix}_scale"), getattr(module, f"{prefix}_zero_point")
    return QParams(float(scale.item()), int(zero.item()))


def _set_params(module: nn.Module, prefix: str, params: QParams) -> None:
    setattr(module, f"{prefix}_scale", _scalar(params.scale, torch.float32))
    setattr(module, f"{prefix}_zero_point", _scalar(params.zero_point, torch.uint8))


def _register_params(module: nn.Module, *prefixes: str) -> None:
    for prefix in prefixes:
        module.register_buffer(f"{prefix}_scale", _scalar(1.0, torch.float32))
        module.register_buffer(f"{prefix}_zero_point", _scalar(0, torch.uint8))


class QConv(nn.Module):
    """One quantised conv: integer accumulation (:meth:`accumulate`), then the requantisation epilogue."""

    def __init__(self, name: str, conv: FusedConv, adds_residual: bool) -> None:
        super().__init__()
        self.name = name  # the float model's layer name, e.g. entry_flow.block2.main.sepconv1.depthwise
        self.kind = "depthwise" if conv.depthwise else "pointwise" if conv.pointwise else "conv"
        self.stride, self.dilation, self.padding = conv.stride, conv.dilation, conv.padding
        self.kernel_size, self.groups = conv.kernel_size, conv.groups
        self.tf_same = conv.pad is not None  # TF-'same' pads, worked out per input size
        self.relu_in, self.relu_out, self.adds_residual = conv.relu_in, conv.relu_out, adds_residual
        out = conv.out_channels
        self.register_buffer("weight", torch.zeros(conv.weight.shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("bias", torch.zeros(out, dtype=torch.int32))
        self.register_buffer("multiplier", torch.zeros(out))
        _register_params(self, "input", "output", *(["residual"] if adds_residual else []))
        if adds_residual:
            self.register_buffer("residual_multiplier", torch.zeros(1))
        self.code_max = QMAX  # the top code of every activation (QuantizedXception.activation_bits)
        self._pending: tuple[torch.Tensor, torch.Tensor | None, QParams] | None = None

    def prepare(self, conv: FusedConv, output: QParams, weight_bits: int = 8) -> None:
        """Quantise from ``conv``'s float weights on the next call, once the input's scale is known."""
        self._pending = (conv.weight.detach(), None if conv.bias is None else conv.bias.detach(), output)
        self._weight_bits = weight_bits

    def _quantize(self, x: QParams, residual: QParams | None) -> None:
        assert self._pending is not None
        weight, bias, out = self._pending
        self.weight, self.weight_scale = quantize_weight(weight, self._weight_bits)
        self.bias = quantize_bias(bias, x.scale, self.weight_scale)
        check_accumulator(self.weight, self.bias, self.name)
        self.multiplier = multiplier(x.scale, self.weight_scale, out.scale)
        _set_params(self, "input", x)
        _set_params(self, "output", out)
        if residual is not None:
            _set_params(self, "residual", residual)
            self.residual_multiplier = torch.tensor([residual.scale / out.scale], dtype=torch.float64).float()
        self._pending = None

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an input of this size."""
        if not self.tf_same:
            (ph, pw) = self.padding
            return ph, ph, pw, pw
        k, s, d = self.kernel_size, self.stride, self.dilation
        return (*tf_same_padding(height, k[0], s[0], d[0]), *tf_same_padding(width, k[1], s[1], d[1]))

    def accumulate(self, q: torch.Tensor, zero_point: int) -> torch.Tensor:
        """The int32 accumulator (bias included) for uint8 input codes ``q`` with ``zero_point``."""
        if self.relu_in:
            q = relu(q, zero_point)
        if self.kind == "pointwise":
            return gemm_accumulate(q, zero_point, self.weight, self.bias, stride=self.stride)
        return conv_accumulate(q, zero_point, self.weight, self.bias, stride=self.stride, dilation=self.dilation,
                               pads=self.pads(*q.shape[-2:]), groups=self.groups)

    def epilogue(self, acc: torch.Tensor, add: QTensor | None = None) -> torch.Tensor:
        """int32 accumulator (+ residual) → uint8 output codes, the ReLU in the clamp."""
        residual = None if add is None else Residual(add.q, add.zero_point, self.residual_multiplier)
        return requantize(acc, self.multiplier, self.output_params.zero_point, relu=self.relu_out, residual=residual,
                          qmax=self.code_max)

    @property
    def output_params(self) -> QParams:
        return _params(self, "output")

    def forward(self, x: QTensor, add: QTensor | None = None) -> QTensor:
        if self._pending is not None:
            self._quantize(x.params, None if add is None else add.params)
        if (add is not None) != self.adds_residual or x.zero_point != int(self.input_zero_point.item()):
            raise RuntimeError(f"{self.name}: its input is not the one it was quantised for")
        return QTensor(self.epilogue(self.accumulate(x.q, x.zero_point), add), *self.output_params)

    def extra_repr(self) -> str:
        flags = [f for f, on in (("relu_in", self.relu_in), ("relu_out", self.relu_out),
                                 ("residual", self.adds_residual), ("tf_same", self.tf_same)) if on]
        return ", ".join([self.name, self.kind, f"{tuple(self.weight.shape)}", f"s={self.stride}", *flags])


class QMaxPool(nn.Module):
    """Max-pool on uint8 codes: same scale and zero point in and out."""

    def __init__(self, pool: nn.MaxPool2d, pad: TFSamePad2d | None) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = int(pool.kernel_size), int(pool.stride), int(pool.padding)
        self.tf_same = pad is not None

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        if not self.tf_same:
            return 0, 0, 0, 0
        return (*tf_same_padding(height, self.kernel, self.stride), *tf_same_padding(width, self.kernel, self.stride))

    def forward(self, x: QTensor) -> QTensor:
        return QTensor(max_pool(x.q, self.kernel, self.stride, self.padding, self.pads(*x.q.shape[-2:])),
                       x.scale, x.zero_point)


class QReLU(nn.Module):
    """A ReLU no conv could take: ``max(q, z)`` on codes."""

    def forward(self, x: QTensor) -> QTensor:
        return QTensor(relu(x.q, x.zero_point), x.scale, x.zero_point)


def convert_steps(steps: Iterable[nn.Module], names: Iterator[str], adder: nn.Module | None) -> list[nn.Module]:
    """The integer steps of a chain of fused float steps; ``adder`` is the conv that adds the residual."""
    out: list[nn.Module] = []
    pool_pad: TFSamePad2d | None = None
    for step in steps:
        if isinstance(step, FusedConv):
            out.append(QConv(next(names), step, adds_residual=step is adder))
        elif isinstance(step, TFSamePad2d) and step.value == float("-inf"):
            pool_pad = step
        elif isinstance(step, nn.MaxPool2d) and isinstance(step.kernel_size, int):
            out.append(QMaxPool(step, pool_pad))
            pool_pad = None
        elif isinstance(step, nn.ReLU):
            out.append(QReLU())
        else:
            raise ConfigError(f"int8 quantisation has no integer step for {type(step).__name__}: it covers "
                              "convs, ReLUs, max-pools and residual adds")
    return out


class QBlock(nn.Module):
    """One residual module, its add in the epilogue of the conv that produces the sum."""

    def __init__(self, block: FusedBlock, names: Iterator[str]) -> None:
        super().__init__()
        if len(block.pre):
            raise ConfigError("int8 quantisation covers the paper's and the aligned Xceptions; a pre-activation "
                              "module's BatchNorm cannot fold into a conv")
        adder = block.shortcut if block.shortcut is not None else block.main[-1] if block.identity else None
        self.main = nn.ModuleList(convert_steps(block.main, names, adder))
        self.shortcut = QConv(next(names), block.shortcut, True) if block.shortcut is not None else None
        self.identity, self.act = block.identity, block.act
        if self.identity and not isinstance(self.main[-1], QConv):
            raise ConfigError("int8 quantisation adds a residual in a conv's epilogue; this module ends in "
                              f"{type(self.main[-1]).__name__}")

    def forward(self, x: QTensor) -> QTensor:
        h = x
        for step in self.main[:-1]:
            h = step(h)
        last = self.main[-1]
        if self.shortcut is not None:
            out = self.shortcut(x, add=last(h))
        elif self.identity:
            out = last(h, add=x)
        else:
            out = last(h)
        return QTensor(relu(out.q, out.zero_point), out.scale, out.zero_point) if self.act else out


class QHead(nn.Module):
    """Global pool (average: int32 sums requantised; max: on codes), then the classifier as an int8 GEMM whose
    epilogue dequantises: ``logits[c] = f32(acc[c])·multiplier[c]``, ``multiplier = f32(s_pool·s_w[c])``."""

    def __init__(self, head: ClassifierHead) -> None:
        super().__init__()
        fc = head.fc
        if not isinstance(fc, nn.Linear):
            raise ConfigError("int8 quantisation needs the classifier: the model has none (num_classes=0)")
        self.name, self.pool_type = HEAD, head.pool_type
        self.register_buffer("weight", torch.zeros(fc.weight.shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(fc.out_features))
        self.register_buffer("bias", torch.zeros(fc.out_features, dtype=torch.int32))
        self.register_buffer("multiplier", torch.zeros(fc.out_features))
        _register_params(self, "input", *(["pool"] if self.pool_type == "avg" else []))
        self.code_max = QMAX
        self._pending: tuple[nn.Linear, QParams | None] | None = None

    def prepare(self, fc: nn.Linear, pool: QParams | None, weight_bits: int = 8) -> None:
        self._pending = (fc, pool)
        self._weight_bits = weight_bits

    def _quantize(self, x: QParams) -> None:
        assert self._pending is not None
        fc, pool = self._pending
        _set_params(self, "input", x)
        if pool is not None:
            _set_params(self, "pool", pool)
        pooled = pool if pool is not None else x
        self.weight, self.weight_scale = quantize_weight(fc.weight, self._weight_bits)
        self.bias = quantize_bias(fc.bias, pooled.scale, self.weight_scale)
        check_accumulator(self.weight, self.bias, self.name)
        self.multiplier = (pooled.scale * self.weight_scale.double()).float()
        self._pending = None

    @property
    def pool_params(self) -> QParams:
        """The pooled codes' scale and zero point: the pool's own (average) or its input's (max)."""
        return _params(self, "pool" if self.pool_type == "avg" else "input")

    def pooled(self, x: QTensor) -> QTensor:
        """(N, C, 1, 1) uint8 codes of the global pool."""
        if self.pool_type == "max":
            return QTensor(x.q.amax((2, 3), keepdim=True), x.scale, x.zero_point)
        out = _params(self, "pool")
        pixels = x.q.shape[-2] * x.q.shape[-1]
        acc = global_sum(x.q, x.zero_point)
        q = requantize(acc, pool_multiplier(x.scale, pixels, out.scale), out.zero_point, qmax=self.code_max)
        return QTensor(q[:, :, None, None], *out)

    def forward(self, x: QTensor) -> torch.Tensor:
        if self._pending is not None:
            self._quantize(x.params)
        pooled = self.pooled(x)
        acc = gemm_accumulate(pooled.q, pooled.zero_point, self.weight, self.bias).flatten(1)
        return acc.to(torch.float32) * self.multiplier


class QuantizedXception(nn.Module):
    """An int8 Xception: ``model(images)`` takes the float batch the float model takes and returns float32
    logits, computed in the integer arithmetic of :mod:`.scheme` in between. Build it with
    :func:`xception.quantize` or read it with :func:`~xception.quantize.load_quantized`."""

    def __init__(self, program: FusedXception, names: list[str]) -> None:
        super().__init__()
        self.config = program.config
        it = iter(names)
        self.stem = nn.ModuleList(convert_steps(program.stem, it, None))
        self.blocks = nn.ModuleList(QBlock(block, it) for block in program.blocks)
        self.head = QHead(program.head)
        _register_params(self, "input")
        # What the file says the model is; set by quantize() and the file reader.
        self.model_name: str = program.config.arch
        self.class_names: list[str] | None = None
        self.preprocessing = None
        self.info: dict[str, object] = {}  # calibration and measured agreement
        self.activation_bits = 8

    @property
    def activation_bits(self) -> int:
        """8: activation codes 0 … 255; 7: 0 … 127 (see :mod:`.scheme`)."""
        return self._activation_bits

    @activation_bits.setter
    def activation_bits(self, bits: int) -> None:
        top = code_max(bits)
        self._activation_bits = bits
        for module in [*self.convs(), self.head]:
            module.code_max = top

    @property
    def code_max(self) -> int:
        return code_max(self.activation_bits)

    @classmethod
    def build(cls, program: FusedXception, names: list[str], ranges: Mapping[str, tuple[float, float]],
              weight_bits: int = 8, activation_bits: int = 8) -> QuantizedXception:
        """Quantise ``program`` with activation ranges (lo, hi) per point: ``"input"``, each conv's output (by
        layer name) and, with average pooling, ``"head.pool"``; weights to ``weight_bits`` (8 or 7), activations
        to ``activation_bits`` (8 or 7)."""
        model = cls(program, names)
        model.activation_bits = activation_bits
        top = model.code_max
        _set_params(model, "input", qparams_for_range(*ranges[INPUT], top))
        for qconv, conv in zip(model.convs(), program.convs(), strict=True):
            qconv.prepare(conv, qparams_for_range(*ranges[qconv.name], top), weight_bits)
        pool = qparams_for_range(*ranges["head.pool"], top) if model.head.pool_type == "avg" else None
        model.head.prepare(program.head.fc, pool, weight_bits)
        size = model.config.min_input_size
        with torch.no_grad():  # one pass in data-flow order: each step quantises itself from what reaches it
            model(torch.zeros(1, model.config.in_chans, size, size))
        return model.eval()

    def convs(self) -> list[QConv]:
        return [m for m in self.modules() if isinstance(m, QConv)]

    @property
    def input_params(self) -> QParams:
        return _params(self, "input")

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def check_input(self, x: torch.Tensor) -> None:
        Xception.check_input(self, x)  # the checks read only .config

    def quantize_input(self, x: torch.Tensor) -> QTensor:
        return QTensor(quantize_input(x, self.input_params, self.code_max), *self.input_params)

    def forward_features(self, x: QTensor) -> QTensor:
        for step in self.stem:
            x = step(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        with torch.no_grad():
            return self.head(self.forward_features(self.quantize_input(x.detach().cpu())))

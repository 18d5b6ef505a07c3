"""The Xception family as data: one table of module specs per architecture, and the options users set.

The paper's model (Chollet 2017, Fig. 5) and the aligned Xception of DeepLabv3+ (timm's ``xception41``,
``65``, ``71`` and the pre-activation ``41p``, ``65p``) differ only in these tables and in a few
family-wide rules (:class:`Family`). One generic builder turns any of them into a network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

from ..errors import ConfigError
from ..layers import (
    ACTIVATIONS,
    CONV_KINDS,
    ORDERS,
    PADDING_RULES,
    Activation,
    ConvKind,
    PaddingRule,
    SeparableOrder,
)

Family = Literal["paper", "aligned", "preact"]
"""How a module is wired.

* ``paper``: [ReLU] → SepConv → BN, repeated; a strided module ends in a 3×3/2 max-pool; the shortcut
  is 1×1 conv → BN.
* ``aligned``: as paper, but each SepConv carries a BN (and, in modules that do not start with a ReLU, a
  ReLU) between its depthwise and pointwise steps, and the last SepConv carries the stride instead of a
  max-pool.
* ``preact``: BN → ReLU before the module splits into shortcut and main branch, BN → ReLU between the
  SepConvs, no BN after them; the shortcut is a bare 1×1 conv.
"""

Stem = Literal["standard", "small"]
GlobalPool = Literal["avg", "max"]


@dataclass(frozen=True)
class ModuleSpec:
    """One residual module: the output channels of its separable convs and how it joins its input."""

    channels: tuple[int, ...]
    stride: int = 1
    start_with_relu: bool = True  # False where the input has just been through a ReLU (paper module 2)
    end_with_relu: bool = False  # the last module ends the network with a ReLU
    skip: bool = True  # residual connection; a 1×1 conv shortcut when the shape changes


@dataclass(frozen=True)
class Architecture:
    """A network's fixed layout: stem, entry flow, middle flow (one module repeated), exit flow."""

    family: Family
    entry: tuple[ModuleSpec, ...]
    middle: ModuleSpec
    middle_repeats: int
    exit: tuple[ModuleSpec, ...]
    stem_channels: tuple[int, int] = (32, 64)
    stem_padding: Literal["valid", "same"] = "valid"


def _m(channels: int | tuple[int, ...], stride: int = 1, *, repeat: int = 2, **kw: Any) -> ModuleSpec:
    chans = channels if isinstance(channels, tuple) else (channels,) * repeat
    return ModuleSpec(chans, stride, **kw)


# Chollet 2017, Fig. 5 (= keras.applications.Xception). Modules are numbered as in Keras: block1 is the
# stem (two plain convs), block2–4 the rest of the entry flow, block5–12 the middle flow, block13–14 exit.
PAPER = Architecture(
    family="paper",
    entry=(_m(128, 2, start_with_relu=False), _m(256, 2), _m(728, 2)),
    middle=_m(728, repeat=3),
    middle_repeats=8,
    exit=(_m((728, 1024), 2), _m((1536, 2048), start_with_relu=False, end_with_relu=True, skip=False)),
)

# Aligned Xception (Chen et al. 2018, DeepLabv3+), as timm builds it: three SepConvs per module.
_ALIGNED_EXIT = (
    _m((728, 1024, 1024), 2),
    _m((1536, 1536, 2048), start_with_relu=False, end_with_relu=True, skip=False),
)
_ENTRY_41 = (_m(128, 2, repeat=3), _m(256, 2, repeat=3), _m(728, 2, repeat=3))
_ENTRY_71 = (
    _m(128, 2, repeat=3), _m(256, repeat=3), _m(256, 2, repeat=3), _m(728, repeat=3), _m(728, 2, repeat=3),
)
_MIDDLE_ALIGNED = _m(728, repeat=3)


def _aligned(family: Family, entry: tuple[ModuleSpec, ...], repeats: int) -> Architecture:
    return Architecture(family, entry, _MIDDLE_ALIGNED, repeats, _ALIGNED_EXIT, stem_padding="same")


ARCHITECTURES: dict[str, Architecture] = {
    "xception": PAPER,
    "xception41": _aligned("aligned", _ENTRY_41, 8),
    "xception65": _aligned("aligned", _ENTRY_41, 16),
    "xception71": _aligned("aligned", _ENTRY_71, 16),
    "xception41p": _aligned("preact", _ENTRY_41, 8),
    "xception65p": _aligned("preact", _ENTRY_41, 16),
}


# Fields of XceptionConfig by their annotation: the type their values must have, and how to say so.
_TYPED_FIELDS: dict[str, tuple[type, str]] = {
    "int": (Integral, "an integer"), "int | None": (Integral, "an integer"), "float": (Real, "a number"),
    "bool": (bool, "true or false"),
}


@dataclass(frozen=True)
class XceptionConfig:
    """Everything that defines a network: its architecture and the options a user may change.

    Attributes:
        arch: the table name in :data:`ARCHITECTURES`.
        num_classes: classifier outputs; 0 removes the classifier (``forward`` returns pooled features).
        in_chans: input channels (3 for RGB, 1 for grayscale).
        drop_rate: dropout before the classifier (the paper trained with 0.5).
        middle_repeats: modules in the middle flow (None: the table's, 8 in the paper).
        width: channel multiplier applied to every layer (rounded to a multiple of 8).
        residual: residual connections on (the paper) or off (its Fig. 9 ablation).
        activation: between the depthwise and pointwise step: None (the paper), "relu" or "elu" (Fig. 10).
        separable_order: "depthwise_first", or "pointwise_first" as in an "extreme" Inception module.
        conv: what every separable conv of the table is: "separable" (the paper) or "standard", a plain
            k×k conv from M to N channels with the same kernel, stride, dilation and padding rule (no bias,
            the BN after it stays): the network of the paper's §3 cost comparison, ~8× the multiply-adds.
            Its modules keep their layer names (``sepconv1`` holds the standard conv); ``activation`` and
            ``separable_order`` do not apply to it.
        global_pool: "avg" (the paper) or "max".
        bn_eps, bn_momentum: BatchNorm settings (Keras: eps 1e-3; PyTorch's momentum convention).
        padding: "tf" (Keras 'same', asymmetric at stride 2) or "symmetric" (timm's ports).
        stem: "standard" (stride 2, needs ≥ 71 px for the paper model) or "small" (stride 1, for 16–64 px
            images such as Fashion-MNIST; same parameters, so ImageNet weights still load).
        output_stride: total downsampling; None keeps every stride (32 with the standard stem); a half or
            a quarter of that trades the last strides for dilation, as DeepLab does (16 or 8).
    """

    arch: str = "xception"
    num_classes: int = 1000
    in_chans: int = 3
    drop_rate: float = 0.0
    middle_repeats: int | None = None
    width: float = 1.0
    residual: bool = True
    activation: Activation = None
    separable_order: SeparableOrder = "depthwise_first"
    conv: ConvKind = "separable"
    global_pool: GlobalPool = "avg"
    bn_eps: float = 1e-3
    bn_momentum: float = 0.1
    padding: PaddingRule = "tf"
    stem: Stem = "standard"
    output_stride: int | None = None

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES[self.arch]

    @property
    def max_stride(self) -> int:
        """The downsampling of the network without dilation."""
        arch = self.architecture
        stride = 2 if self.stem == "standard" else 1
        for spec in (*arch.entry, arch.middle, *arch.exit):
            stride *= spec.stride
        return stride

    @property
    def effective_output_stride(self) -> int:
        return self.output_stride or self.max_stride

    @property
    def allowed_output_strides(self) -> tuple[int, ...]:
        top = self.max_stride
        return (top // 4, top // 2, top)

    @property
    def min_input_size(self) -> int:
        """Smallest image side accepted: Keras's 71 px for the valid-padded stem, else 1 px at the end."""
        if self.stem == "small":
            return 16
        return 71 if self.architecture.stem_padding == "valid" else 32

    def validate(self) -> XceptionConfig:
        """Raise :class:`ConfigError` naming what is allowed, before any layer is built."""
        self._check_types()
        checks: list[tuple[bool, str]] = [
            (self.arch in ARCHITECTURES, f"unknown architecture {self.arch!r}; known: {sorted(ARCHITECTURES)}"),
            (self.num_classes >= 0, f"num_classes must be ≥ 0 (0 = no classifier), got {self.num_classes}"),
            (self.in_chans >= 1, f"in_chans must be ≥ 1, got {self.in_chans}"),
            (0.0 <= self.drop_rate < 1.0, f"drop_rate must be in [0, 1), got {self.drop_rate}"),
            (self.middle_repeats is None or self.middle_repeats >= 0,
             f"middle_repeats must be ≥ 0, got {self.middle_repeats}"),
            (0.0 < self.width <= 8.0, f"width must be in (0, 8], got {self.width}"),
            (self.activation in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}, got {self.activation!r}"),
            (self.separable_order in ORDERS, f"separable_order must be one of {ORDERS}"),
            (self.conv in CONV_KINDS, f"conv must be one of {CONV_KINDS}, got {self.conv!r}"),
            (self.conv != "standard" or (self.activation is None and self.separable_order == "depthwise_first"),
             "conv='standard' has no depthwise and pointwise steps to put an activation between or to reorder; "
             "leave activation=None and separable_order='depthwise_first'"),
            (self.global_pool in ("avg", "max"), f"global_pool must be 'avg' or 'max', got {self.global_pool!r}"),
            (self.bn_eps > 0, f"bn_eps must be > 0, got {self.bn_eps}"),
            (0.0 <= self.bn_momentum <= 1.0, f"bn_momentum must be in [0, 1], got {self.bn_momentum}"),
            (self.padding in PADDING_RULES, f"padding must be one of {PADDING_RULES}, got {self.padding!r}"),
            (self.stem in ("standard", "small"), f"stem must be 'standard' or 'small', got {self.stem!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.output_stride is not None and self.output_stride not in self.allowed_output_strides:
            raise ConfigError(
                f"output_stride={self.output_stride} is not possible for {self.arch} with the {self.stem} "
                f"stem; allowed: {', '.join(map(str, self.allowed_output_strides))}"
            )
        return self

    def _check_types(self) -> None:
        # Options often come from text (command line, TOML, JSON): a string where a number or a switch
        # belongs must fail with its name, not as a TypeError inside a comparison, nor pass as truthy.
        for f in dataclasses.fields(self):
            value, (kind, what) = getattr(self, f.name), _TYPED_FIELDS.get(str(f.type), (object, ""))
            if value is None and str(f.type).endswith("| None"):
                continue
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                raise ConfigError(f"{f.name} must be {what}, got {value!r}")

    def replace(self, **changes: Any) -> XceptionConfig:
        return XceptionConfig.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> XceptionConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ConfigError(f"unknown model option(s) {sorted(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**data).validate()

"""One generic Xception network, built from a table in :mod:`xception.models.config`.

Module names follow Keras and the paper's Figure 5, so every layer can be found from either::

    entry_flow.block1.conv1, .conv1_bn, .conv2, ...        Keras block1_conv1, block1_conv1_bn, ...
    entry_flow.block2.main.sepconv1.{depthwise,pointwise}  Keras block2_sepconv1
    entry_flow.block2.main.sepconv1_bn                     Keras block2_sepconv1_bn
    entry_flow.block2.shortcut.{conv,bn}                   Keras's unnamed residual conv2d / batchnorm
    middle_flow.block5 … block12, exit_flow.block13, block14
    head.fc                                                Keras predictions
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError, DataError, model_option
from ..layers import BatchNorm2d, SeparableConv2d, StandardConv2d, StridedPointwiseConv2d, make_divisible, same_padding
from .config import Family, ModuleSpec, XceptionConfig

if TYPE_CHECKING:  # the model never imports the weights package: the loader attaches this value
    from ..preprocessing import Preprocessing
    from ..weights.meta import WeightsMeta


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map of ``features_only`` models: its channels, its stride and the block it leaves."""

    num_chs: int
    reduction: int
    module: str


def _shortcut(spec: ModuleSpec, config: XceptionConfig, in_chs: int, out_chs: int, stride: int,
              norm: Callable[[int], nn.Module] | None) -> nn.Module | None:
    """A module's shortcut: none, the identity, or a strided 1×1 conv (then ``norm``, where the family has one).

    Whether it needs a conv depends on the nominal stride, so that a dilated network keeps exactly the
    parameters (and the weights) of the undilated one.
    """
    if not (spec.skip and config.residual):
        return None
    if in_chs == out_chs and spec.stride == 1:
        return nn.Identity()
    conv = StridedPointwiseConv2d(in_chs, out_chs, stride)
    return nn.Sequential(OrderedDict(conv=conv) if norm is None else OrderedDict(conv=conv, bn=norm(out_chs)))


class XceptionModule(nn.Module):
    """A residual module: a main branch of separable convs plus a shortcut (see :data:`Family`)."""

    def __init__(
        self,
        spec: ModuleSpec,
        in_chs: int,
        out_chs: tuple[int, ...],
        family: Family,
        stride: int,
        dilation: int,
        config: XceptionConfig,
    ) -> None:
        super().__init__()
        norm = partial(BatchNorm2d, eps=config.bn_eps, momentum=config.bn_momentum)
        preact = family == "preact"
        self.in_channels, self.out_channels = in_chs, out_chs[-1]
        self.pre = nn.Sequential(OrderedDict(bn=norm(in_chs), act=nn.ReLU(inplace=True))) if preact else None

        # The aligned family puts BN (and, in post-activation modules, a ReLU) inside each SepConv.
        between = config.activation
        if family == "aligned" and not spec.start_with_relu:
            between = "relu"
        main: OrderedDict[str, nn.Module] = OrderedDict()
        chans = in_chs
        for i, out in enumerate(out_chs, start=1):
            if preact and i > 1:
                main[f"sepconv{i}_bn"] = norm(chans)
            if i > 1 or (spec.start_with_relu and not preact):
                # The first ReLU must not overwrite the input: the shortcut still reads it.
                main[f"sepconv{i}_act"] = nn.ReLU(inplace=i > 1)
            last = i == len(out_chs)
            conv_stride = stride if last and family != "paper" else 1
            # conv="standard": the same position holds a plain k×k conv (whatever sat between the steps goes).
            main[f"sepconv{i}"] = StandardConv2d(
                chans, out, 3, conv_stride, dilation, padding=config.padding,
            ) if config.conv == "standard" else SeparableConv2d(
                chans, out, 3, conv_stride, dilation,
                padding=config.padding, activation=between, norm_between=family == "aligned",
                order=config.separable_order, bn_eps=config.bn_eps, bn_momentum=config.bn_momentum,
            )
            if not preact:
                main[f"sepconv{i}_bn"] = norm(out)
            chans = out
        if family == "paper" and spec.stride > 1:
            # In the paper the module downsamples with a 3×3 max-pool; at stride 1 (dilated, for a lower
            # output stride) the pool stays, without the downsampling.
            pad, static = same_padding(3, stride, 1, config.padding, value=float("-inf"))
            if pad is not None:
                main["pool_pad"] = pad
            main["pool"] = nn.MaxPool2d(3, stride, static)
        self.main = nn.Sequential(main)

        self.shortcut = _shortcut(spec, config, in_chs, out_chs[-1], stride, None if preact else norm)
        self.act = nn.ReLU(inplace=True) if spec.end_with_relu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        out = self.main(x)
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        if self.act is not None:
            out = self.act(out)
        return out


class ClassifierHead(nn.Module):
    """Global pooling → dropout → fully connected layer (an identity when ``num_classes`` is 0)."""

    def __init__(self, in_features: int, num_classes: int, pool: str = "avg", drop_rate: float = 0.0) -> None:
        super().__init__()
        self.in_features = in_features
        self.drop = nn.Dropout(drop_rate)
        self.reset(num_classes, pool)

    def reset(self, num_classes: int, pool: str | None = None) -> None:
        if pool is not None:
            if pool not in ("avg", "max"):
                raise ConfigError(f"global_pool must be 'avg' or 'max', got {pool!r}")
            self.pool_type = pool
        self.num_classes = num_classes
        self.fc: nn.Module = nn.Linear(self.in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.mean((2, 3)) if self.pool_type == "avg" else x.amax((2, 3))
        pooled = self.drop(pooled)
        return pooled if pre_logits else self.fc(pooled)


class Xception(nn.Module):
    """The Xception family: the paper's model and the aligned variants, from one config.

    ``Xception()`` is the paper's ImageNet model (22,855,952 trainable parameters). Options are the fields
    of :class:`XceptionConfig`, e.g. ``Xception(num_classes=10, in_chans=1, stem="small", width=0.5)``.
    Build named variants with :func:`xception.create_model`.
    """

    def __init__(self, config: XceptionConfig | None = None, **options: Any) -> None:
        super().__init__()
        config = (config or XceptionConfig()).replace(**options)
        self.config = config
        arch = config.architecture
        self.features_only = False
        self.out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)
        self.grad_checkpointing = False
        # What the loaded weights mean (xception.weights.WeightsMeta), set once by the weights loader;
        # None for a fresh model.
        self.weights_meta: WeightsMeta | None = None

        def chans(c: int) -> int:
            return c if config.width == 1.0 else make_divisible(c * config.width)

        stem_out = chans(arch.stem_channels[1])
        flows: dict[str, OrderedDict[str, nn.Module]] = {
            "entry_flow": OrderedDict(block1=self._stem(config, chans(arch.stem_channels[0]), stem_out)),
            "middle_flow": OrderedDict(),
            "exit_flow": OrderedDict(),
        }
        repeats = arch.middle_repeats if config.middle_repeats is None else config.middle_repeats
        layout = [("entry_flow", s) for s in arch.entry] + [("middle_flow", arch.middle)] * repeats
        layout += [("exit_flow", s) for s in arch.exit]

        stride = 2 if config.stem == "standard" else 1
        dilation, in_chs, number = 1, stem_out, 2
        self.feature_info: list[FeatureInfo] = []
        self._tap_blocks: list[int] = []  # index (in self.blocks()) of the block each feature leaves
        for flow, spec in layout:
            block_stride, next_dilation = spec.stride, dilation
            if spec.stride > 1:
                # A feature map is taken just before each downsampling module, at the stride reached.
                self.feature_info.append(FeatureInfo(in_chs, stride, self._block_name(flows, number - 1)))
                self._tap_blocks.append(number - 2)
                if stride * spec.stride > config.effective_output_stride:
                    block_stride, next_dilation = 1, dilation * spec.stride
                else:
                    stride *= spec.stride
            out = tuple(chans(c) for c in spec.channels)
            flows[flow][f"block{number}"] = XceptionModule(
                spec, in_chs, out, arch.family, block_stride, dilation, config
            )
            dilation, in_chs, number = next_dilation, out[-1], number + 1
        self.feature_info.append(FeatureInfo(in_chs, stride, self._block_name(flows, number - 1)))
        self._tap_blocks.append(number - 2)

        self.entry_flow = nn.Sequential(flows["entry_flow"])
        self.middle_flow = nn.Sequential(flows["middle_flow"])
        self.exit_flow = nn.Sequential(flows["exit_flow"])
        self.num_features = in_chs
        self.head = ClassifierHead(in_chs, config.num_classes, config.global_pool, config.drop_rate)
        self._init_weights()

    @staticmethod
    def _block_name(flows: dict[str, OrderedDict[str, nn.Module]], number: int) -> str:
        return next(f"{flow}.block{number}" for flow, blocks in flows.items() if f"block{number}" in blocks)

    @staticmethod
    def _stem(config: XceptionConfig, c1: int, c2: int) -> nn.Sequential:
        """Block 1: two plain 3×3 convs. 'valid' in the paper (299 → 149 → 147); 'same' when aligned."""
        norm = partial(BatchNorm2d, eps=config.bn_eps, momentum=config.bn_momentum)
        small = config.stem == "small"
        same = small or config.architecture.stem_padding == "same"
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, (cin, cout, stride) in enumerate(((config.in_chans, c1, 1 if small else 2), (c1, c2, 1)), 1):
            pad, static = same_padding(3, stride, 1, config.padding) if same else (None, 0)
            if pad is not None:
                layers[f"conv{i}_pad"] = pad
            layers[f"conv{i}"] = nn.Conv2d(cin, cout, 3, stride, static, bias=False)
            if i == 2 and config.architecture.family == "preact":
                break  # the first module's pre-activation normalises this conv's output
            layers[f"conv{i}_bn"] = norm(cout)
            layers[f"conv{i}_act"] = nn.ReLU(inplace=True)
        return nn.Sequential(layers)

    def _init_weights(self) -> None:
        if next(self.parameters()).is_meta:
            return  # built for its shapes only (weights are about to be loaded): nothing to initialise
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- the model surface ---------------------------------------------------------------------------

    def blocks(self) -> Iterator[tuple[str, nn.Module]]:
        """Every block in order, with its full name: block1 (the stem) to the last exit-flow module."""
        for flow in ("entry_flow", "middle_flow", "exit_flow"):
            for name, block in getattr(self, flow).named_children():
                yield f"{flow}.{name}", block

    def check_input(self, x: torch.Tensor) -> None:
        """Raise DataError (a ValueError), before any computation, if ``x`` is not a batch this network accepts."""
        cfg = self.config
        if x.dim() != 4:
            raise DataError(f"expected a batch of images shaped (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != cfg.in_chans:
            raise DataError(
                f"input has {x.shape[1]} channels but the model expects {cfg.in_chans}; "
                f"build it with {model_option('in_chans', x.shape[1])} or convert the images"
            )
        h, w = x.shape[-2:]
        if min(h, w) < cfg.min_input_size:
            hint = f"; use {model_option('stem', 'small')} for images down to 16 px" if cfg.stem == "standard" else ""
            raise DataError(
                f"input is {h}×{w} but the {cfg.stem} stem of {cfg.arch} needs at least "
                f"{cfg.min_input_size}×{cfg.min_input_size}{hint}"
            )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass: less memory, ~30 % more compute."""
        self.grad_checkpointing = enable

    def _run(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, num_features, H/32, W/32) before pooling."""
        self.check_input(x)
        for _, block in self.blocks():
            x = self._run(block, x)
        return x

    def forward_intermediates(
        self, x: torch.Tensor, indices: tuple[int, ...] | None = None
    ) -> list[torch.Tensor]:
        """Feature maps at the strides in ``feature_info`` (2, 4, 8, 16, 32 by default)."""
        self.check_input(x)
        indices = self.out_indices if indices is None else indices
        wanted = {self._tap_blocks[i] for i in indices}
        taps: dict[int, torch.Tensor] = {}
        for i, (_, block) in enumerate(self.blocks()):
            x = self._run(block, x)
            if i in wanted:
                taps[i] = x
                if len(taps) == len(wanted):
                    break
        return [taps[self._tap_blocks[i]] for i in indices]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool → dropout → classifier; ``pre_logits=True`` stops before the classifier."""
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    @property
    def num_classes(self) -> int:
        """Outputs of the classifier (0: none, the model returns pooled features), as timm models say it."""
        return self.config.num_classes

    @property
    def preprocessing(self) -> Preprocessing | None:
        """What the loaded weights expect of their input (None for a fresh model or weights without it)."""
        return self.weights_meta.preprocessing if self.weights_meta is not None else None

    @property
    def class_names(self) -> list[str] | None:
        """What the classifier's outputs mean, when the weights say so (a copy: the weights' value is frozen)."""
        names = self.weights_meta.class_names if self.weights_meta is not None else None
        return list(names) if names is not None else None

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier with a freshly initialised one (0 removes it)."""
        if num_classes < 0:
            raise ConfigError(f"num_classes must be ≥ 0, got {num_classes}")
        self.head.reset(num_classes, global_pool)
        self.config = self.config.replace(num_classes=num_classes, global_pool=self.head.pool_type)
        if self.weights_meta is not None:
            self.weights_meta = self.weights_meta.without_head(self.config)

    def as_features(self, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4)) -> Xception:
        """Turn this model into a backbone whose forward returns feature maps (timm's features_only)."""
        bad = [i for i in out_indices if not 0 <= i < len(self._tap_blocks)]
        if bad or not out_indices:
            raise ConfigError(f"out_indices must be a non-empty subset of 0..{len(self._tap_blocks) - 1}")
        self.reset_classifier(0)
        self.features_only = True
        self.feature_info = [self.feature_info[i] for i in out_indices]
        self._tap_blocks = [self._tap_blocks[i] for i in out_indices]
        self.out_indices = tuple(range(len(out_indices)))
        return self

    def extra_repr(self) -> str:
        return f"arch={self.config.arch}, num_classes={self.config.num_classes}"


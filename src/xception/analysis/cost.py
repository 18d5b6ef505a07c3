"""Parameter and multiply-add accounting, and the comparison Xception is about.

For a D×D output, a k×k kernel, M input and N output channels (Chollet 2017; Howard et al. 2017, §3.1):

    standard conv   D²·k²·M·N  multiply-adds,  k²·M·N  parameters
    separable conv  D²·k²·M + D²·M·N,          k²·M + M·N

so a separable conv costs ``1/N + 1/k²`` of the standard one. :func:`separable_vs_standard` is the one
place this formula lives; :func:`model_cost` measures every layer of a real network with forward hooks
and sets each separable conv beside the standard conv it replaces. A network built with
``conv="standard"`` (a :class:`~xception.layers.StandardConv2d` in each of those places) is measured the
same way, its comparison turned around: each standard conv beside the separable conv it stands for.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from ..layers import SeparableConv2d, StandardConv2d
from ..models import Xception
from ..tables import format_table


@dataclass(frozen=True)
class Cost:
    macs: int
    params: int

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.macs + other.macs, self.params + other.params)


def separable_vs_standard(
    k: int, m: int, n: int, h: int, w: int | None = None, depth_multiplier: int = 1, *,
    order: str = "depthwise_first", input_hw: tuple[int, int] | None = None,
) -> tuple[Cost, Cost]:
    """(separable, standard) cost of a k×k conv from ``m`` to ``n`` channels with an h×w output.

    ``order="pointwise_first"`` (an "extreme" Inception module): the 1×1 step runs first, at the input's
    resolution (``input_hw``, default the output's), and the k×k step on the ``n`` channels it makes:
    ``H·W·M·N + D²·k²·N`` multiply-adds, ``M·N + k²·N`` parameters.
    """
    d2 = h * (h if w is None else w)
    standard = Cost(d2 * k * k * m * n, k * k * m * n)
    if order == "pointwise_first":
        in2 = d2 if input_hw is None else input_hw[0] * input_hw[1]
        return Cost(in2 * m * n + d2 * k * k * n, m * n + k * k * n), standard
    mid = m * depth_multiplier
    separable = Cost(d2 * k * k * mid + d2 * mid * n, k * k * mid + mid * n)
    return separable, standard


@dataclass(frozen=True)
class LayerRow:
    """One layer with weights (or a pool): what it outputs, holds and costs."""

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class SeparableRow:
    """A separable conv of the network beside the standard k×k conv it replaces (in a ``conv="standard"``
    network: the standard conv beside the separable conv it stands for; both costs are the formula's)."""

    name: str
    block: str
    flow: str
    kernel: int
    in_channels: int
    out_channels: int
    output_hw: tuple[int, int]
    separable: Cost
    standard: Cost

    @property
    def ratio(self) -> float:
        return self.separable.macs / self.standard.macs


@dataclass
class CostReport:
    """Everything ``xception summary`` shows: per layer, per separable conv, per block and flow, totals."""

    model: str
    input_size: tuple[int, int]
    layers: list[LayerRow]
    separable: list[SeparableRow]
    trainable_params: int
    total_params: int  # including BN running statistics, as Keras counts them
    blocks: dict[str, dict[str, Cost]] = field(default_factory=dict)
    flows: dict[str, dict[str, Cost]] = field(default_factory=dict)
    conv: str = "separable"  # what the network has where the paper has separable convs (XceptionConfig.conv)

    @property
    def macs(self) -> int:
        return sum(row.macs for row in self.layers)

    @property
    def flow_macs(self) -> dict[str, int]:
        """Multiply-adds of every layer, per flow (entry_flow, middle_flow, exit_flow, head)."""
        totals: dict[str, int] = defaultdict(int)
        for row in self.layers:
            totals[row.name.split(".")[0]] += row.macs
        return dict(totals)

    @property
    def separable_total(self) -> Cost:
        return sum((r.separable for r in self.separable), Cost(0, 0))

    @property
    def standard_total(self) -> Cost:
        return sum((r.standard for r in self.separable), Cost(0, 0))

    @property
    def standard_model_macs(self) -> int:
        """Multiply-adds of the same network with every separable conv replaced by a standard conv."""
        if self.conv == "standard":
            return self.macs
        return self.macs - self.separable_total.macs + self.standard_total.macs

    @property
    def separable_model_macs(self) -> int:
        """Multiply-adds of the same network with depthwise separable convs (the paper's)."""
        if self.conv == "separable":
            return self.macs
        return self.macs - self.standard_total.macs + self.separable_total.macs

    @property
    def standard_model_params(self) -> int:
        """Parameters (with BN statistics, as ``total_params``) of the all-standard-conv network."""
        if self.conv == "standard":
            return self.total_params
        return self.total_params - self.separable_total.params + self.standard_total.params

    @property
    def separable_model_params(self) -> int:
        """Parameters (with BN statistics, as ``total_params``) of the network with separable convs."""
        if self.conv == "separable":
            return self.total_params
        return self.total_params - self.standard_total.params + self.separable_total.params

    def format(self, layers: bool = True) -> str:
        """The text ``xception summary`` prints: the layer table (``layers=False`` leaves it out), the
        totals, separable against standard cost per module and per flow, and the all-standard network."""
        parts = []
        if layers:
            rows = [(r.name, r.kind, "×".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}")
                    for r in self.layers]
            parts.append(format_table(rows, ["layer", "type", "output", "params", "mult-adds"], right=(3, 4)))
        h, w = self.input_size
        parts.append(f"{self.model} at {h}×{w}: {self.trainable_params:,} trainable parameters "
                     f"({self.total_params:,} with BN statistics), {self.macs / 1e9:.2f} G multiply-adds per image")

        if not self.separable:
            parts.append("The model has no separable convs (nor standard convs in their place) to compare.")
            return "\n\n".join(parts)
        module_rows = []
        for block, cost in self.blocks.items():
            sep, std = cost["separable"], cost["standard"]
            module_rows.append((block, f"{std.macs / 1e6:,.1f}", f"{sep.macs / 1e6:,.1f}",
                                f"{sep.macs / std.macs:.3f}", f"{std.params:,}", f"{sep.params:,}"))
        headers = ["module", "standard MMACs", "separable MMACs", "ratio", "standard params", "separable params"]
        parts.append(format_table(module_rows, headers))

        flow_macs = self.flow_macs
        sep_t, std_t = self.separable_total, self.standard_total
        flows = [(flow, flow_macs.get(flow, 0), c["separable"], c["standard"]) for flow, c in self.flows.items()]
        flow_rows = [
            (flow, f"{macs / 1e9:.3f}", f"{std.macs / 1e9:.3f}", f"{sep.macs / 1e9:.3f}", f"{sep.macs / std.macs:.3f}")
            for flow, macs, sep, std in [*flows, ("all", self.macs, sep_t, std_t)]
        ]
        headers = ["flow", "all layers GMACs", "standard GMACs", "separable GMACs", "ratio"]
        parts.append(format_table(flow_rows, headers))

        if self.conv == "standard":
            separable = self.separable_model_macs
            parts.append(f"The model has standard convs in place of {len(self.separable)} separable ones "
                         f"(conv='standard'); with depthwise separable convs it would need {separable / 1e9:.1f} G "
                         f"multiply-adds ({self.macs / separable:.1f}× fewer) and "
                         f"{self.separable_model_params:,} parameters.")
        else:
            standard = self.standard_model_macs
            parts.append(f"With standard convs in place of the {len(self.separable)} separable ones the model would "
                         f"need {standard / 1e9:.1f} G multiply-adds ({standard / self.macs:.1f}× more) and "
                         f"{self.standard_model_params:,} parameters.")
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        def costs(table: dict[str, dict[str, Cost]]) -> dict[str, Any]:
            return {k: {kind: asdict(c) for kind, c in v.items()} for k, v in table.items()}

        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "macs": self.macs,
            "separable_macs": self.separable_total.macs,
            "standard_equivalent_macs": self.standard_total.macs,
            "separable_ratio": self.separable_total.macs / max(self.standard_total.macs, 1),
            "conv": self.conv,
            "standard_model_macs": self.standard_model_macs,
            "separable_model_macs": self.separable_model_macs,
            "standard_model_params": self.standard_model_params,
            "separable_model_params": self.separable_model_params,
            "layers": [{**asdict(r), "output_shape": list(r.output_shape)} for r in self.layers],
            "separable_convs": [
                {**asdict(r), "output_hw": list(r.output_hw), "ratio": r.ratio} for r in self.separable
            ],
            "flow_macs": self.flow_macs,
            "blocks": costs(self.blocks),
            "flows": costs(self.flows),
        }


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """Multiply-adds of one conv or linear layer for one image (BN folds into convs; pools add none)."""
    per_image = output.numel() // output.shape[0]
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


_COUNTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.MaxPool2d)


def model_cost(model: Xception, input_size: int | tuple[int, int] = 299, name: str | None = None) -> CostReport:
    """Measure ``model`` on one ``input_size`` image: per-layer table, separable comparison, totals."""
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    x = torch.zeros(1, model.config.in_chans, h, w)
    model.check_input(x)
    layers, separable = _trace(model, x)
    blocks: dict[str, dict[str, Cost]] = defaultdict(lambda: {"separable": Cost(0, 0), "standard": Cost(0, 0)})
    flows: dict[str, dict[str, Cost]] = defaultdict(lambda: {"separable": Cost(0, 0), "standard": Cost(0, 0)})
    for row in separable:
        for table, key in ((blocks, row.block), (flows, row.flow)):
            table[key]["separable"] += row.separable
            table[key]["standard"] += row.standard
    return CostReport(
        model=name or model.config.arch,
        input_size=(h, w),
        layers=layers,
        separable=separable,
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters())
        + sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked")),
        blocks=dict(blocks),
        flows=dict(flows),
        conv=model.config.conv,
    )


def _trace(model: Xception, x: torch.Tensor) -> tuple[list[LayerRow], list[SeparableRow]]:
    """One forward pass in eval mode, every counted layer and every separable conv recorded by a hook."""
    layers: list[LayerRow] = []
    separable: list[SeparableRow] = []
    block_of = {id(m): (block, block.split(".")[0]) for block, b in model.blocks() for m in b.modules()}
    block_of.update({id(m): ("head", "head") for m in model.head.modules()})

    def on_layer(name: str):
        def hook(module: nn.Module, _: Any, out: torch.Tensor) -> None:
            params = sum(p.numel() for p in module.parameters(recurse=False))
            layers.append(LayerRow(name, type(module).__name__, tuple(out.shape[1:]), params, layer_macs(module, out)))

        return hook

    def on_separable(name: str):
        def hook(module: SeparableConv2d | StandardConv2d, inputs: tuple[torch.Tensor], out: torch.Tensor) -> None:
            sep, std = separable_vs_standard(
                module.kernel_size, module.in_channels, module.out_channels, out.shape[-2], out.shape[-1],
                getattr(module, "depth_multiplier", 1), order=getattr(module, "order", "depthwise_first"),
                input_hw=(inputs[0].shape[-2], inputs[0].shape[-1]),
            )
            block, flow = block_of[id(module)]
            separable.append(SeparableRow(
                name, block, flow, module.kernel_size, module.in_channels, module.out_channels,
                (out.shape[-2], out.shape[-1]), sep, std,
            ))

        return hook

    handles = []
    for mod_name, module in model.named_modules():
        if isinstance(module, _COUNTED):
            handles.append(module.register_forward_hook(on_layer(mod_name)))
        elif isinstance(module, SeparableConv2d | StandardConv2d):
            handles.append(module.register_forward_hook(on_separable(mod_name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return layers, separable

"""The variants a sweep compares, and the paper's claims about them, as data.

Each variant is the paper's model with one model option changed (:class:`~xception.models.XceptionConfig`);
each claim names the variants it compares, how (which measure, which direction) and where the paper
makes it. The runner trains the variants; the report tests the claims.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ConfigError


@dataclass(frozen=True)
class Variant:
    """One network of the sweep: the recipe's model with ``options`` on top."""

    name: str
    options: dict[str, Any]
    what: str  # what changes, in words


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("paper", {}, "the paper's Xception: nothing between the depthwise and pointwise steps, residual "
            "connections, depthwise first"),
    Variant("relu", {"activation": "relu"}, "a ReLU between the depthwise and pointwise steps"),
    Variant("elu", {"activation": "elu"}, "an ELU between the depthwise and pointwise steps"),
    Variant("no-residual", {"residual": False}, "no residual connections"),
    Variant("pointwise-first", {"separable_order": "pointwise_first"},
            "1×1 step first, then the spatial step (an \"extreme\" Inception module)"),
    Variant("standard-conv", {"conv": "standard"},
            "a standard k×k conv in place of every separable conv (same kernel, stride, channels)"),
)}

DEFAULT_VARIANTS: tuple[str, ...] = tuple(VARIANTS)


def check_variants(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The names, checked and without repeats; a ConfigError names the known ones."""
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if not names:
        raise ConfigError(f"no variants to run; known: {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(names))


Test = Literal["greater", "within", "at_most"]
Measure = Literal["final", "auc"]


@dataclass(frozen=True)
class Comparison:
    """``a`` against ``b`` on one measure, per seed. ``greater``: the paper says a > b; ``within``: |a − b|
    at most the sweep's margin; ``at_most``: a − b at most the margin."""

    a: str
    b: str
    measure: Measure
    test: Test


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the comparisons that test it, and the plot that shows it."""

    key: str
    short: str  # a few words, for the summary
    title: str
    where: str  # in the paper
    comparisons: tuple[Comparison, ...]
    figure: str | None = None  # the plot in the paper's form
    notes: tuple[str, ...] = field(default_factory=tuple)


CLAIMS: tuple[Claim, ...] = (
    Claim(
        "activation",
        "no activation between the steps, against ReLU and ELU",
        "No non-linearity between the depthwise and pointwise steps converges faster and ends better than "
        "a ReLU or an ELU there",
        "§4.8, Fig. 10",
        (Comparison("paper", "relu", "final", "greater"), Comparison("paper", "elu", "final", "greater"),
         Comparison("paper", "relu", "auc", "greater"), Comparison("paper", "elu", "auc", "greater")),
        figure="fig10-activation.png",
    ),
    Claim(
        "residual",
        "residual connections",
        "Residual connections help convergence speed and final accuracy",
        "§4.7, Fig. 9",
        (Comparison("paper", "no-residual", "final", "greater"), Comparison("paper", "no-residual", "auc", "greater")),
        figure="fig9-residual.png",
    ),
    Claim(
        "order",
        "the order of the two steps",
        "The order of the two steps matters little (depthwise first, or pointwise first as in an \"extreme\" "
        "Inception module)",
        "§3",
        (Comparison("pointwise-first", "paper", "final", "within"),),
    ),
    Claim(
        "separable",
        "separable against standard convs",
        "Separable convolutions buy accuracy per unit of compute: standard k×k convs in their place cost ~8× "
        "the multiply-adds and buy little accuracy for it",
        "§3–4",
        (Comparison("standard-conv", "paper", "final", "at_most"),),
    ),
)

"""The paper's claims, re-tested: train the ablation variants with one recipe and test each claim.

    >>> from xception.ablate import SweepConfig, run_sweep
    >>> outcome = run_sweep(SweepConfig(out="runs/ablation", seeds=3))   # Fashion-MNIST, 6 variants
    >>> [c["verdict"] for c in outcome.report["claims"]]

The variants (:data:`VARIANTS`) are the paper's model with one option changed — a ReLU or an ELU between
the depthwise and pointwise steps (Fig. 10), no residual connections (Fig. 9), the pointwise step first
(an "extreme" Inception module), standard convs in place of the separable ones. Every (variant, seed) is
an ordinary run folder trained by :mod:`xception.train`'s phases; the sweep is resumable and runs on a
CPU, a GPU or under ``torchrun`` unchanged. The report (:func:`write_report`) gives each variant's
figures over seeds and, for each claim (:data:`CLAIMS`), a paired t-interval over seeds and a verdict:
"consistent with the paper", "not consistent with the paper" or inconclusive.
"""

from .report import build_report, render_markdown, write_report
from .runner import (
    RunResult,
    SweepConfig,
    SweepOutcome,
    collect_results,
    default_recipe,
    eval_steps,
    run_sweep,
)
from .stats import Interval, Spread, paired_interval, t_cdf, t_quantile
from .variants import CLAIMS, DEFAULT_VARIANTS, VARIANTS, Claim, Comparison, Variant

__all__ = [
    "CLAIMS",
    "DEFAULT_VARIANTS",
    "VARIANTS",
    "Claim",
    "Comparison",
    "Interval",
    "RunResult",
    "Spread",
    "SweepConfig",
    "SweepOutcome",
    "Variant",
    "build_report",
    "collect_results",
    "default_recipe",
    "eval_steps",
    "paired_interval",
    "render_markdown",
    "run_sweep",
    "t_cdf",
    "t_quantile",
    "write_report",
]

"""The paper's claims, re-tested: train the ablation variants with one recipe and test each claim.

    >>> from xception.ablate import SweepConfig, run_sweep
    >>> outcome = run_sweep(SweepConfig(out="runs/ablation", seeds=3))   # Fashion-MNIST, 6 variants
    >>> [c["verdict"] for c in outcome.report["claims"]]       # e.g. "1 of 2 comparisons agrees with the paper, …"

The variants (:data:`VARIANTS`) are the paper's model with one option changed — a ReLU or an ELU between
the depthwise and pointwise steps (Fig. 10), no residual connections (Fig. 9), the pointwise step first
(an "extreme" Inception module), standard convs in place of the separable ones. Every (variant, seed) is
an ordinary run folder trained by :mod:`xception.train`'s phases; the sweep (:mod:`.sweep` describes it,
:func:`train_sweep` runs it and returns the results) is resumable and runs on a CPU, a GPU or under
``torchrun`` unchanged; :func:`run_sweep` runs it and writes the report. The report (:func:`write_report`)
gives each variant's figures over seeds and, for each comparison behind a claim (:data:`CLAIMS`), a paired
t-interval over seeds and a verdict: "agrees with the paper", "contradicts the paper" or "undecided at N
seeds" with the seeds its spread suggests (:mod:`.verdicts`); each claim gets the tally of its comparisons.
:func:`rebuild_report` judges a stored report.json again without its runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ..distributed import DistEnv
from ..train import StopRequest
from .report import build_report, rebuild_report, render_markdown, write_report
from .runner import train_sweep
from .stats import Interval, Spread, paired_interval, t_cdf, t_quantile
from .sweep import RunResult, SweepConfig, SweepOutcome, collect_results, default_recipe, eval_steps
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
    "rebuild_report",
    "render_markdown",
    "run_sweep",
    "t_cdf",
    "t_quantile",
    "train_sweep",
    "write_report",
]


def run_sweep(
    config: SweepConfig, *, report_dir: str | os.PathLike[str] | None = None, progress: bool = False,
    stop: StopRequest | None = None, dist: DistEnv | None = None, say: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """:func:`train_sweep`, then, on the main process of a sweep that was not stopped, the report: report.md,
    report.json and the plots in ``report_dir`` (default: the sweep folder), in ``outcome.report`` and
    ``outcome.report_files``. The other arguments are :func:`train_sweep`'s."""
    outcome = train_sweep(config, progress=progress, stop=stop, dist=dist, say=say)
    if outcome.is_main and not outcome.interrupted:
        outcome.report, outcome.report_files = write_report(config, outcome.results, report_dir or config.out)
    return outcome

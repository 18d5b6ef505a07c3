"""The sweep's plots, in the paper's form: validation accuracy against updates with a band over seeds
(Fig. 10: the activation between the steps; Fig. 9: residual connections), and accuracy against
multiply-adds and against training time for every variant. Written atomically (matplotlib, no display)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis import save_figure
from .sweep import RunResult, SweepConfig, measure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

COLORS = {
    "paper": "#1f4e9c", "relu": "#d9534f", "elu": "#f0ad4e", "no-residual": "#5cb85c",
    "pointwise-first": "#8e44ad", "standard-conv": "#555555",
}
LABELS = {
    "paper": "paper (no activation, residual, depthwise first)", "relu": "ReLU between the steps",
    "elu": "ELU between the steps", "no-residual": "no residual connections", "pointwise-first": "pointwise first",
    "standard-conv": "standard convs",
}


def draw_all(config: SweepConfig, results: list[RunResult], folder: Path) -> list[Path]:
    """Every plot the results allow: fig10-activation.png, fig9-residual.png, accuracy-vs-multiply-adds.png,
    accuracy-vs-time.png."""
    import matplotlib

    matplotlib.use("Agg")
    done = [r for r in results if r.status == "done" and r.curve]
    have = {r.variant for r in done}
    paths = []
    if "paper" in have and have & {"relu", "elu"}:
        paths.append(_curves(done, ("paper", "relu", "elu"), "step", folder / "fig10-activation.png",
                             "Activation between the depthwise and pointwise steps (paper Fig. 10)"))
    if {"paper", "no-residual"} <= have:
        paths.append(_curves(done, ("paper", "no-residual"), "step", folder / "fig9-residual.png",
                             "Residual connections (paper Fig. 9)"))
    if done:
        paths.append(_accuracy_vs_macs(config, done, folder / "accuracy-vs-multiply-adds.png"))
        paths.append(_curves(done, tuple(v for v in config.variants if v in have), "time",
                             folder / "accuracy-vs-time.png", "Validation accuracy against training time"))
    return paths


def _by_variant(results: list[RunResult], names: tuple[str, ...]) -> dict[str, list[RunResult]]:
    return {n: sorted((r for r in results if r.variant == n), key=lambda r: r.seed) for n in names
            if any(r.variant == n for r in results)}


def _curves(results: list[RunResult], names: tuple[str, ...], x: str, path: Path, title: str) -> Path:
    """Mean validation top-1 over seeds against updates (``x="step"``) or training seconds (``"time"``),
    with the band from the lowest to the highest seed."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown: list[float] = []
    for name, runs in _by_variant(results, names).items():
        length = min(len(r.curve) for r in runs)
        key = "step" if x == "step" else "train_time_s"
        xs = [statistics.fmean(r.curve[i][key] for r in runs) for i in range(length)]
        ys = [[100.0 * r.curve[i]["val_top1"] for r in runs] for i in range(length)]
        mean = [statistics.fmean(v) for v in ys]
        ax.plot(xs, mean, color=COLORS.get(name), label=f"{LABELS.get(name, name)} ({len(runs)} seeds)", lw=1.6)
        if len(runs) > 1:
            ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], color=COLORS.get(name), alpha=0.18, lw=0)
        shown += mean[1:] or mean
    ax.set_xlabel("optimizer updates" if x == "step" else "training time (s, mean over seeds)")
    ax.set_ylabel("validation top-1 (%)")
    _zoom(ax, shown)
    ax.set_title(title + "\nline: mean over seeds; band: lowest to highest seed", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _accuracy_vs_macs(config: SweepConfig, results: list[RunResult], path: Path) -> Path:
    """Final accuracy (mean ± std over seeds) against multiply-adds per image, one point per variant."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    use_test = config.test_data is not None and all(r.test_top1 is not None for r in results)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    shown = []
    for name, runs in _by_variant(results, tuple(config.variants)).items():
        values = [measure(r, "final", use_test) for r in runs]
        mean = statistics.fmean(values)
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        ax.errorbar([runs[0].macs / 1e6], [mean], yerr=[std], fmt="o", color=COLORS.get(name), capsize=3,
                    label=LABELS.get(name, name))
        shown += [mean - std, mean + std]
    ax.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.set_xlabel("multiply-adds per image (millions, log scale)")
    ax.set_ylabel(("test" if use_test else "final validation") + " top-1 (%)")
    _zoom(ax, shown)
    ax.set_title("Accuracy against compute (mean ± std over seeds)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, path)


def _zoom(ax: Axes, values: list[Any], pad: float = 1.0) -> None:
    """Show the range the values span (early chance-level points would flatten every curve otherwise)."""
    if values:
        low, high = min(values), max(values)
        ax.set_ylim(max(0.0, low - pad), min(100.0, high + pad / 2 if high + pad / 2 > low else low + pad))

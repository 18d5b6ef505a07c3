"""Charts of the cost accounting (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .cost import CostReport

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write a figure atomically (a reader never sees half a PNG) and close it."""
    import matplotlib.pyplot as plt

    from ..fileio import atomic_write

    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    if fmt not in fig.canvas.get_supported_filetypes():
        plt.close(fig)
        raise ConfigError(f"cannot draw a chart as {path.name!r}: name it .png, .svg or .pdf")
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format=fmt))
    plt.close(fig)
    return path


def plot_separable_cost(report: CostReport, path: str | os.PathLike[str]) -> Path:
    """Bar chart per module: multiply-adds of its separable convs against the standard convs they replace."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.blocks)
    standard = [report.blocks[b]["standard"].macs / 1e9 for b in names]
    separable = [report.blocks[b]["separable"].macs / 1e9 for b in names]
    labels = [b.split(".")[-1].replace("block", "") for b in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 2), 4.2))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], standard, 0.4, label="standard k×k conv", color="#c0504d")
    ax.bar([x + 0.2 for x in xs], separable, 0.4, label="depthwise separable", color="#4f81bd")
    ax.set_xticks(list(xs), labels)
    ax.set_xlabel("module (Keras block number)")
    ax.set_ylabel("multiply-adds per image (G)")
    total = report.separable_total.macs / max(report.standard_total.macs, 1)
    ax.set_title(
        f"{report.model} at {report.input_size[0]}×{report.input_size[1]}: separable convs cost "
        f"{total:.1%} of standard ({report.standard_model_macs / report.separable_model_macs:.1f}× fewer for the "
        "whole model)",
        fontsize=9,
    )
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)

"""Analysis: parameter and multiply-add accounting, the separable-vs-standard comparison, its plots."""

from .cost import Cost, CostReport, LayerRow, SeparableRow, layer_macs, model_cost, separable_vs_standard
from .plots import plot_separable_cost, save_figure

__all__ = [
    "Cost",
    "CostReport",
    "LayerRow",
    "SeparableRow",
    "layer_macs",
    "model_cost",
    "plot_separable_cost",
    "save_figure",
    "separable_vs_standard",
]

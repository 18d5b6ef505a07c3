"""What a build function gets and gives: :class:`BuildContext` in, :class:`Contender` out (or :class:`Skip`).

Contenders of our model open a file of it (its weights, its ONNX export, its int8 file, an edge export) through
the inference layer, :func:`xception.inference.open_model`, and time the runner: :meth:`BuildContext.open`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..inference import Runner
    from .config import BenchConfig
    from .models import Models


class Skip(Exception):
    """A contender that cannot run here (a package or device missing): reported, not an error."""


@dataclass
class Contender:
    """A contender set up to run: ``run()`` does one batch; ``memory_run`` (if set) replaces it for the
    memory pass, and ``memory_note`` says how that pass differs."""

    run: Callable[[], Any]
    batch_size: int
    details: dict[str, Any] = field(default_factory=dict)
    precision: torch.dtype | None = None  # what it computes in, when not the dtype it was asked for
    memory_run: Callable[[], Any] | None = None
    memory_note: str = ""


@dataclass(frozen=True)
class BuildContext:
    """What a build function gets: the run's settings, its input batch and the shared networks."""

    cfg: BenchConfig  # resolved: no None defaults left
    x: torch.Tensor  # the inference batch, on the device
    device: torch.device
    dtype: torch.dtype  # the spec's precision, else the run's dtype
    network: str  # "ours" | "timm"
    models: Models

    def model(self) -> nn.Module:
        """A fresh copy of this contender's network (seeded weights, calibrated BatchNorms)."""
        return self.models.get(self.network)

    def open(self, path: Path, runtime: str, device: torch.device | str = "cpu", **options: Any) -> Runner:
        """``path`` (a file of this run's networks) opened on ``runtime`` through the inference layer, with the
        runtime's ``options``."""
        from ..inference import open_model

        return open_model(path, runtime=runtime, device=device, options=options)


def runner_details(runner: Runner, **extra: Any) -> dict[str, Any]:
    """A row's details from what the runner says of itself (runtime, precision, kernels, …), and ``extra``."""
    own: Mapping[str, Any] = runner.details()
    return {"runtime": runner.name, **own, **extra}

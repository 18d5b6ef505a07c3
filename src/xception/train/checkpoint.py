"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint is a ``torch.save`` dict of tensors and plain values only, read back with
``torch.load(weights_only=True)``: nothing is unpickled. It holds the model, the EMA model, optimiser,
scheduler and gradient-scaler states, the random-number generators, the position (epoch, batch within
the epoch, global step), the best validation score so far, the partial epoch's running sums and the
resolved recipe and run settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write

CHECKPOINT_VERSION = 1
LAST, BEST = "last.pt", "best.pt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the previous file intact."""
    atomic_write(path, lambda tmp: torch.save({"version": CHECKPOINT_VERSION, **state}, tmp))


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, else the run folder's ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; --resume takes a run folder or a .pt checkpoint")
    return path


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = find_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for damaged or foreign files
        raise ValueError(f"{path} is not a readable training checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a training checkpoint of this version")
    return state

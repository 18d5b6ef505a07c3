"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint (``last.pt``, ``best.pt``) is the :class:`TrainState` of a run as a ``torch.save`` dict of
tensors and plain values only, read back with ``torch.load(weights_only=True)``: nothing is unpickled.
It holds the model, the EMA model, optimiser, scheduler and gradient-scaler states, the random-number
generators, the position (epoch, global sample position within the epoch, update step), the best
epoch's record, the partial epoch's running sums, the resolved recipe and run settings, the model
configuration, class names and preprocessing, the files skipped so far and the time spent.

Each checkpoint is read back before it replaces the previous one, and ``last.pt``'s predecessor stays as
``last.prev.pt``: ``--resume`` continues from the newest intact file (:func:`find_resume_point`).

A checkpoint, and a run folder, are also weights (:func:`as_weights`, :func:`run_folder_weights`): the
weights layer reads them as it reads any other file, with the config, class names and preprocessing they
record and the weights the run evaluates and exports (the EMA's when it averages).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import SkipLog, Skipped
from ..errors import ConfigError, MissingPathError, StorageError, hint
from ..fileio import atomic_write
from ..models import Xception
from ..preprocessing import Preprocessing
from ..weights.checkpoint import (
    BEST,
    CHECKPOINT_VERSION,
    LAST,
    PREVIOUS,
    Unreadable,
    check_records,
    damaged,
)
from .ema import ModelEma
from .recipe import Recipe

DAMAGED = "last.pt.damaged"  # a damaged last.pt, moved out of the way when a run continues without it


@dataclass
class RunSettings:
    """Where a run reads and writes: stored in checkpoints so ``--resume`` needs nothing else."""

    data: str | None = None
    val: str | None = None
    data_dir: str | None = None
    weights: str | None = None
    strict: bool = False


@dataclass
class EpochSums:
    """Running sums of the epoch's training batches over all processes: summed loss, correct
    predictions, images seen, and seconds spent (what a mid-epoch checkpoint carries on)."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    time: float = 0.0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainState:
    """Exactly what a checkpoint holds: the objects that change as a run trains, and what it is about.

    :meth:`to_checkpoint` turns it into the checkpoint dict; :meth:`restore` loads one into a state built
    for the same model configuration. ``elapsed_before_s`` is the time spent in earlier sessions of the
    run, ``session_start`` the ``perf_counter`` reading when this one began.
    """

    model: Xception
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    recipe: Recipe
    settings: RunSettings
    class_names: list[str]
    preprocessing: Preprocessing
    skipped: SkipLog
    world_size: int = 1
    epoch: int = 0  # epochs completed
    position: int = 0  # samples of the current epoch consumed by all processes together
    step: int = 0  # optimiser updates so far
    best: dict[str, Any] | None = None  # the best epoch's metrics record
    partial: EpochSums = field(default_factory=EpochSums)
    elapsed_before_s: float = 0.0
    session_start: float = field(default_factory=time.perf_counter)

    def elapsed_s(self) -> float:
        """Seconds the run has trained, over all its sessions."""
        return self.elapsed_before_s + time.perf_counter() - self.session_start

    def to_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (the RNG states are read now): what :func:`save_checkpoint` writes."""
        return {
            "model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "epoch": self.epoch, "position": self.position,
            "world_size": self.world_size, "step": self.step, "best": self.best, "partial": self.partial.to_dict(),
            "recipe": self.recipe.to_dict(), "run": dataclasses.asdict(self.settings),
            "model_config": self.model.config.to_dict(), "class_names": self.class_names,
            "preprocessing": self.preprocessing.to_dict(), "skipped": [vars(s) for s in self.skipped.seen.values()],
            "elapsed_s": self.elapsed_s(),
        }

    def restore(self, checkpoint: dict[str, Any], *, carry_sums: bool = True) -> None:
        """Load ``checkpoint`` into this state: weights, optimiser, scheduler, scaler, RNGs, position, best
        record, skipped files and time. ``carry_sums=False`` zeroes the epoch's running sums (they are
        global, so one process of a data-parallel job carries them on). The recipe, settings, class names
        and preprocessing stay those this state was built with."""
        self.model.load_state_dict(checkpoint["model"])
        if self.ema is not None and checkpoint.get("ema") is not None:
            self.ema.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        self.epoch, self.step, self.position = checkpoint["epoch"], checkpoint["step"], checkpoint["position"]
        self.best = checkpoint["best"]
        partial = EpochSums(**checkpoint["partial"])
        self.partial = partial if carry_sums else EpochSums(time=partial.time)
        for item in checkpoint.get("skipped", []):
            self.skipped.seen.setdefault(item["path"], Skipped(**item))
        self.elapsed_before_s = checkpoint["elapsed_s"]


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, checkpoint: dict[str, Any], *, keep_previous: Path | None = None) -> None:
    """Write ``checkpoint`` (:meth:`TrainState.to_checkpoint`) to ``path`` atomically and verified: the new
    file must read back (every record matching the checksum its writer computed) before it replaces the old
    one, which moves to ``keep_previous`` when given. A crash, a full disk or a bad write leaves the
    previous file intact; the last two raise a :class:`~xception.errors.StorageError`."""

    def write(tmp: Path) -> None:
        # Into a Python file, so that a failed write keeps its errno (a full disk is then said as such).
        with open(tmp, "wb") as f:
            torch.save({"version": CHECKPOINT_VERSION, **checkpoint}, f)
        try:
            check_records(tmp)
        except Unreadable as err:
            raise StorageError(f"{path} did not read back after writing (it was {err}); the previous "
                               "checkpoint is kept") from None

    atomic_write(path, write, backup=keep_previous)


def has_checkpoint(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds any checkpoint of a run (intact or not)."""
    return any((Path(folder) / name).is_file() for name in (LAST, PREVIOUS, BEST))


def find_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself if it is a file, else the run folder's ``last.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise MissingPathError(f"no checkpoint at {path}; {hint('resume=', '--resume')} takes a run folder or a "
                               ".pt checkpoint")
    return path


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from: its file, its contents, and why that file when it is not the
    run's ``last.pt`` (one line; None otherwise)."""

    path: Path
    checkpoint: dict[str, Any]
    note: str | None = None


def find_resume_point(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> ResumePoint:
    """Where to continue from: ``path`` itself if it is a ``.pt`` file; in a run folder, ``last.pt``, or
    when that is missing or damaged the newest intact one of ``last.prev.pt`` and ``best.pt``, with a note
    saying which and why. Fails only when no checkpoint there is intact."""
    path = Path(path)
    if not path.is_dir():
        return ResumePoint(path, load_checkpoint(path, map_location))
    problems: dict[str, str] = {}
    try:
        return ResumePoint(path / LAST, _read(path / LAST, map_location))
    except Unreadable as err:
        problems[LAST] = str(err)
    intact = []
    for name in (PREVIOUS, BEST):
        try:
            intact.append((name, _read(path / name, map_location)))
        except Unreadable as err:
            problems[name] = str(err)
    if not intact:
        if all(problem == "missing" for problem in problems.values()):
            find_checkpoint(path)  # raises: no checkpoint at all
        said = "; ".join(f"{name} is {problem}" for name, problem in problems.items())
        raise ConfigError(f"no intact checkpoint in {path}: {said}; the run cannot continue, start a new one")
    # The newest: the most data seen. On a tie the previous last.pt, which holds the same moment as best.pt.
    name, checkpoint = max(intact, key=lambda item: (item[1]["epoch"], item[1]["position"]))
    note = (f"resuming from {name} (epoch {checkpoint['epoch'] + 1}, update {checkpoint['step']}): "
            f"{LAST} is {problems[LAST]}")
    return ResumePoint(path / name, checkpoint, note)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict in ``path``: a ``.pt`` file, or a run folder's newest intact checkpoint (its
    ``last.pt``, else as :func:`find_resume_point` chooses)."""
    path = Path(path)
    if path.is_dir():
        return find_resume_point(path, map_location).checkpoint
    path = find_checkpoint(path)
    try:
        return _read(path, map_location)
    except Unreadable as err:
        raise ConfigError(f"{path} is {err}; it is not a readable training checkpoint") from None


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """A checkpoint file's dict, checked whole (:func:`check_records`), then loaded with ``weights_only``
    (nothing unpickled)."""
    check_records(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged or foreign files
        raise Unreadable(damaged(err)) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("version") != CHECKPOINT_VERSION:
        raise Unreadable("not a training checkpoint of this version")
    return checkpoint

"""The end of a run: :func:`finish` exports the best model as model.safetensors, draws the curves and writes
summary.json; :func:`stopped` is the result of a run stopped early; :func:`export_model` writes the model at
each new best epoch, so that a run stopped at any time leaves its best model so far."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..distributed import barrier
from ..errors import StorageError, hint
from ..fileio import atomic_write
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..weights import save_weights
from ..weights.checkpoint import BEST, EXPORT, LAST, evaluation_state, export_metrics
from . import artifacts
from .checkpoint import load_checkpoint
from .run import Run, _say
from .stop import StopRequest

log = logging.getLogger("xception.train")


@dataclass
class TrainResult:
    """The outcome of :func:`~xception.train.loop.train`."""

    run_dir: Path
    weights: Path | None  # the best model (so far, when interrupted; None when no epoch was completed)
    epochs_done: int
    best: dict[str, Any] | None  # the best epoch's metrics record
    interrupted: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    stop_signal: int | None = None  # the signal that stopped it (SIGINT, SIGTERM), if one did
    nothing_to_do: bool = False  # a resume of a run that had finished: nothing was done


def finish(run: Run) -> TrainResult:
    """End a run whose epochs are done: export the best checkpoint's model as model.safetensors, draw the
    loss and accuracy curves and write summary.json (main process); every process gets the result."""
    state, run_dir = run.state, run.run_dir
    elapsed = state.elapsed_s()
    exported = None
    if run.world.is_main:
        with resumable(run):
            exported = _finish_files(run, elapsed)
    barrier()
    return TrainResult(run_dir, exported, state.epoch, state.best, False, state.skipped.counts(), elapsed)


def _finish_files(run: Run, elapsed: float) -> Path:
    """model.safetensors, the curves and summary.json, and the closing lines; the exported model's path."""
    state, run_dir = run.state, run.run_dir
    exported = _export_best(run_dir, state.best, state.class_names, state.preprocessing, state.ema is not None,
                            run.data.train_source.description)
    artifacts.plot_curves(artifacts.read_metrics(run_dir), run_dir)
    summary = {"best": state.best, "epochs": state.epoch, "weights": str(exported),
               "skipped": state.skipped.counts(), "skipped_files": [vars(s) for s in state.skipped.seen.values()],
               "elapsed_s": round(elapsed, 1)}
    atomic_write(run_dir / artifacts.SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
    if state.skipped:
        counts = ", ".join(f"{n} {reason}" for reason, n in state.skipped.counts().items())
        _say(run.world, f"skipped unreadable files: {counts}")
    best_epoch = state.best["epoch"] if state.best else "?"
    _say(run.world, f"done in {elapsed / 60:.1f} min; best model (epoch {best_epoch}): {exported}")
    return exported


@contextlib.contextmanager
def resumable(run: Run) -> Iterator[None]:
    """A write that failed (a full disk) says how to continue once the cause is gone."""
    try:
        yield
    except StorageError as err:
        again = hint(f"resume={str(run.run_dir)!r}", f"--resume {run.run_dir}")
        full = any(words in str(err) for words in ("no space left", "quota exceeded"))
        advice = f"free space and continue with {again}" if full else f"continue with {again} once that is fixed"
        raise StorageError(f"{err}; {advice}") from err


def stopped(run: Run, stop: StopRequest | None = None) -> TrainResult:
    """The result of a run stopped before its last epoch (its last.pt saved, and its best model so far
    once an epoch has ended)."""
    state, run_dir = run.state, run.run_dir
    elapsed = state.elapsed_s()
    exported = run_dir / EXPORT if (run_dir / EXPORT).is_file() else None
    best = f"; best model so far: {exported}" if exported is not None else ""
    _say(run.world, f"stopped in epoch {state.epoch + 1}; saved {run_dir / LAST}{best}\n"
                    f"continue with: xception train --resume {run_dir}")
    return TrainResult(run_dir, exported, state.epoch, state.best, True, state.skipped.counts(), elapsed,
                       stop_signal=stop.signum if stop is not None else None)


def _export_best(run_dir: Path, best: dict[str, Any] | None, classes: list[str], preprocessing: Preprocessing,
                 use_ema: bool, dataset: str) -> Path:
    """Write the best checkpoint's evaluation weights (the EMA's when averaging) as model.safetensors."""
    if not (run_dir / BEST).is_file():
        log.warning("%s is missing: exporting the last epoch's model instead", run_dir / BEST)
    checkpoint = load_checkpoint(run_dir / (BEST if (run_dir / BEST).is_file() else LAST))
    return _write_model(run_dir, XceptionConfig.from_dict(checkpoint["model_config"]), evaluation_state(checkpoint),
                        checkpoint["recipe"]["model"], classes, preprocessing, export_metrics(best, use_ema, dataset))


def export_model(run: Run) -> Path:
    """Write the state's evaluation weights (the EMA's when averaging) as model.safetensors, as
    :func:`_export_best` does from best.pt, without reading best.pt back: called at each new best."""
    state = run.state
    evaluated = state.ema.module if state.ema is not None else state.model
    metrics = export_metrics(state.best, state.ema is not None, run.data.train_source.description)
    return _write_model(run.run_dir, state.model.config, evaluated.state_dict(), run.recipe.model, state.class_names,
                        state.preprocessing, metrics)


def _write_model(run_dir: Path, config: XceptionConfig, tensors: dict[str, torch.Tensor], model_name: str,
                 classes: list[str], preprocessing: Preprocessing, metrics: dict[str, Any]) -> Path:
    """``tensors`` as the run's model.safetensors, atomically, in the dtypes of a fresh model (float32 also
    after float64 training) and contiguous, whatever the device or memory layout they were trained in."""
    with torch.device("meta"):  # no memory and no initialisation: every tensor is replaced
        model = Xception(config)
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.detach().to("cpu", dtypes.get(k, v.dtype)) for k, v in tensors.items()}, assign=True)
    save_weights(model, run_dir / EXPORT, model_name=model_name, class_names=classes, preprocessing=preprocessing,
                 source=f"trained: {run_dir}", sha256="", metrics=metrics)
    return run_dir / EXPORT

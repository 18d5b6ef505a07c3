"""The training loop: :func:`train`, readable top to bottom, and the phases it runs, each usable alone.

    >>> from xception.train import load_recipe, train
    >>> result = train(load_recipe("fashion-mnist"))             # the embedded default
    >>> result = train(load_recipe("modern").replace(epochs=30), "data/flowers", weights="xception.safetensors")

:func:`train` runs :func:`~xception.train.run.open_run` (:mod:`xception.train.run`: the folder, data, model
and optimiser, built fresh or restored from a checkpoint) → :func:`fit` (per epoch
:func:`~xception.train.epoch.train_one_epoch`, then :func:`end_epoch`, which calls
:func:`~xception.train.validation.validate`) → :func:`~xception.train.finish.finish` (export of the best model,
plots, summary). Ctrl-C and SIGTERM stop it cleanly (:mod:`xception.train.stop`). The phases serve other
experiments as they are:

    >>> run = open_run(recipe, RunSettings(data="data/flowers"), out="runs/a")
    >>> with open_log(run) as run_log:
    ...     done = fit(run, run_log, steps=500)          # stops after update 500, saves last.pt
    >>> validate(run)                                    # {"val_loss": …, "val_top1": …, "val_top5": …}
    >>> done.records                                     # one record per completed epoch (step, val_top1, …)
    >>> recipe, _ = resume_settings("runs/a")
    >>> run = open_run(recipe, resume="runs/a")          # continues where it stopped

Data-parallel runs (:mod:`xception.distributed`): training sums and validation counts are summed across
processes, only the main process writes files, and checkpoints store the global sample position reached
in the epoch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..distributed import DistEnv, distributed, restarted_by_torchrun
from ..runtime import resolve_device
from ..tables import plural
from ..weights.checkpoint import BEST, EXPORT
from . import artifacts
from .checkpoint import EpochSums, RunSettings, has_checkpoint, save_checkpoint
from .epoch import EpochEnd, check_finite, save_last, train_one_epoch
from .finish import TrainResult, export_model, finish, resumable, stopped
from .precise_bn import update_statistics
from .recipe import Recipe
from .run import Run, RunFinished, _say, open_run
from .stop import StopRequest
from .validation import validation_counts, validation_metrics, warn_at_chance


@dataclass
class FitResult:
    """What :func:`fit` did: the records of the epochs it completed (as in metrics.jsonl), and whether it
    stopped before the end it was given (a stop request or its ``steps`` limit)."""

    records: list[dict[str, Any]]
    interrupted: bool


def train(
    recipe: Recipe,
    data: str | os.PathLike[str] | None = None,
    *,
    val: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    weights: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    strict: bool = False,
    progress: bool = True,
    dist: DistEnv | None = None,
) -> TrainResult:
    """Train per ``recipe`` on ``data`` (an image folder; None or ``"fashion-mnist"``: Fashion-MNIST).

    Args:
        val: a validation folder (default: ``data/val`` if present, else a held-out share of ``data``).
        data_dir: where the Fashion-MNIST IDX files are (or go, when downloaded).
        out: the run folder (default ``runs/<recipe>-<date>-<time>``).
        weights: start from these weights (fine-tuning); the head is replaced when the class count differs.
        resume: a run folder or checkpoint to continue; ``recipe`` should be the one stored in it
            (:func:`~xception.train.run.resume_settings` reads it back).
        strict: fail on the first unreadable image instead of skipping it.
        dist: this process's place in a data-parallel job (a :class:`DistEnv`). By default the process
            joins the job torchrun describes, if any, and leaves it at the end.
    """
    if resume is None and out is not None and restarted_by_torchrun() and has_checkpoint(out):
        resume = out  # torchrun --max-restarts relaunched the job after a failure: continue from the checkpoint
    settings = RunSettings(data=_text(data), val=_text(val), data_dir=_text(data_dir), weights=_text(weights),
                           strict=strict)
    with distributed(resolve_device(recipe.device), dist) as world:
        try:
            run = open_run(recipe, settings, out=out, resume=resume, world=world)
        except RunFinished as finished:
            _say(world, str(finished))
            exported = finished.run_dir / EXPORT
            return TrainResult(finished.run_dir, exported, finished.epochs, finished.best,
                               elapsed_s=finished.elapsed_s, nothing_to_do=True)
        try:
            stop = StopRequest()
            with open_log(run) as run_log, stop.installed():
                _say(world, _started_message(run))  # from here on, Ctrl-C stops cleanly with a checkpoint
                done = fit(run, run_log, stop=stop, progress=progress)
            return stopped(run, stop) if done.interrupted else finish(run)
        finally:
            run.close()


# -- the phases ------------------------------------------------------------------------------------------------


def open_log(run: Run) -> artifacts.RunLog:
    """The run's metrics.jsonl and TensorBoard writer (inert off the main process); use it with ``with``.
    On a resumed run, records past the checkpoint's epoch are dropped: those epochs run again."""
    return artifacts.RunLog(run.run_dir, enabled=run.world.is_main,
                            resume_epoch=run.state.epoch if run.resumed else None, resume_step=run.state.step)


def fit(
    run: Run, run_log: artifacts.RunLog, *, epochs: int | None = None, steps: int | None = None,
    stop: StopRequest | None = None, progress: bool = False,
) -> FitResult:
    """Train ``run`` until ``epochs`` epochs are complete (default: the recipe's), until update ``steps``,
    or until ``stop`` is requested. Each completed epoch is validated, logged and checkpointed
    (:func:`end_epoch`); within an epoch last.pt is saved every ``checkpoint_minutes`` of the recipe and
    at a stop, at the position reached, to resume from. A write that fails (a full disk) raises a
    :class:`~xception.errors.StorageError` that says how to continue; the checkpoint before stays intact."""
    end = run.recipe.epochs if epochs is None else epochs
    records: list[dict[str, Any]] = []
    with resumable(run):
        while run.state.epoch < end and (steps is None or run.state.step < steps):
            trained = train_one_epoch(run, run_log, stop=stop, until_step=steps, progress=progress)
            if not trained.complete:
                save_last(run)
                break
            records.append(end_epoch(run, run_log, trained, progress=progress))
            if trained.stopping:
                break
    return FitResult(records, interrupted=run.state.epoch < end)


def end_epoch(run: Run, run_log: artifacts.RunLog, trained: EpochEnd, *, progress: bool = False) -> dict[str, Any]:
    """Close the epoch :func:`train_one_epoch` completed: recompute the BatchNorm statistics when the recipe's
    ``precise_bn`` says so (:mod:`xception.train.precise_bn`), validate, write the epoch's record
    (metrics.jsonl, TensorBoard, a line on stderr, a warning when validation sits at chance while training
    accuracy is well above it), keep it if it is the best so far, move the state to the next epoch and save
    best.pt (when best) and last.pt. Returns the record."""
    state, sums = run.state, trained.sums
    check_finite(sums.mean_loss, run)
    train_time = time.perf_counter() - trained.started
    record: dict[str, Any] = {
        "epoch": state.epoch + 1, "step": state.step, "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": sums.mean_loss, "train_acc": sums.accuracy,
        "train_images_per_s": round(sums.seen / max(train_time, 1e-9), 1),
    }
    recomputed = update_statistics(run)  # precise_bn: the statistics of the weights validated and saved
    counts = validation_counts(run, progress=progress)
    record.update(validation_metrics(counts))
    record.update(epoch_time_s=round(time.perf_counter() - trained.started, 2), time_s=round(state.elapsed_s(), 2),
                  skipped=len(state.skipped))
    is_best = state.best is None or run.data.val_batches is None or record["val_top1"] > state.best["val_top1"]
    if is_best:
        state.best = record
    run_log.epoch(record)
    _say(run.world, _epoch_line(record, run.recipe.epochs), bar_safe=True)
    warn_at_chance(run, record, counts, recomputed)
    state.epoch, state.position, state.partial = state.epoch + 1, 0, EpochSums()
    # best.pt before last.pt: a crash in between leaves last.pt behind best.pt, never ahead of it.
    if run.world.is_main and is_best:
        save_checkpoint(run.run_dir / BEST, state.to_checkpoint())
        export_model(run)  # the best model so far, usable whenever the run stops
    save_last(run)
    return record


# -- messages --------------------------------------------------------------------------------------------------


def _started_message(run: Run) -> str:
    state = run.state
    resumed = ""
    if run.resumed:
        ended = state.epoch >= run.recipe.epochs  # its epochs done, its model or summary not yet written
        resumed = " (resumed after its last epoch: finishing)" if ended else f" (resumed in epoch {state.epoch + 1})"
    return (f"training {state.model.config.arch} ({_count(state.model)} parameters) on "
            f"{run.data.train_source.description}: {plural(len(state.class_names), 'class', 'classes')}, "
            f"{state.preprocessing.input_size} px, batch {run.global_batch}, lr {run.peak_lr:g}, "
            f"{plural(run.recipe.epochs, 'epoch')}, {run.compute.device}{resumed}\nrun folder: {run.run_dir}")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"acc {100 * record['train_acc']:.2f} %")
    if "val_top1" in record:
        text += f"; val loss {record['val_loss']:.4f}, top-1 {100 * record['val_top1']:.2f} %"
    return text + f"; {record['epoch_time_s']:.0f} s"


def _count(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _text(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else str(value)

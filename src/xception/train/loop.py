"""The training loop: :func:`train`, readable top to bottom, and the phases it runs, each usable alone.

    >>> from xception.train import load_recipe, train
    >>> result = train(load_recipe("fashion-mnist"))             # the embedded default
    >>> result = train(load_recipe("modern").replace(epochs=30), "data/flowers", weights="xception.safetensors")

:func:`train` runs :func:`open_run` (:func:`build_run`, then :func:`restore` when resuming) → :func:`fit`
(per epoch :func:`train_one_epoch`, then :func:`end_epoch`, which calls :func:`validate`) → :func:`finish`
(export of the best model, plots, summary). The phases serve other experiments as they are:

    >>> run = open_run(recipe, RunSettings(data="data/flowers"), out="runs/a")
    >>> with open_log(run) as run_log:
    ...     done = fit(run, run_log, steps=500)          # stops after update 500, saves last.pt
    >>> validate(run)                                    # {"val_loss": …, "val_top1": …, "val_top5": …}
    >>> done.records                                     # one record per completed epoch (step, val_top1, …)
    >>> recipe, _ = resume_settings("runs/a")
    >>> run = open_run(recipe, resume="runs/a")          # continues where it stopped

A :class:`Run` holds a :class:`~xception.train.checkpoint.TrainState` (exactly what a checkpoint holds)
and what each session rebuilds: data loaders, device and number formats, the process's place in the job.
Data-parallel runs (:mod:`xception.distributed`): the rank and world size (:class:`DistEnv`) shard the
data through a :class:`ResumableSampler`, training sums and validation counts are summed across
processes, only the main process writes files, and checkpoints store the global sample position reached
in the epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..api import create_model
from ..data import Batches, ShardSampler, SkipLog, Source, training_sources
from ..data.loader import default_workers
from ..distributed import (
    DistEnv,
    ResumableSampler,
    all_reduce_sum,
    barrier,
    broadcast_object,
    convert_sync_batchnorm,
    init_distributed,
    launched_by_torchrun,
    restarted_by_torchrun,
    shutdown_distributed,
)
from ..errors import ConfigError, DataError, NotAFolderError, StorageError, XceptionError, hint
from ..evaluate import count_batches  # validation counts exactly as evaluation does
from ..fileio import FolderLock, atomic_write, remove_stale_temps
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..runtime import resolve_device
from ..weights import save_weights
from . import artifacts
from .checkpoint import (
    BEST,
    DAMAGED,
    LAST,
    PREVIOUS,
    EpochSums,
    RunSettings,
    TrainState,
    find_resume_point,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .ema import ModelEma
from .finetune import freeze_backbone, freeze_batchnorm
from .recipe import Recipe, toml_value
from .schedule import lr_at

log = logging.getLogger("xception.train")

T = TypeVar("T")

EXPORT = "model.safetensors"


class NonFiniteLoss(XceptionError, ValueError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    run_dir: Path
    weights: Path | None  # the exported best model (None when interrupted before the end)
    epochs_done: int
    best: dict[str, Any] | None  # the best epoch's metrics record
    interrupted: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass(frozen=True)
class Compute:
    """Where a run computes and in which number formats."""

    device: torch.device
    dtype: torch.dtype  # of the parameters and the inputs
    amp_dtype: torch.dtype | None  # autocast's (None: no autocast)
    channels_last: bool

    @classmethod
    def for_recipe(cls, recipe: Recipe, world: DistEnv) -> Compute:
        device = resolve_device(recipe.device)
        if device.type == "cuda" and world.distributed:
            device = torch.device("cuda", world.local_rank)
        dtype = torch.float64 if recipe.precision == "float64" else torch.float32
        amp_dtype = _amp_dtype(recipe.amp, device) if dtype == torch.float32 else None
        # NHWC is faster for these depthwise-separable convs on GPUs and on CPUs (oneDNN) alike (benchmarks/NOTES.md).
        channels_last = recipe.channels_last == "on" or (
            recipe.channels_last == "auto" and device.type in ("cuda", "cpu"))
        return cls(device, dtype, amp_dtype, channels_last)

    @property
    def layout(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=enabled)


@dataclass
class RunData:
    """A run's data: the sources and their loaders (training batches are this process's shard)."""

    train_source: Source
    val_source: Source | None
    train_batches: Batches
    val_batches: Batches | None
    batches_per_epoch: int  # this process's training batches in a whole epoch


@dataclass
class Run:
    """A training run, built and ready to train: its state, data, compute and folder.

    ``state`` is what checkpoints hold; the rest is rebuilt in each session. ``resumed``: the state came
    from a checkpoint. ``frozen``, ``parallel`` and ``forward`` are the model as this session trains it:
    whether its backbone is frozen, the model wrapped for data parallelism, and that wrapper compiled.
    ``lock``: the main process's claim on the run folder (:class:`~xception.fileio.FolderLock`), held until
    :meth:`close`; ``saved_at``: the ``perf_counter`` reading of the last save of last.pt (or of the start).
    """

    state: TrainState
    data: RunData
    compute: Compute
    world: DistEnv
    run_dir: Path
    peak_lr: float  # the recipe's lr scaled to the global batch
    resumed: bool = False
    frozen: bool | None = None
    parallel: nn.Module | None = None
    forward: nn.Module | None = None
    lock: FolderLock | None = None
    saved_at: float = field(default_factory=time.perf_counter)

    def close(self) -> None:
        """Give the run folder up to other processes (:func:`train` does at its end; the folder is also
        freed when this process ends)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    @property
    def recipe(self) -> Recipe:
        return self.state.recipe

    @property
    def settings(self) -> RunSettings:
        return self.state.settings

    @property
    def global_batch(self) -> int:
        return _global_batch(self.recipe, self.world)

    @property
    def updates_per_epoch(self) -> int:
        return math.ceil(self.data.batches_per_epoch / self.recipe.accum_steps)


@dataclass
class EpochEnd:
    """Where :func:`train_one_epoch` stopped: the epoch's sums over all processes (earlier sessions
    included), the ``perf_counter`` reading its clock counts from, whether a stop was agreed, and whether
    the epoch's batches are all done."""

    sums: EpochSums
    started: float
    stopping: bool
    complete: bool


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
            (:func:`resume_settings` reads it back).
        strict: fail on the first unreadable image instead of skipping it.
        dist: this process's place in a data-parallel job (a :class:`DistEnv`). By default the process
            joins the job torchrun describes, if any, and leaves it at the end.
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    joined = dist is None and launched_by_torchrun()
    world = dist or init_distributed(resolve_device(recipe.device))
    if resume is None and out is not None and restarted_by_torchrun() and has_checkpoint(out):
        resume = out  # torchrun --max-restarts relaunched the job after a failure: continue from the checkpoint
    settings = RunSettings(data=_text(data), val=_text(val), data_dir=_text(data_dir), weights=_text(weights),
                           strict=strict)
    run = None
    try:
        run = open_run(recipe, settings, out=out, resume=resume, world=world)
        stop = StopRequest()
        with open_log(run) as run_log, stop.installed():
            _say(world, _started_message(run))  # from here on, Ctrl-C stops cleanly with a checkpoint
            done = fit(run, run_log, stop=stop, progress=progress)
        return _stopped(run) if done.interrupted else finish(run)
    finally:
        if run is not None:
            run.close()
        torch.use_deterministic_algorithms(deterministic_before)
        if joined:
            shutdown_distributed()


def resume_settings(path: str | os.PathLike[str]) -> tuple[Recipe, RunSettings]:
    """The recipe and run settings stored in a run folder's checkpoint (to resume it, or inspect it)."""
    checkpoint = load_checkpoint(path)
    return Recipe.from_dict(checkpoint["recipe"]), RunSettings(**checkpoint["run"])


# -- the phases ------------------------------------------------------------------------------------------


def open_run(
    recipe: Recipe, settings: RunSettings | None = None, *, out: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None, world: DistEnv | None = None,
) -> Run:
    """A run ready to train, its folder chosen and its config.toml written (by the main process).

    Without ``resume``: a fresh run of ``recipe`` on ``settings``'s data in ``out`` (default
    ``runs/<recipe>-<date>-<time>``), refused if that folder holds a run already. With ``resume`` (a run
    folder or a checkpoint): that run, at the point its checkpoint reached, with the settings stored in it;
    ``recipe`` should be the stored one (:func:`resume_settings`), changed at most where a resume allows
    (more epochs, a lower lr); in a run folder, from its newest intact checkpoint (:func:`find_resume_point`).
    ``world``: this process's place in a data-parallel job (default: alone).

    The main process claims the folder for the run (a :class:`~xception.fileio.FolderLock`, held until
    :meth:`Run.close`): another process training into it meanwhile gets a :class:`BusyError`.
    """
    started = time.perf_counter()
    world = world or DistEnv()
    # An existing folder is claimed before anything in it is read; a new one once the run is known to be
    # usable (nothing is written before). Rank 0 alone claims it; every rank raises the error it met.
    chosen = _on_main(world, lambda: _choose_folder(recipe, out, resume))
    lock = chosen[1] if chosen else None
    # One folder for all ranks, and one decision: each rank takes part in the second claim's collective or none.
    run_dir, claimed = broadcast_object((chosen[0], lock is not None) if chosen else None)
    try:
        point = find_resume_point(resume) if resume is not None else None
        checkpoint = point.checkpoint if point is not None else None
        if checkpoint is not None:
            settings = RunSettings(**checkpoint["run"])
        run = build_run(recipe, settings or RunSettings(), run_dir, world=world, checkpoint=checkpoint,
                        started=started)
        if checkpoint is not None:
            restore(run, checkpoint)
        if not claimed:
            lock = _on_main(world, lambda: _claim_folder(run_dir, fresh=checkpoint is None))
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    if world.is_main:
        if point is not None and point.note:
            note = point.note
            if point.path.name != LAST and (run_dir / LAST).exists():
                # Out of the chain: the next save must not rotate it into last.prev.pt over the one resumed from.
                os.replace(run_dir / LAST, run_dir / DAMAGED)
                note += f"; kept as {run_dir / DAMAGED}"
            _say(world, note)
        if run.peak_lr != recipe.lr:
            _say(world, f"lr {recipe.lr:g} for a batch of {recipe.lr_base_batch} → {run.peak_lr:g} for the global "
                        f"batch of {run.global_batch} (linear scaling; set lr_base_batch = 0 to turn it off)")
        remove_stale_temps(run_dir)  # what a killed session was writing: only this process writes here now
        _write_config(run)
    return run


def build_run(
    recipe: Recipe, settings: RunSettings, run_dir: str | os.PathLike[str], *, world: DistEnv | None = None,
    checkpoint: dict[str, Any] | None = None, started: float | None = None,
) -> Run:
    """Build every piece of a run at its start (epoch 0), writing nothing: data sources and loaders, the
    model (fresh, from ``settings.weights`` with a new head, or of ``checkpoint``'s configuration and
    preprocessing), EMA, optimiser, learning-rate schedule and gradient scaler. Bad data paths and empty
    classes fail here, before any work. ``started``: the ``perf_counter`` reading the session's clock
    counts from (default: now)."""
    started = time.perf_counter() if started is None else started
    world = world or DistEnv()
    if recipe.freeze_bn and settings.weights is None:
        raise ConfigError("freeze_bn keeps the BatchNorm statistics of pretrained weights, and there are none; "
                          f"give {hint('weights=', '--weights')} or set freeze_bn = false")
    compute = Compute.for_recipe(recipe, world)
    _configure_process(recipe, compute.device)
    train_source, val_source = training_sources(settings.data, val=settings.val, val_fraction=recipe.val_fraction,
                                                seed=recipe.seed, data_dir=settings.data_dir)
    skipped = SkipLog(strict=settings.strict)
    skipped.add(train_source.skipped + (val_source.skipped if val_source else []))
    model, preprocessing = _build_model(recipe, train_source.classes, settings.weights, checkpoint)
    _place_model(model, preprocessing, recipe, compute, world)
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema_decay > 0 else None
    data = _open_loaders(recipe, train_source, val_source, preprocessing, compute.device, world)

    peak_lr = recipe.scaled_lr(_global_batch(recipe, world))
    optimizer = build_optimizer(recipe, model, peak_lr)
    updates_per_epoch = math.ceil(data.batches_per_epoch / recipe.accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe, updates_per_epoch, peak_lr))
    scaler = torch.amp.GradScaler(compute.device.type, enabled=compute.amp_dtype == torch.float16)
    state = TrainState(model, ema, optimizer, scheduler, scaler, recipe, settings, train_source.classes,
                       preprocessing, skipped, world_size=world.world_size, session_start=started)
    return Run(state, data, compute, world, Path(run_dir), peak_lr)


def restore(run: Run, checkpoint: dict[str, Any]) -> None:
    """Continue ``run`` from ``checkpoint`` (:func:`load_checkpoint`): its state is loaded, the training
    batches start at the checkpoint's position, and the learning rate is recomputed for that point."""
    state = run.state
    state.restore(checkpoint, carry_sums=run.world.is_main)  # the epoch's sums are global: one rank carries them
    run.resumed = True
    # The schedule follows the data seen, so a resume on another number of processes (another global
    # batch, other updates per epoch) continues it where it stands; the recipe may have changed too
    # (e.g. a lower --lr after a NaN): recompute the current lr.
    run.data.train_batches.set_epoch(state.epoch, state.position)
    done = run.data.batches_per_epoch - len(run.data.train_batches)
    scheduler = state.scheduler
    scheduler.last_epoch = state.epoch * run.updates_per_epoch + math.ceil(done / run.recipe.accum_steps)
    scheduler.base_lrs = [run.peak_lr] * len(state.optimizer.param_groups)
    for group, factor in zip(state.optimizer.param_groups, scheduler.lr_lambdas, strict=True):
        group["lr"] = run.peak_lr * factor(scheduler.last_epoch)


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
    with _resumable(run):
        while run.state.epoch < end and (steps is None or run.state.step < steps):
            trained = train_one_epoch(run, run_log, stop=stop, until_step=steps, progress=progress)
            if not trained.complete:
                _save_last(run)
                break
            records.append(end_epoch(run, run_log, trained, progress=progress))
            if trained.stopping:
                break
    return FitResult(records, interrupted=run.state.epoch < end)


def train_one_epoch(
    run: Run, run_log: artifacts.RunLog, *, stop: StopRequest | None = None, until_step: int | None = None,
    progress: bool = False,
) -> EpochEnd:
    """Train ``run`` from its state's position to the end of the epoch, or until every process agrees to
    stop (``stop`` requested, or update ``until_step`` done). The state's step advances; on a stop within
    the epoch its position and running sums do too. Every ``checkpoint_minutes`` of the recipe last.pt is
    saved at the position reached. :func:`end_epoch` closes a complete epoch."""
    state, data, recipe = run.state, run.data, run.recipe
    stop = stop or StopRequest()
    _prepare_model(run)
    data.train_batches.set_epoch(state.epoch, state.position)
    start_position = state.position
    start_batch = data.batches_per_epoch - len(data.train_batches)
    tally = _Tally(state.partial, run.compute.device)
    bar = tqdm(total=data.batches_per_epoch, initial=start_batch, desc=f"epoch {state.epoch + 1}/{recipe.epochs}",
               unit="batch", disable=not (progress and run.world.is_main), dynamic_ncols=True, leave=True)
    batch, stopping = start_batch, False
    for images, labels, skipped in data.train_batches:
        if skipped:
            state.skipped.add(skipped)
        batch += 1
        if len(labels) == 0:
            continue
        update = batch % recipe.accum_steps == 0 or batch == data.batches_per_epoch
        _forward_backward(run, images, labels, update, tally)
        if not update:
            continue
        _optimizer_step(state, recipe.grad_clip)
        bar.update(batch - bar.n)
        if state.step % 10 == 0 or batch == data.batches_per_epoch:
            _report_progress(run, run_log, bar, tally)
        stopping, checkpoint_due = _agree(run, stop, until_step)
        if stopping:
            break
        if checkpoint_due and batch < data.batches_per_epoch:
            # A mid-epoch checkpoint is what a stop here would save: SIGKILL loses minutes, not the epoch.
            sums = tally.global_sums()
            _check_finite(sums.mean_loss, run)
            _hold_position(run, start_position + (batch - start_batch) * recipe.batch_size * run.world.world_size,
                           sums)
            _save_last(run)
    bar.close()
    sums = tally.global_sums()
    complete = not (stopping and batch < data.batches_per_epoch)
    if not complete:
        _hold_position(run, start_position + (batch - start_batch) * recipe.batch_size * run.world.world_size, sums)
    return EpochEnd(sums, tally.started, stopping, complete)


def _hold_position(run: Run, position: int, sums: EpochSums) -> None:
    """Record in the state where the epoch stands: the global sample position (all ranks' samples) and the
    running sums (carried by the main process alone: they are global)."""
    run.state.position = position
    run.state.partial = sums if run.world.is_main else EpochSums(time=sums.time)


def end_epoch(run: Run, run_log: artifacts.RunLog, trained: EpochEnd, *, progress: bool = False) -> dict[str, Any]:
    """Close the epoch :func:`train_one_epoch` completed: validate, write the epoch's record (metrics.jsonl,
    TensorBoard, a line on stderr), keep it if it is the best so far, move the state to the next epoch
    and save best.pt (when best) and last.pt. Returns the record."""
    state, sums = run.state, trained.sums
    _check_finite(sums.mean_loss, run)
    train_time = time.perf_counter() - trained.started
    record: dict[str, Any] = {
        "epoch": state.epoch + 1, "step": state.step, "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": sums.mean_loss, "train_acc": sums.accuracy,
        "train_images_per_s": round(sums.seen / max(train_time, 1e-9), 1),
    }
    record.update(validate(run, progress=progress))
    record.update(epoch_time_s=round(time.perf_counter() - trained.started, 2), time_s=round(state.elapsed_s(), 2),
                  skipped=len(state.skipped))
    is_best = state.best is None or run.data.val_batches is None or record["val_top1"] > state.best["val_top1"]
    if is_best:
        state.best = record
    run_log.epoch(record)
    _say(run.world, _epoch_line(record, run.recipe.epochs), bar_safe=True)
    state.epoch, state.position, state.partial = state.epoch + 1, 0, EpochSums()
    # best.pt before last.pt: a crash in between leaves last.pt behind best.pt, never ahead of it.
    if run.world.is_main and is_best:
        save_checkpoint(run.run_dir / BEST, state.to_checkpoint())
    _save_last(run)
    return record


def _save_last(run: Run) -> None:
    """Save last.pt (main process), verified; the one it replaces stays as last.prev.pt."""
    if run.world.is_main:
        save_checkpoint(run.run_dir / LAST, run.state.to_checkpoint(), keep_previous=run.run_dir / PREVIOUS)
    run.saved_at = time.perf_counter()


@contextlib.contextmanager
def _resumable(run: Run) -> Iterator[None]:
    """A write that failed (a full disk) says how to continue once the cause is gone."""
    try:
        yield
    except StorageError as err:
        again = hint(f"resume={str(run.run_dir)!r}", f"--resume {run.run_dir}")
        full = any(words in str(err) for words in ("no space left", "quota exceeded"))
        advice = f"free space and continue with {again}" if full else f"continue with {again} once that is fixed"
        raise StorageError(f"{err}; {advice}") from err


def validate(run: Run, *, progress: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 of the run's evaluation model (the EMA's when averaging) on the whole
    validation set, counted as :mod:`xception.evaluate` counts and summed over the processes (every
    process calls it); ``{}`` when the run has no validation set."""
    if run.data.val_batches is None:
        return {}
    state = run.state
    model = state.ema.module if state.ema is not None else state.model
    counts = count_batches(
        model, _whole_epoch(run.data.val_batches), len(state.class_names), device=run.compute.device,
        autocast=run.compute.autocast, channels_last=run.compute.channels_last, on_skipped=state.skipped.add,
        progress=progress and run.world.is_main, desc="validating", total=len(run.data.val_batches),
    ).all_reduce(all_reduce_sum)
    return {"val_loss": counts.loss, "val_top1": counts.top1, "val_top5": counts.top5}


def finish(run: Run) -> TrainResult:
    """End a run whose epochs are done: export the best checkpoint's model as model.safetensors, draw the
    loss and accuracy curves and write summary.json (main process); every process gets the result."""
    state, run_dir = run.state, run.run_dir
    elapsed = state.elapsed_s()
    exported = None
    if run.world.is_main:
        with _resumable(run):
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


def build_optimizer(recipe: Recipe, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The recipe's optimiser at learning rate ``lr``. Weight decay applies to conv and linear weights
    only: decaying BatchNorm scales and biases only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(recipe.betas[0], recipe.betas[1]), eps=recipe.eps)
    return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=recipe.eps, momentum=recipe.momentum)


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM, once :meth:`installed`, asks the loop to stop after the current update
    and save; a second Ctrl-C interrupts at once. ``requested`` may also be set directly."""

    def __init__(self) -> None:
        self.requested = False

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write("stopping after this step and saving a checkpoint (Ctrl-C again to abort at once)",
                   file=sys.stderr)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Handle SIGINT and SIGTERM within the block (signals reach only the main thread)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# -- building ----------------------------------------------------------------------------------------------


def _run_dir(recipe: Recipe, out: str | os.PathLike[str] | None, resume: str | os.PathLike[str] | None) -> Path:
    if resume is not None:
        path = Path(resume)
        return path if path.is_dir() else path.parent
    run_dir = Path(out) if out is not None else Path("runs") / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and not run_dir.is_dir():
        raise NotAFolderError(f"{run_dir} is an existing file, not a run folder; choose another "
                              + hint("out=", "--out"))
    return run_dir


def _check_fresh(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds one."""
    if has_checkpoint(run_dir):
        raise ConfigError(f"{run_dir} already holds a training run; continue it with "
                          + hint(f"resume={str(run_dir)!r} or choose another out=",
                                 f"--resume {run_dir} or choose another --out"))


def _choose_folder(recipe: Recipe, out: str | os.PathLike[str] | None,
                   resume: str | os.PathLike[str] | None) -> tuple[Path, FolderLock | None]:
    """The run folder, claimed when it exists (None: it is new, and claimed once the run is built)."""
    run_dir = _run_dir(recipe, out, resume)
    return run_dir, _claim_folder(run_dir, fresh=resume is None) if run_dir.is_dir() else None


def _claim_folder(run_dir: Path, *, fresh: bool) -> FolderLock:
    """This process's claim on ``run_dir`` (created if need be); a fresh run is refused where a run is."""
    advice = "wait for it to end" if not fresh else "wait for it to end, or " + hint("choose another out=",
                                                                                    "choose another --out")
    lock = FolderLock(run_dir, user="training", advice=advice)
    if fresh:
        try:
            _check_fresh(run_dir)
        except BaseException:
            lock.release()
            raise
    return lock


def _on_main(world: DistEnv, work: Callable[[], T]) -> T | None:
    """``work()`` on the main process (None elsewhere); the error it raises, raised on every process."""
    result, failure = None, None
    if world.is_main:
        try:
            result = work()
        except XceptionError as err:
            failure = err
    failure = broadcast_object(failure)
    if failure is not None:
        raise failure
    return result


def _configure_process(recipe: Recipe, device: torch.device) -> None:
    """Process-wide settings: the CPU allocator, the seed, deterministic algorithms or cuDNN autotuning."""
    if device.type == "cpu":
        from ..fast.memory import keep_freed_memory

        keep_freed_memory()  # each step frees and re-faults megabytes of activations otherwise (fast/memory.py)
    torch.manual_seed(recipe.seed)
    if recipe.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _build_model(
    recipe: Recipe, classes: list[str], weights: str | None, checkpoint: dict[str, Any] | None
) -> tuple[Xception, Preprocessing]:
    """The network and its preprocessing: from the checkpoint, from weights (new head), or fresh."""
    if checkpoint is not None:
        model = Xception(XceptionConfig.from_dict(checkpoint["model_config"]))
        preprocessing = Preprocessing.from_dict(checkpoint["preprocessing"])
    elif weights is not None:
        model = create_model(recipe.model, weights=weights)
        if model.config.num_classes != len(classes):
            model.reset_classifier(len(classes))
        if "drop_rate" in recipe.model_options:
            model.head.drop.p = recipe.model_options["drop_rate"]
            model.config = model.config.replace(drop_rate=recipe.model_options["drop_rate"])
        preprocessing = model.preprocessing or recipe.preprocessing()
    else:
        options = {"in_chans": len(recipe.mean), **recipe.model_options}
        model = create_model(recipe.model, num_classes=len(classes), **options)
        preprocessing = recipe.preprocessing()
    if model.config.in_chans != preprocessing.channels:
        raise ConfigError(f"the model takes {model.config.in_chans}-channel images but the preprocessing gives "
                          f"{preprocessing.channels}; make the recipe's mean/std have {model.config.in_chans} values")
    return model, preprocessing


def _place_model(model: Xception, preprocessing: Preprocessing, recipe: Recipe, compute: Compute,
                 world: DistEnv) -> None:
    """Check the input size, synchronise BatchNorm when asked, move to the device, dtype and layout."""
    size = preprocessing.input_size
    model.check_input(torch.zeros(1, preprocessing.channels, size, size))
    if recipe.sync_bn and world.distributed:
        convert_sync_batchnorm(model, compute.device)  # batch statistics over the global batch
    model.to(compute.device, compute.dtype)
    if compute.channels_last:
        model.to(memory_format=torch.channels_last)


def _open_loaders(recipe: Recipe, train_source: Source, val_source: Source | None, preprocessing: Preprocessing,
                  device: torch.device, world: DistEnv) -> RunData:
    """Training batches (this rank's shard of each epoch, resumable mid-epoch) and validation batches."""
    workers = default_workers() if recipe.workers < 0 else recipe.workers
    sampler = ResumableSampler(len(train_source), rank=world.rank, world_size=world.world_size, seed=recipe.seed)
    train_batches = train_source.batches(preprocessing, train=True, batch_size=recipe.batch_size, sampler=sampler,
                                         aug=recipe.augmentation(), seed=recipe.seed, device=device, workers=workers)
    val_batches = val_source.batches(
        preprocessing, train=False, batch_size=2 * recipe.batch_size,
        sampler=ShardSampler(len(val_source), world.rank, world.world_size), device=device, workers=workers,
    ) if val_source else None
    train_batches.set_epoch(0)
    if len(train_batches) == 0:
        raise DataError(f"{train_source.description} has {len(train_source)} images: fewer than one batch")
    return RunData(train_source, val_source, train_batches, val_batches, len(train_batches))


def _global_batch(recipe: Recipe, world: DistEnv) -> int:
    """Images per optimiser update over all processes."""
    return recipe.batch_size * recipe.accum_steps * world.world_size


def _lr_factor(recipe: Recipe, updates_per_epoch: int, peak_lr: float) -> Callable[[int], float]:
    """The schedule as LambdaLR's factor of ``peak_lr`` after a number of updates. A plain function:
    LambdaLR's state_dict leaves those out, so checkpoints hold no code."""
    return lambda update: lr_at(recipe, update / updates_per_epoch, peak_lr) / peak_lr


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _write_config(run: Run) -> None:
    """config.toml: the resolved recipe, then a [run] table of what else the run used (ignored as a recipe)."""
    settings, data = run.settings, run.data
    values = {
        "data": settings.data or "fashion-mnist", "val": settings.val or "", "weights": settings.weights or "",
        "strict": settings.strict, "train_images": len(data.train_source),
        "val_images": len(data.val_source) if data.val_source else 0, "classes": data.train_source.classes,
        "global_batch": run.global_batch, "effective_lr": run.peak_lr, "device": str(run.compute.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    lines = ["", "[run]  # what this run used besides the recipe; ignored when the file is read as a recipe"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    lines += ["", "[run.preprocessing]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in run.state.preprocessing.to_dict().items()]
    config = run.recipe.to_toml() + "\n".join(lines) + "\n"
    run.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run.run_dir / artifacts.CONFIG, lambda tmp: tmp.write_text(config))


# -- one epoch ---------------------------------------------------------------------------------------------


class _Tally:
    """The epoch's running sums, kept on the device (no host sync per batch), continuing ``partial``."""

    def __init__(self, partial: EpochSums, device: torch.device) -> None:
        self.started = time.perf_counter() - partial.time
        self.loss_sum = torch.tensor(partial.loss_sum, dtype=torch.float64, device=device)
        self.correct = torch.tensor(partial.correct, dtype=torch.long, device=device)
        self.seen = partial.seen

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.loss_sum += loss.detach().double() * len(labels)
        self.correct += (logits.detach().argmax(1) == labels).sum()
        self.seen += len(labels)

    def global_sums(self) -> EpochSums:
        """The sums over all processes (exact counts); a collective: every process calls it at the same step."""
        sums = torch.tensor([float(self.loss_sum), float(self.correct), float(self.seen)], dtype=torch.float64,
                            device=self.loss_sum.device)
        all_reduce_sum(sums)
        return EpochSums(float(sums[0]), round(float(sums[1])), round(float(sums[2])),
                         time.perf_counter() - self.started)


def _prepare_model(run: Run) -> None:
    """Freeze the backbone for fine-tuning's first epochs (or not), wrap the model for data parallelism
    and compilation when that changed, and set training mode: with the backbone frozen, or ``freeze_bn``,
    the backbone's BatchNorm layers stay in eval mode (they use and keep the pretrained statistics)."""
    model = run.state.model
    frozen = run.state.epoch < run.recipe.freeze_epochs and run.settings.weights is not None
    freeze_backbone(model, frozen)
    if frozen != run.frozen:  # DDP hooks the parameters that train: wrap again when they change
        run.frozen = frozen
        run.parallel = _data_parallel(model, run.world, run.compute.device)
        run.forward = torch.compile(run.parallel) if run.recipe.compile else run.parallel
    model.train()
    if frozen or run.recipe.freeze_bn:
        freeze_batchnorm(model)


def _forward_backward(run: Run, images: torch.Tensor, labels: torch.Tensor, update: bool, tally: _Tally) -> None:
    """One micro-batch: forward under autocast, backward of the scaled loss, sums updated."""
    compute, recipe = run.compute, run.recipe
    assert run.forward is not None, "_prepare_model runs first"
    images = images.to(compute.dtype, memory_format=compute.layout)
    # Between updates gradients accumulate locally; processes exchange them once per update.
    with _no_sync(run.parallel, not update):
        with compute.autocast():
            logits = run.forward(images)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
        run.state.scaler.scale(loss / recipe.accum_steps).backward()
    tally.add(loss, logits, labels)


def _optimizer_step(state: TrainState, clip: float) -> None:
    """Apply the accumulated gradients (clipped when ``clip`` > 0), advance the schedule, the EMA, the step."""
    if clip > 0:
        state.scaler.unscale_(state.optimizer)
        nn.utils.clip_grad_norm_(state.model.parameters(), clip)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.model)
    state.step += 1


def _report_progress(run: Run, run_log: artifacts.RunLog, bar: tqdm, tally: _Tally) -> None:
    """The running loss, accuracy, lr and speed on the progress bar and in TensorBoard; stops on NaN."""
    sums = tally.global_sums()
    _check_finite(sums.mean_loss, run)
    rate = sums.seen / max(sums.time, 1e-9)
    lr = run.state.optimizer.param_groups[0]["lr"]
    bar.set_postfix_str(f"loss {sums.mean_loss:.4f}  acc {100 * sums.accuracy:.2f} %  lr {lr:.3g}  {rate:.0f} img/s",
                        refresh=False)
    run_log.scalars(run.state.step, {"train/loss": sums.mean_loss, "train/lr": lr, "train/images_per_s": rate})


def _agree(run: Run, stop: StopRequest, until_step: int | None) -> tuple[bool, bool]:
    """Whether every process stops after this update (a stop request on any of them, or the step limit
    reached), and whether they save a mid-epoch checkpoint now (the main process's clock says
    ``checkpoint_minutes`` have passed since the last save). Data-parallel processes compare notes at every
    10th update only, so that all agree on the step."""
    minutes = run.recipe.checkpoint_minutes
    due = run.world.is_main and minutes > 0 and time.perf_counter() - run.saved_at >= 60 * minutes
    requested = stop.requested
    if run.world.distributed:
        if run.state.step % 10 == 0:
            flags = all_reduce_sum(torch.tensor([int(requested), int(due)], device=run.compute.device))
            requested, due = bool(flags[0].item()), bool(flags[1].item())
        else:
            requested = due = False
    return requested or (until_step is not None and run.state.step >= until_step), due


def _check_finite(loss: float, run: Run) -> None:
    if math.isfinite(loss):
        return
    run_dir, state = run.run_dir, run.state
    advice = "lower the learning rate (--lr) or clip gradients (--grad-clip 1)"
    if run.resumed or state.epoch > 0:
        kept = f"the last good checkpoint is {run_dir / LAST}; {advice} and continue with --resume {run_dir}"
    else:
        kept = f"no checkpoint was written yet; {advice}"
    raise NonFiniteLoss(f"the training loss became {loss} in epoch {state.epoch + 1} (step {state.step}); "
                        f"stopped: {kept}")


def _data_parallel(model: nn.Module, world: DistEnv, device: torch.device) -> nn.Module:
    """The model wrapped for data-parallel training (gradients averaged across ranks), or itself."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _no_sync(parallel: nn.Module | None, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's no_sync() when ``skip`` (a micro-batch of gradient accumulation), else nothing."""
    return parallel.no_sync() if skip and hasattr(parallel, "no_sync") else contextlib.nullcontext()


def _whole_epoch(batches: Batches) -> Iterator[Any]:
    batches.set_epoch(0)
    yield from batches


# -- the end -----------------------------------------------------------------------------------------------


def _stopped(run: Run) -> TrainResult:
    """The result of a run stopped before its last epoch (its last.pt saved)."""
    state = run.state
    elapsed = state.elapsed_s()
    _say(run.world, f"stopped in epoch {state.epoch + 1}; saved {run.run_dir / LAST}\n"
                    f"continue with: xception train --resume {run.run_dir}")
    return TrainResult(run.run_dir, None, state.epoch, state.best, True, state.skipped.counts(), elapsed)


def _export_best(run_dir: Path, best: dict[str, Any] | None, classes: list[str], preprocessing: Preprocessing,
                 use_ema: bool, dataset: str) -> Path:
    """Write the best checkpoint's evaluation weights (the EMA's when averaging) as model.safetensors."""
    if not (run_dir / BEST).is_file():
        log.warning("%s is missing: exporting the last epoch's model instead", run_dir / BEST)
    checkpoint = load_checkpoint(run_dir / (BEST if (run_dir / BEST).is_file() else LAST))
    model = Xception(XceptionConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k != "updates"}
                          if use_ema else checkpoint["model"])
    metrics = {"dataset": dataset, "epoch": best["epoch"] if best else None, "ema": use_ema}
    if best is not None:
        metrics.update({k: best[k] for k in ("val_top1", "val_top5", "val_loss", "train_loss") if k in best})
    save_weights(model, run_dir / EXPORT, model_name=checkpoint["recipe"]["model"], class_names=classes,
                 preprocessing=preprocessing, source=f"trained: {run_dir}", sha256="", metrics=metrics)
    return run_dir / EXPORT


# -- messages ----------------------------------------------------------------------------------------------


def _started_message(run: Run) -> str:
    state = run.state
    resumed = f" (resumed in epoch {state.epoch + 1})" if run.resumed else ""
    return (f"training {state.model.config.arch} ({_count(state.model)} parameters) on "
            f"{run.data.train_source.description}: {len(state.class_names)} classes, "
            f"{state.preprocessing.input_size} px, batch {run.global_batch}, lr {run.peak_lr:g}, "
            f"{run.recipe.epochs} epochs, {run.compute.device}{resumed}\nrun folder: {run.run_dir}")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"acc {100 * record['train_acc']:.2f} %")
    if "val_top1" in record:
        text += f"; val loss {record['val_loss']:.4f}, top-1 {100 * record['val_top1']:.2f} %"
    return text + f"; {record['epoch_time_s']:.0f} s"


def _say(world: DistEnv, text: str, bar_safe: bool = False) -> None:
    if world.is_main:
        tqdm.write(text, file=sys.stderr) if bar_safe else print(text, file=sys.stderr, flush=True)


def _count(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _text(value: str | os.PathLike[str] | None) -> str | None:
    return None if value is None else str(value)

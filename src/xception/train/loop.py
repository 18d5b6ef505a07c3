"""The training loop: :func:`train`, readable top to bottom, and the phases it runs, each usable alone.

    >>> from xception.train import load_recipe, train
    >>> result = train(load_recipe("fashion-mnist"))             # the embedded default
    >>> result = train(load_recipe("modern").replace(epochs=30), "data/flowers", weights="xception.safetensors")

:func:`train` runs :func:`~xception.train.run.open_run` (:mod:`xception.train.run`: the folder, data, model
and optimiser, built fresh or restored from a checkpoint) → :func:`fit` (per epoch :func:`train_one_epoch`,
then :func:`end_epoch`, which calls :func:`validate`) → :func:`finish` (export of the best model, plots,
summary). The phases serve other experiments as they are:

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

import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..data import Batches
from ..distributed import DistEnv, all_reduce_sum, barrier, distributed, restarted_by_torchrun
from ..errors import StorageError, XceptionError, hint
from ..evaluate import Counts, count_batches  # validation counts exactly as evaluation does
from ..fileio import atomic_write
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..runtime import resolve_device
from ..tables import plural
from ..weights import save_weights
from ..weights.checkpoint import BEST, EXPORT, LAST, PREVIOUS, evaluation_state, export_metrics
from . import artifacts
from .checkpoint import (
    EpochSums,
    RunSettings,
    TrainState,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .finetune import freeze_backbone, freeze_batchnorm
from .precise_bn import update_statistics
from .recipe import Recipe
from .run import Run, RunFinished, _say, open_run

log = logging.getLogger("xception.train")


class NonFiniteLoss(XceptionError, ValueError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """The outcome of :func:`train`."""

    run_dir: Path
    weights: Path | None  # the best model (so far, when interrupted; None when no epoch was completed)
    epochs_done: int
    best: dict[str, Any] | None  # the best epoch's metrics record
    interrupted: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    stop_signal: int | None = None  # the signal that stopped it (SIGINT, SIGTERM), if one did
    nothing_to_do: bool = False  # a resume of a run that had finished: nothing was done


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
            return _stopped(run, stop) if done.interrupted else finish(run)
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
    """Close the epoch :func:`train_one_epoch` completed: recompute the BatchNorm statistics when the recipe's
    ``precise_bn`` says so (:mod:`xception.train.precise_bn`), validate, write the epoch's record
    (metrics.jsonl, TensorBoard, a line on stderr, a warning when validation sits at chance while training
    accuracy is well above it), keep it if it is the best so far, move the state to the next epoch and save
    best.pt (when best) and last.pt. Returns the record."""
    state, sums = run.state, trained.sums
    _check_finite(sums.mean_loss, run)
    train_time = time.perf_counter() - trained.started
    record: dict[str, Any] = {
        "epoch": state.epoch + 1, "step": state.step, "lr": state.optimizer.param_groups[0]["lr"],
        "train_loss": sums.mean_loss, "train_acc": sums.accuracy,
        "train_images_per_s": round(sums.seen / max(train_time, 1e-9), 1),
    }
    recomputed = update_statistics(run)  # precise_bn: the statistics of the weights validated and saved
    counts = _validation_counts(run, progress=progress)
    record.update(_validation_metrics(counts))
    record.update(epoch_time_s=round(time.perf_counter() - trained.started, 2), time_s=round(state.elapsed_s(), 2),
                  skipped=len(state.skipped))
    is_best = state.best is None or run.data.val_batches is None or record["val_top1"] > state.best["val_top1"]
    if is_best:
        state.best = record
    run_log.epoch(record)
    _say(run.world, _epoch_line(record, run.recipe.epochs), bar_safe=True)
    _warn_at_chance(run, record, counts, recomputed)
    state.epoch, state.position, state.partial = state.epoch + 1, 0, EpochSums()
    # best.pt before last.pt: a crash in between leaves last.pt behind best.pt, never ahead of it.
    if run.world.is_main and is_best:
        save_checkpoint(run.run_dir / BEST, state.to_checkpoint())
        _export_model(run)  # the best model so far, usable whenever the run stops
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
    process calls it); ``{}`` when the run has no validation set. :func:`end_epoch` first recomputes
    the BatchNorm statistics when the recipe's ``precise_bn`` says so (:mod:`xception.train.precise_bn`)."""
    return _validation_metrics(_validation_counts(run, progress=progress))


def _validation_counts(run: Run, *, progress: bool = False) -> Counts | None:
    """The evaluation model's counts on the whole validation set, over all processes (None: no such set)."""
    if run.data.val_batches is None:
        return None
    state = run.state
    model = state.ema.module if state.ema is not None else state.model
    return count_batches(
        model, _whole_epoch(run.data.val_batches), len(state.class_names), device=run.compute.device,
        autocast=run.compute.autocast, channels_last=run.compute.channels_last, on_skipped=state.skipped.add,
        progress=progress and run.world.is_main, desc="validating", total=len(run.data.val_batches),
    ).all_reduce(all_reduce_sum)


def _validation_metrics(counts: Counts | None) -> dict[str, float]:
    if counts is None:
        return {}
    return {"val_loss": counts.loss, "val_top1": counts.top1, "val_top5": counts.top5}


def _warn_at_chance(run: Run, record: dict[str, Any], counts: Counts | None, recomputed: bool) -> None:
    """One line on stderr when validation sits at chance while training accuracy is well above it: what
    it means and what to try. Chance is always answering the largest validation class (1 / classes when
    balanced); "at" it is within two standard deviations of a guess's accuracy on that many images, "well
    above" it is more than half-way from chance to 100 %."""
    if counts is None or counts.total == 0 or counts.num_classes < 2:
        return
    chance = int(counts.confusion.sum(1).max()) / counts.total
    noise = math.sqrt(chance * (1 - chance) / counts.total)
    top1, train_acc = record["val_top1"], record["train_acc"]
    if top1 > chance + 2 * noise or train_acc < chance + (1 - chance) / 2:
        return
    if recomputed or run.recipe.precise_bn == "on":
        advice = ("the model fits the training images without learning what tells the classes apart: try more "
                  "images per class, pretrained --weights, stronger augmentation or fewer epochs, and check that "
                  "the validation images are labelled as the training ones are")
    else:
        advice = ("the BatchNorm statistics used in evaluation may not describe the trained weights (they "
                  "settle over about 100 updates): try --set precise_bn=on, which measures them on training "
                  "batches; if it stays at chance, more images per class or pretrained --weights")
    _say(run.world, f"warning: validation top-1 {100 * top1:.2f} % is at chance ({100 * chance:.2f} %) while "
                    f"training accuracy is {100 * train_acc:.2f} %: {advice}", bar_safe=True)


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


class Aborted(KeyboardInterrupt):
    """A second stop signal: the run ends at once, without saving (its last checkpoint stays)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM, once :meth:`installed`, asks the loop to stop after the current update
    and save; ``signum`` says which came (the exit status is 128 + it). A second one interrupts at once
    (:class:`Aborted`). ``requested`` may also be set directly."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Aborted(signum)
        self.requested, self.signum = True, signum
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


# -- one epoch -------------------------------------------------------------------------------------------------


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


# -- the end ---------------------------------------------------------------------------------------------------


def _stopped(run: Run, stop: StopRequest | None = None) -> TrainResult:
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


def _export_model(run: Run) -> Path:
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

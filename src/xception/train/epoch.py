"""One epoch of training: :func:`train_one_epoch` runs the updates from the state's position to the end of the
epoch (or to an agreed stop), keeping the running sums, the step and, every ``checkpoint_minutes``, last.pt.

Data-parallel runs (:mod:`xception.distributed`): the running sums are summed across processes, the
processes agree on a stop every 10th update, and last.pt stores the global sample position reached."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from ..distributed import DistEnv, all_reduce_sum
from ..errors import XceptionError
from ..weights.checkpoint import LAST, PREVIOUS
from . import artifacts
from .checkpoint import EpochSums, TrainState, save_checkpoint
from .finetune import freeze_backbone, freeze_batchnorm
from .mixing import Mixed, batch_generator, mix_batch
from .run import Run
from .stop import StopRequest


class NonFiniteLoss(XceptionError, ValueError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


@dataclass
class EpochEnd:
    """Where :func:`train_one_epoch` stopped: the epoch's sums over all processes (earlier sessions
    included), the ``perf_counter`` reading its clock counts from, whether a stop was agreed, and whether
    the epoch's batches are all done."""

    sums: EpochSums
    started: float
    stopping: bool
    complete: bool


def train_one_epoch(
    run: Run, run_log: artifacts.RunLog, *, stop: StopRequest | None = None, until_step: int | None = None,
    progress: bool = False,
) -> EpochEnd:
    """Train ``run`` from its state's position to the end of the epoch, or until every process agrees to
    stop (``stop`` requested, or update ``until_step`` done). The state's step advances; on a stop within
    the epoch its position and running sums do too. Every ``checkpoint_minutes`` of the recipe last.pt is
    saved at the position reached. :func:`~xception.train.loop.end_epoch` closes a complete epoch."""
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
        _forward_backward(run, images, labels, update, tally, batch)
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
            check_finite(sums.mean_loss, run)
            _hold_position(run, start_position + (batch - start_batch) * recipe.batch_size * run.world.world_size,
                           sums)
            save_last(run)
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


def save_last(run: Run) -> None:
    """Save last.pt (main process), verified; the one it replaces stays as last.prev.pt."""
    if run.world.is_main:
        save_checkpoint(run.run_dir / LAST, run.state.to_checkpoint(), keep_previous=run.run_dir / PREVIOUS)
    run.saved_at = time.perf_counter()


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


def _forward_backward(run: Run, images: torch.Tensor, labels: torch.Tensor, update: bool, tally: _Tally,
                      batch: int) -> None:
    """One micro-batch (the epoch's ``batch``-th): mixed if the recipe says so, forward under autocast, backward
    of the scaled loss, sums updated (the accuracy counts each image's own label)."""
    compute, recipe = run.compute, run.recipe
    assert run.forward is not None, "_prepare_model runs first"
    mixing = recipe.mixing()
    mixed = mix_batch(images, mixing, batch_generator(recipe.seed, run.world.rank, run.state.epoch, batch)) \
        if mixing.on else Mixed(images)
    images = mixed.images.to(compute.dtype, memory_format=compute.layout)
    # Between updates gradients accumulate locally; processes exchange them once per update.
    with _no_sync(run.parallel, not update):
        with compute.autocast():
            logits = run.forward(images)
            loss = mixed.loss(logits.float(), labels, label_smoothing=recipe.label_smoothing)
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
    check_finite(sums.mean_loss, run)
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


def check_finite(loss: float, run: Run) -> None:
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

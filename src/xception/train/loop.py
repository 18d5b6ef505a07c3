"""The training loop: one function, :func:`train`, readable top to bottom.

    >>> from xception.train import load_recipe, train
    >>> result = train(load_recipe("fashion-mnist"))             # the embedded default
    >>> result = train(load_recipe("modern").replace(epochs=30), "data/flowers", weights="xception.safetensors")

Order of work: settings → data (fails fast on bad paths) → model → optimiser → resume → epochs (train,
validate, log, checkpoint) → export of the best model. What a data-parallel run changes is reached
through :mod:`xception.train.ddp`: the rank and world size (:class:`DistEnv`) shard the data through a
:class:`ResumableSampler`, evaluation counts are summed across processes, only the main process writes
files, and checkpoints store the global sample position reached in the epoch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..api import create_model
from ..data import ShardSampler, SkipLog, training_sources
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
from ..evaluate import count_batches, resolve_device
from ..fileio import atomic_write
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..weights import save_weights
from . import artifacts
from .checkpoint import BEST, LAST, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .ema import ModelEma
from .recipe import Recipe
from .schedule import lr_at

log = logging.getLogger("xception.train")

EXPORT = "model.safetensors"


class NonFiniteLoss(ValueError):
    """The loss became NaN or infinite: training stopped, the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: Path
    weights: Path | None  # the exported best model (None when interrupted before the end)
    epochs_done: int
    best: dict[str, Any] | None  # the best epoch's metrics record
    interrupted: bool = False
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


@dataclass
class RunSettings:
    """Where a run reads and writes: stored in checkpoints so ``--resume`` needs nothing else."""

    data: str | None = None
    val: str | None = None
    data_dir: str | None = None
    weights: str | None = None
    strict: bool = False


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
    """
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    # Under torchrun (one process per GPU or CPU slot) join the process group; leave it when done.
    joined = dist is None and launched_by_torchrun()
    dist = dist or init_distributed(resolve_device(recipe.device))
    if resume is None and out is not None and restarted_by_torchrun() and (Path(out) / LAST).is_file():
        resume = out  # torchrun --max-restarts relaunched the job after a failure: continue from the checkpoint
    try:
        return _train(recipe, data, val=val, data_dir=data_dir, out=out, weights=weights, resume=resume,
                      strict=strict, progress=progress, dist=dist)
    finally:
        torch.use_deterministic_algorithms(deterministic_before)
        if joined:
            shutdown_distributed()


def _train(
    recipe: Recipe, data: str | os.PathLike[str] | None, *, val: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str] | None, out: str | os.PathLike[str] | None,
    weights: str | os.PathLike[str] | None, resume: str | os.PathLike[str] | None, strict: bool, progress: bool,
    dist: DistEnv | None,
) -> TrainResult:
    started = time.perf_counter()
    checkpoint = load_checkpoint(resume) if resume is not None else None
    settings = RunSettings(**checkpoint["run"]) if checkpoint else RunSettings(
        data=None if data is None else str(data), val=None if val is None else str(val),
        data_dir=None if data_dir is None else str(data_dir), weights=None if weights is None else str(weights),
        strict=strict,
    )
    run_dir = broadcast_object(_run_dir(recipe, out, resume) if dist.is_main else None)  # one folder for all ranks
    device = resolve_device(recipe.device)
    if device.type == "cuda" and dist.distributed:
        device = torch.device("cuda", dist.local_rank)
    if device.type == "cpu":
        from ..fast.memory import keep_freed_memory

        keep_freed_memory()  # each step frees and re-faults megabytes of activations otherwise (fast/memory.py)
    _seed_everything(recipe, device)

    # -- data: bad paths and empty classes fail here, before any work ----------------------------------
    train_src, val_src = training_sources(settings.data, val=settings.val, val_fraction=recipe.val_fraction,
                                          seed=recipe.seed, data_dir=settings.data_dir)
    skip_log = SkipLog(strict=settings.strict)
    skip_log.add(train_src.skipped + (val_src.skipped if val_src else []))
    classes = train_src.classes

    # -- model -----------------------------------------------------------------------------------------
    model, pre = _build_model(recipe, classes, settings.weights, checkpoint)
    model.check_input(torch.zeros(1, pre.channels, pre.input_size, pre.input_size))
    # NHWC is faster for these depthwise-separable convs on GPUs and on CPUs (oneDNN) alike (benchmarks/NOTES.md).
    channels_last = recipe.channels_last == "on" or (recipe.channels_last == "auto" and device.type in ("cuda", "cpu"))
    if recipe.sync_bn and dist.distributed:
        convert_sync_batchnorm(model, device)  # batch statistics over the global batch
    dtype = torch.float64 if recipe.precision == "float64" else torch.float32
    layout = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, dtype)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, recipe.ema_decay) if recipe.ema_decay > 0 else None

    workers = default_workers() if recipe.workers < 0 else recipe.workers
    sampler = ResumableSampler(len(train_src), rank=dist.rank, world_size=dist.world_size, seed=recipe.seed)
    train_batches = train_src.batches(pre, train=True, batch_size=recipe.batch_size, sampler=sampler,
                                      aug=recipe.augmentation(), seed=recipe.seed, device=device, workers=workers)
    val_batches = val_src.batches(
        pre, train=False, batch_size=2 * recipe.batch_size, sampler=ShardSampler(len(val_src), dist.rank,
                                                                                   dist.world_size),
        device=device, workers=workers,
    ) if val_src else None
    # Samples all processes together consume per batch: positions in an epoch are counted in these.
    stride = recipe.batch_size * dist.world_size
    train_batches.set_epoch(0)
    batches_per_epoch = len(train_batches)
    if batches_per_epoch == 0:
        raise ValueError(f"{train_src.description} has {len(train_src)} images: fewer than one batch")
    updates_per_epoch = math.ceil(batches_per_epoch / recipe.accum_steps)

    # -- optimisation ----------------------------------------------------------------------------------
    global_batch = recipe.batch_size * recipe.accum_steps * dist.world_size
    peak_lr = recipe.scaled_lr(global_batch)
    optimizer = _optimizer(recipe, model, peak_lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda update: lr_at(recipe, update / updates_per_epoch, peak_lr) / peak_lr
    )
    amp_dtype = _amp_dtype(recipe.amp, device) if dtype == torch.float32 else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        return torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    # -- where we start ---------------------------------------------------------------------------------
    epoch, position, step, best = 0, 0, 0, None  # position: samples of the epoch consumed by all ranks
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        if ema is not None and checkpoint.get("ema") is not None:
            ema.load_state_dict(checkpoint["ema"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        set_rng_state(checkpoint["rng"])
        epoch, step, position = checkpoint["epoch"], checkpoint["step"], checkpoint["position"]
        best, partial = checkpoint["best"], checkpoint["partial"]
        if not dist.is_main:  # the epoch's running sums are global: one rank carries them on
            partial = {**partial, "loss_sum": 0.0, "correct": 0, "seen": 0}
        # The schedule follows the data seen, so a resume on another number of processes (another global
        # batch, other updates per epoch) continues it where it stands; the recipe may have changed too
        # (e.g. a lower --lr after a NaN): recompute the current lr.
        train_batches.set_epoch(epoch, position)
        done = batches_per_epoch - len(train_batches)
        scheduler.last_epoch = epoch * updates_per_epoch + math.ceil(done / recipe.accum_steps)
        scheduler.base_lrs = [peak_lr] * len(optimizer.param_groups)
        for group, factor in zip(optimizer.param_groups, scheduler.lr_lambdas, strict=True):
            group["lr"] = peak_lr * factor(scheduler.last_epoch)
        for item in checkpoint.get("skipped", []):
            skip_log.seen.setdefault(item["path"], _skipped(item))
    elapsed_before = checkpoint["elapsed_s"] if checkpoint else 0.0

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config = recipe.to_toml() + _run_table(settings, train_src, val_src, pre, global_batch, peak_lr, device)
        atomic_write(run_dir / artifacts.CONFIG, lambda tmp: tmp.write_text(config))
    run_log = artifacts.RunLog(run_dir, enabled=dist.is_main, resume_epoch=epoch if checkpoint else None,
                               resume_step=step)
    resumed = f" (resumed in epoch {epoch + 1})" if checkpoint else ""
    started_message = (f"training {model.config.arch} ({_count(model)} parameters) on {train_src.description}: "
                       f"{len(classes)} classes, {pre.input_size} px, batch {global_batch}, lr {peak_lr:g}, "
                       f"{recipe.epochs} epochs, {device}{resumed}\nrun folder: {run_dir}")

    def state(epoch_: int, position_: int, partial_: dict[str, Any]) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": rng_state(), "epoch": epoch_, "position": position_, "world_size": dist.world_size,
            "step": step, "best": best, "partial": partial_,
            "recipe": recipe.to_dict(), "run": vars(settings), "model_config": model.config.to_dict(),
            "class_names": classes, "preprocessing": pre.to_dict(),
            "skipped": [vars(s) for s in skip_log.seen.values()],
            "elapsed_s": elapsed_before + time.perf_counter() - started,
        }

    stop = _StopRequest()
    interrupted = stopping = False
    forward, parallel, frozen = model, None, None
    try:
        with stop.installed():
            _say(dist, started_message)  # from here on, Ctrl-C stops cleanly with a checkpoint
            while epoch < recipe.epochs:
                now_frozen = _freeze_backbone(model, epoch < recipe.freeze_epochs and settings.weights is not None)
                if now_frozen != frozen:  # DDP hooks the parameters that train: wrap again when they change
                    frozen, parallel = now_frozen, None
                    parallel = _data_parallel(model, dist, device)
                    forward = torch.compile(parallel) if recipe.compile else parallel
                train_batches.set_epoch(epoch, position)
                start_batch = batches_per_epoch - len(train_batches)
                model.train()
                if frozen:
                    _backbone_eval(model)
                epoch_start = time.perf_counter() - partial["time"]
                loss_sum = torch.tensor(partial["loss_sum"], dtype=torch.float64, device=device)
                correct = torch.tensor(partial["correct"], dtype=torch.long, device=device)
                seen, batch = partial["seen"], start_batch
                bar = tqdm(total=batches_per_epoch, initial=start_batch, desc=f"epoch {epoch + 1}/{recipe.epochs}",
                           unit="batch", disable=not (progress and dist.is_main), dynamic_ncols=True, leave=True)
                for images, labels, skipped in train_batches:
                    if skipped:
                        skip_log.add(skipped)
                    batch += 1
                    if len(labels) == 0:
                        continue
                    images = images.to(dtype, memory_format=layout)
                    update = batch % recipe.accum_steps == 0 or batch == batches_per_epoch
                    # Between updates gradients accumulate locally; processes exchange them once per update.
                    with _no_sync(parallel, not update):
                        with autocast():
                            logits = forward(images)
                            loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
                        scaler.scale(loss / recipe.accum_steps).backward()
                    loss_sum += loss.detach().double() * len(labels)
                    correct += (logits.detach().argmax(1) == labels).sum()
                    seen += len(labels)
                    if not update:
                        continue
                    _update(model, optimizer, scaler, recipe.grad_clip)
                    scheduler.step()
                    if ema is not None:
                        ema.update(model)
                    step += 1
                    bar.update(batch - bar.n)
                    if step % 10 == 0 or batch == batches_per_epoch:
                        g_loss, g_correct, g_seen = _global_sums(loss_sum, correct, seen)
                        mean_loss = g_loss / max(g_seen, 1)
                        _check_finite(mean_loss, epoch, step, run_dir, checkpoint is not None or epoch > 0)
                        rate = g_seen / max(time.perf_counter() - epoch_start, 1e-9)
                        lr = optimizer.param_groups[0]["lr"]
                        bar.set_postfix_str(f"loss {mean_loss:.4f}  acc {100 * g_correct / max(g_seen, 1):.2f} %  "
                                            f"lr {lr:.3g}  {rate:.0f} img/s", refresh=False)
                        run_log.scalars(step, {"train/loss": mean_loss, "train/lr": lr, "train/images_per_s": rate})
                    if not dist.distributed or step % 10 == 0:  # ranks agree on the step to stop at
                        stopping = _any_rank(stop.requested, dist, device)
                    if stopping:
                        break
                bar.close()
                g_loss, g_correct, g_seen = _global_sums(loss_sum, correct, seen)

                if stopping and batch < batches_per_epoch:
                    partial_ = {"loss_sum": g_loss, "correct": g_correct, "seen": g_seen,
                                "time": time.perf_counter() - epoch_start}
                    if dist.is_main:
                        save_checkpoint(run_dir / LAST, state(epoch, position + (batch - start_batch) * stride,
                                                              partial_))
                    interrupted = True
                    break

                # -- end of epoch: validate, log, checkpoint ------------------------------------------
                train_loss = g_loss / max(g_seen, 1)
                _check_finite(train_loss, epoch, step, run_dir, checkpoint is not None or epoch > 0)
                train_time = time.perf_counter() - epoch_start
                record: dict[str, Any] = {
                    "epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                    "train_loss": train_loss, "train_acc": g_correct / max(g_seen, 1),
                    "train_images_per_s": round(g_seen / max(train_time, 1e-9), 1),
                }
                if val_batches is not None:
                    eval_model = ema.module if ema is not None else model
                    counts = count_batches(
                        eval_model, _epoch_batches(val_batches), len(classes), device=device, autocast=autocast,
                        channels_last=channels_last, on_skipped=skip_log.add, progress=progress and dist.is_main,
                        desc="validating", total=len(val_batches),
                    ).all_reduce(all_reduce_sum)
                    record.update(val_loss=counts.loss, val_top1=counts.top1, val_top5=counts.top5)
                record.update(epoch_time_s=round(time.perf_counter() - epoch_start, 2),
                              time_s=round(elapsed_before + time.perf_counter() - started, 2), skipped=len(skip_log))
                is_best = best is None or val_batches is None or record["val_top1"] > best["val_top1"]
                if is_best:
                    best = record
                run_log.epoch(record)
                _say(dist, _epoch_line(record, recipe.epochs), bar_safe=True)
                epoch, position = epoch + 1, 0
                partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "time": 0.0}
                if dist.is_main:
                    # best.pt before last.pt: a crash in between leaves last.pt behind best.pt, never ahead of it.
                    if is_best:
                        save_checkpoint(run_dir / BEST, state(epoch, 0, partial))
                    save_checkpoint(run_dir / LAST, state(epoch, 0, partial))
                if stopping:
                    interrupted = epoch < recipe.epochs
                    break
    finally:
        run_log.close()

    elapsed = elapsed_before + time.perf_counter() - started
    if interrupted:
        _say(dist, f"stopped in epoch {epoch + 1}; saved {run_dir / LAST}\n"
                   f"continue with: xception train --resume {run_dir}")
        return TrainResult(run_dir, None, epoch, best, True, skip_log.counts(), elapsed)

    exported = None
    if dist.is_main:
        exported = _export_best(run_dir, best, classes, pre, ema is not None, train_src.description)
        records = artifacts.read_metrics(run_dir)
        artifacts.plot_curves(records, run_dir)
        summary = {"best": best, "epochs": epoch, "weights": str(exported), "skipped": skip_log.counts(),
                   "skipped_files": [vars(s) for s in skip_log.seen.values()], "elapsed_s": round(elapsed, 1)}
        atomic_write(run_dir / artifacts.SUMMARY, lambda tmp: tmp.write_text(json.dumps(summary, indent=2)))
        if skip_log:
            _say(dist, "skipped unreadable files: " + ", ".join(f"{n} {r}" for r, n in skip_log.counts().items()))
        _say(dist, f"done in {elapsed / 60:.1f} min; best model (epoch {best['epoch'] if best else '?'}): {exported}")
    barrier()
    return TrainResult(run_dir, exported, epoch, best, False, skip_log.counts(), elapsed)


def resume_settings(path: str | os.PathLike[str]) -> tuple[Recipe, RunSettings]:
    """The recipe and run settings stored in a run folder's checkpoint (to resume it, or inspect it)."""
    checkpoint = load_checkpoint(path)
    return Recipe.from_dict(checkpoint["recipe"]), RunSettings(**checkpoint["run"])


# -- pieces of the loop ------------------------------------------------------------------------------------


def _data_parallel(model: nn.Module, dist: DistEnv, device: torch.device) -> nn.Module:
    """The model wrapped for data-parallel training (gradients averaged across ranks), or itself."""
    if not dist.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _no_sync(parallel: nn.Module | None, skip: bool) -> contextlib.AbstractContextManager[Any]:
    """DDP's no_sync() when ``skip`` (a micro-batch of gradient accumulation), else nothing."""
    return parallel.no_sync() if skip and hasattr(parallel, "no_sync") else contextlib.nullcontext()


def _global_sums(loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, int, int]:
    """The epoch's running loss sum, correct count and sample count over all ranks (exact counts)."""
    sums = torch.tensor([float(loss_sum), float(correct), float(seen)], dtype=torch.float64, device=loss_sum.device)
    all_reduce_sum(sums)
    return float(sums[0]), round(float(sums[1])), round(float(sums[2]))


def _any_rank(flag: bool, dist: DistEnv, device: torch.device) -> bool:
    """True on every rank when it is true on one (a stop request reaches the ranks at different steps)."""
    if not dist.distributed:
        return flag
    return bool(all_reduce_sum(torch.tensor([int(flag)], device=device)).item())


def _run_dir(recipe: Recipe, out: str | os.PathLike[str] | None, resume: str | os.PathLike[str] | None) -> Path:
    if resume is not None:
        path = Path(resume)
        return path if path.is_dir() else path.parent
    run_dir = Path(out) if out is not None else Path("runs") / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if (run_dir / LAST).exists():
        raise ValueError(f"{run_dir} already holds a training run; continue it with --resume {run_dir} "
                         "or choose another --out")
    return run_dir


def _seed_everything(recipe: Recipe, device: torch.device) -> None:
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
        pre = Preprocessing.from_dict(checkpoint["preprocessing"])
    elif weights is not None:
        model = create_model(recipe.model, weights=weights)
        if model.config.num_classes != len(classes):
            model.reset_classifier(len(classes))
        if "drop_rate" in recipe.model_options:
            model.head.drop.p = recipe.model_options["drop_rate"]
            model.config = model.config.replace(drop_rate=recipe.model_options["drop_rate"])
        pre = model.preprocessing or recipe.preprocessing()
        model.weights_meta = None  # the exported file describes this run, not the starting weights
    else:
        options = {"in_chans": len(recipe.mean), **recipe.model_options}
        model = create_model(recipe.model, num_classes=len(classes), **options)
        pre = recipe.preprocessing()
    if model.config.in_chans != pre.channels:
        raise ValueError(f"the model takes {model.config.in_chans}-channel images but the preprocessing gives "
                         f"{pre.channels}; make the recipe's mean/std have {model.config.in_chans} values")
    model.class_names, model.preprocessing = list(classes), pre
    return model, pre


def _optimizer(recipe: Recipe, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Weight decay on conv and linear weights only: decaying BatchNorm scales and biases only hurts."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(recipe.betas[0], recipe.betas[1]), eps=recipe.eps)
    return torch.optim.RMSprop(groups, lr=lr, alpha=0.9, eps=recipe.eps, momentum=recipe.momentum)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}[amp]


def _update(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, clip: float) -> None:
    if clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def _freeze_backbone(model: Xception, frozen: bool) -> bool:
    """Train only the classifier (fine-tuning's first epochs) or everything."""
    for name, param in model.named_parameters():
        param.requires_grad_(not frozen or name.startswith("head."))
    return frozen


def _backbone_eval(model: Xception) -> None:
    """A frozen backbone keeps its BatchNorm statistics too."""
    for name, module in model.named_children():
        if name != "head":
            module.eval()


def _check_finite(loss: float, epoch: int, step: int, run_dir: Path, has_checkpoint: bool) -> None:
    if math.isfinite(loss):
        return
    kept = (f"the last good checkpoint is {run_dir / LAST}; lower the learning rate (--lr) or clip gradients "
            f"(--grad-clip 1) and continue with --resume {run_dir}") if has_checkpoint else (
        "no checkpoint was written yet; lower the learning rate (--lr) or clip gradients (--grad-clip 1)")
    raise NonFiniteLoss(f"the training loss became {loss} in epoch {epoch + 1} (step {step}); stopped: {kept}")


def _epoch_batches(batches: Any) -> Iterator[Any]:
    batches.set_epoch(0)
    yield from batches


def _export_best(run_dir: Path, best: dict[str, Any] | None, classes: list[str], pre: Preprocessing,
                 use_ema: bool, dataset: str) -> Path:
    """Write the best checkpoint's evaluation weights (the EMA's when averaging) as model.safetensors."""
    if not (run_dir / BEST).is_file():
        log.warning("%s is missing: exporting the last epoch's model instead", run_dir / BEST)
    state = load_checkpoint(run_dir / (BEST if (run_dir / BEST).is_file() else LAST))
    model = Xception(XceptionConfig.from_dict(state["model_config"]))
    model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items() if k != "updates"}
                          if use_ema else state["model"])
    metrics = {"dataset": dataset, "epoch": best["epoch"] if best else None, "ema": use_ema}
    if best is not None:
        metrics.update({k: best[k] for k in ("val_top1", "val_top5", "val_loss", "train_loss") if k in best})
    save_weights(model, run_dir / EXPORT, model_name=state["recipe"]["model"], class_names=classes,
                 preprocessing=pre, source=f"trained: {run_dir}", metrics=metrics)
    return run_dir / EXPORT


def _run_table(settings: RunSettings, train_src: Any, val_src: Any, pre: Preprocessing, global_batch: int,
               peak_lr: float, device: torch.device) -> str:
    """The [run] table of config.toml: what this run used besides the recipe (ignored as a recipe)."""
    from .recipe import toml_value

    values = {
        "data": settings.data or "fashion-mnist", "val": settings.val or "", "weights": settings.weights or "",
        "strict": settings.strict, "train_images": len(train_src), "val_images": len(val_src) if val_src else 0,
        "classes": train_src.classes, "global_batch": global_batch, "effective_lr": peak_lr, "device": str(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    lines = ["", "[run]  # what this run used besides the recipe; ignored when the file is read as a recipe"]
    lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    lines += ["", "[run.preprocessing]"] + [f"{k} = {toml_value(v)}" for k, v in pre.to_dict().items()]
    return "\n".join(lines) + "\n"


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    text = (f"epoch {record['epoch']}/{epochs}: train loss {record['train_loss']:.4f}, "
            f"acc {100 * record['train_acc']:.2f} %")
    if "val_top1" in record:
        text += f"; val loss {record['val_loss']:.4f}, top-1 {100 * record['val_top1']:.2f} %"
    return text + f"; {record['epoch_time_s']:.0f} s"


def _say(dist: DistEnv, text: str, bar_safe: bool = False) -> None:
    if dist.is_main:
        tqdm.write(text, file=sys.stderr) if bar_safe else print(text, file=sys.stderr, flush=True)


def _count(model: nn.Module) -> str:
    n = sum(p.numel() for p in model.parameters())
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def _skipped(item: dict[str, str]) -> Any:
    from ..data import Skipped

    return Skipped(**item)


class _StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current update and save; a second
    Ctrl-C interrupts at once."""

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
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


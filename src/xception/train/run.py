"""Opening a training run: its folder, data, model, optimiser and schedule, fresh or from a checkpoint.

    >>> run = open_run(recipe, RunSettings(data="data/flowers"), out="runs/a")
    >>> recipe, _ = resume_settings("runs/a")
    >>> run = open_run(recipe, resume="runs/a")          # continues where it stopped

:func:`open_run` chooses and claims the run folder (:mod:`.folder`), then :func:`build_run` builds every piece (writing
nothing) and, when resuming, :func:`restore` moves them to the checkpoint's point. The :class:`Run` it
returns is what :mod:`xception.train.loop` trains: a :class:`~xception.train.checkpoint.TrainState`
(exactly what a checkpoint holds) and what each session rebuilds: data loaders, device and number
formats, the process's place in the job. Data-parallel runs (:mod:`xception.distributed`): the rank and
world size (:class:`DistEnv`) shard the training data through a :class:`ResumableSampler`, and the main
process alone claims and writes the run folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from tqdm import tqdm

from ..api import create_model
from ..data import Batches, ShardSampler, SkipLog, Source, training_sources
from ..data.loader import default_workers
from ..distributed import DistEnv, ResumableSampler, broadcast_object, convert_sync_batchnorm
from ..errors import ConfigError, DataError, XceptionError, hint
from ..fileio import FolderLock, atomic_write, remove_stale_temps
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..runtime import resolve_device
from ..tables import plural
from ..weights.checkpoint import EXPORT, LAST
from . import artifacts
from .checkpoint import (
    DAMAGED,
    RunSettings,
    TrainState,
    find_resume_point,
    load_checkpoint,
)
from .ema import ModelEma
from .folder import choose_folder, claim_folder, is_finished
from .recipe import Recipe, toml_value
from .schedule import lr_at

T = TypeVar("T")


@dataclass(frozen=True)
class Compute:
    """Where a run computes and in which number formats."""

    device: torch.device
    dtype: torch.dtype  # of the parameters and the inputs
    amp_dtype: torch.dtype | None  # autocast's (None: no autocast)
    channels_last: bool

    @classmethod
    def for_recipe(cls, recipe: Recipe, world: DistEnv) -> Compute:
        device = world.local_device(resolve_device(recipe.device))
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


class RunFinished(XceptionError):
    """A resume of a run that has finished (its epochs done, its model and summary written): there is nothing
    to do, and :func:`open_run` raises this before touching anything in the folder."""

    def __init__(self, run_dir: Path, checkpoint: dict[str, Any]) -> None:
        self.run_dir, self.epochs, self.best = run_dir, checkpoint["epoch"], checkpoint["best"]
        self.elapsed_s: float = checkpoint["elapsed_s"]
        longer = hint(f"train(recipe.replace(epochs=N), resume={str(run_dir)!r})", f"--resume {run_dir} --epochs N")
        super().__init__(f"{run_dir} has finished its {plural(self.epochs, 'epoch')}: nothing to do (its model: "
                         f"{run_dir / EXPORT}); to train it longer: {longer}, with N > {self.epochs}")


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
        """Give the run folder up to other processes (:func:`~xception.train.loop.train` does at its end; the
        folder is also freed when this process ends)."""
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
    :meth:`Run.close`): another process training into it meanwhile gets a :class:`BusyError`. Resuming a run
    that has finished raises :class:`RunFinished`, with nothing in its folder changed.
    """
    started = time.perf_counter()
    world = world or DistEnv()
    # An existing folder is claimed before anything in it is read; a new one once the run is known to be
    # usable (nothing is written before). Rank 0 alone claims it; every rank raises the error it met.
    chosen = _on_main(world, lambda: choose_folder(recipe, out, resume))
    lock = chosen[1] if chosen else None
    # One folder for all ranks, and one decision: each rank takes part in the second claim's collective or none.
    run_dir, claimed = broadcast_object((chosen[0], lock is not None) if chosen else None)
    try:
        point = find_resume_point(resume) if resume is not None else None
        checkpoint = point.checkpoint if point is not None else None
        if checkpoint is not None and broadcast_object(is_finished(run_dir, checkpoint, recipe)):
            raise RunFinished(run_dir, checkpoint)
        if checkpoint is not None:
            settings = RunSettings(**checkpoint["run"])
        run = build_run(recipe, settings or RunSettings(), run_dir, world=world, checkpoint=checkpoint,
                        started=started)
        if checkpoint is not None:
            restore(run, checkpoint)
        if not claimed:
            lock = _on_main(world, lambda: claim_folder(run_dir, fresh=checkpoint is None))
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
                        f"batch of {run.global_batch} ({recipe.lr_rule()} scaling; set lr_base_batch = 0 to turn it "
                        "off)")
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


def resume_settings(path: str | os.PathLike[str]) -> tuple[Recipe, RunSettings]:
    """The recipe and run settings stored in a run folder's checkpoint (to resume it, or inspect it)."""
    checkpoint = load_checkpoint(path)
    return Recipe.from_dict(checkpoint["recipe"]), RunSettings(**checkpoint["run"])


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


# -- the pieces ------------------------------------------------------------------------------------------------


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


def _say(world: DistEnv, text: str, bar_safe: bool = False) -> None:
    """A message on stderr from the main process alone (``bar_safe``: above a progress bar, not through it)."""
    if world.is_main:
        tqdm.write(text, file=sys.stderr) if bar_safe else print(text, file=sys.stderr, flush=True)

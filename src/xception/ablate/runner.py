"""The sweep's runner: every (variant, seed) an ordinary training run, with one recipe, resumable, on any device.

    >>> from xception.ablate import SweepConfig, train_sweep
    >>> outcome = train_sweep(SweepConfig(out="runs/ablation"))     # Fashion-MNIST: 6 variants × 3 seeds
    >>> outcome.results[0].test_top1

What is equal across the variants of a seed: the recipe and its schedule, the number of optimizer
updates, the validation split, the order of the training images and their augmentation (the sampler and
the augmentation are seeded by the recipe's seed, the epoch and the sample only, never by the model).
Only the model differs, and with it its initialisation.

Running the sweep again skips complete runs and resumes an interrupted one from its last.pt. Under
``torchrun`` every process runs the same sequence of runs (rank 0 decides which are done and writes the
files). The runner returns the results; the report is its caller's (:func:`xception.ablate.run_sweep`, or
``xception ablate``).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..analysis import model_cost
from ..data import ShardSampler, evaluation_source
from ..data.loader import default_workers
from ..distributed import DistEnv, all_reduce_sum, barrier, broadcast_object, distributed
from ..errors import ConfigError, DataError, XceptionError, hint
from ..evaluate import count_batches
from ..fileio import FolderLock, atomic_write
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from ..runtime import resolve_device
from ..train import (
    NonFiniteLoss,
    Recipe,
    Run,
    RunSettings,
    StopRequest,
    finish,
    fit,
    load_checkpoint,
    open_log,
    open_run,
    read_metrics,
    resume_settings,
    validate,
)
from ..train.artifacts import CONFIG as _CONFIG
from ..train.artifacts import SUMMARY as _SUMMARY
from ..train.artifacts import read_jsonl
from ..train.checkpoint import has_checkpoint
from .sweep import CURVE, RESULT, SWEEP_FILE, RunResult, SweepConfig, SweepOutcome, differences, eval_steps

_VAL_KEYS = ("val_top1", "val_top5", "val_loss")


def train_sweep(
    config: SweepConfig, *, progress: bool = False, stop: StopRequest | None = None, dist: DistEnv | None = None,
    say: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Train every (variant, seed) of ``config`` that is not complete yet, and return every run's result.

    ``stop``: a :class:`~xception.train.StopRequest`; Ctrl-C / SIGTERM set it, and the run in progress saves
    its checkpoint and the sweep returns ``interrupted`` (run it again to continue). ``dist``: this process's
    place in a data-parallel job (default: the job torchrun describes, if any). ``say``: where progress
    lines go (default: stderr of the main process).
    """
    assert config.recipe is not None
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    stop = stop or StopRequest()
    device = resolve_device(config.recipe.device)
    with distributed(device, dist) as world, _claimed(config, world), stop.installed():
        tell = say if world.is_main else (lambda text: None)
        outcome = SweepOutcome(is_main=world.is_main)
        runs = config.runs()
        for number, (variant, seed) in enumerate(runs, 1):
            label = f"[{number}/{len(runs)}] {variant} seed {seed}"
            result = None
            if not _agreed_stop(stop, world.local_device(device)):
                result = _next(config, variant, seed, world, stop, progress, tell, label, outcome)
            if result is None:
                outcome.interrupted, outcome.stop_signal = True, stop.signum
                tell("sweep stopped; run the same command again to continue where it stopped")
                break
            outcome.results.append(result)
        barrier()
        return outcome


@contextlib.contextmanager
def _claimed(config: SweepConfig, world: DistEnv) -> Iterator[None]:
    """One sweep at a time in a folder (each run folder is claimed by the loop too), and only a sweep of the
    same settings: the main process locks the folder and checks its sweep.json; every process fails alike."""
    lock, failure = None, None
    if world.is_main:
        try:
            lock = FolderLock(config.out, user="ablation sweep",
                              advice="wait for it to end, or " + hint("choose another out", "choose another --out"))
            problem = _claim_folder(config)
            failure = ConfigError(problem) if problem else None
        except XceptionError as err:
            failure = err
    try:
        failure = broadcast_object(failure)
        if failure is not None:
            raise failure
        yield
    finally:
        if lock is not None:
            lock.release()


def _next(config: SweepConfig, variant: str, seed: int, world: DistEnv, stop: StopRequest, progress: bool,
          tell: Callable[[str], None], label: str, outcome: SweepOutcome) -> RunResult | None:
    """The result of the next run: read back when it is complete, else trained (resumed when it has a
    checkpoint); None when a stop request interrupted it."""
    state = broadcast_object(_run_state(config.run_dir(variant, seed)) if world.is_main else None)
    if state == "done":
        outcome.skipped.append((variant, seed))
        tell(f"{label}: complete, skipped")
        return broadcast_object(RunResult.read(config.run_dir(variant, seed) / RESULT) if world.is_main else None)
    if state == "partial":
        outcome.resumed.append((variant, seed))
    return _run_one(config, variant, seed, state, world, stop, progress, tell, label)


def _agreed_stop(stop: StopRequest, device: torch.device) -> bool:
    """Whether a stop was requested on any process (a signal reaches them at different moments)."""
    flag = torch.tensor([int(stop.requested)], device=device)
    return bool(all_reduce_sum(flag).item())


# -- one run -----------------------------------------------------------------------------------------------


def _claim_folder(config: SweepConfig) -> str | None:
    """Write sweep.json (first session) or check that the folder's sweep is this one; a message if not."""
    path = config.out / SWEEP_FILE
    mine = config.to_dict()
    if path.is_file():
        try:
            theirs = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"{path} is not readable ({err}); remove it to start the sweep anew"
        changed = differences(theirs, mine)
        if len(changed) > 4:
            changed = [*changed[:4], f"and {len(changed) - 4} more"]
        if changed:
            again = hint(f"SweepConfig.load({str(config.out)!r})", f"xception ablate --resume {config.out}")
            other = hint("another out", "another --out")
            return (f"{config.out} holds a sweep of other settings ({'; '.join(changed)}); continue it with the "
                    f"settings it was started with ({again}) or choose {other}")
        mine["command"] = theirs.get("command") or mine["command"]
        config.command = mine["command"]
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(mine, indent=2) + "\n"))
    return None


def _run_state(run_dir: Path) -> str:
    """'done' (result.json), 'trained' (summary.json: only the result is missing), 'partial' (a checkpoint
    to resume from) or 'new'."""
    if (run_dir / RESULT).is_file():
        try:
            RunResult.read(run_dir / RESULT)
            return "done"
        except (OSError, ValueError, TypeError, KeyError):
            pass  # not a result of this version: made again from the run folder
    if (run_dir / _SUMMARY).is_file():
        return "trained"
    if has_checkpoint(run_dir):
        return "partial"
    return "new"


def _run_one(config: SweepConfig, variant: str, seed: int, state: str, world: DistEnv, stop: StopRequest,
             progress: bool, tell: Callable[[str], None], label: str) -> RunResult | None:
    """Train one run to the end of its budget (resuming it when it has a checkpoint), then write its result.
    None when a stop request interrupted it."""
    run_dir, recipe = config.run_dir(variant, seed), config.run_recipe(variant, seed)
    if state in ("new", "partial"):
        run = _open(config, recipe, run_dir, state, world)
        try:
            tell(f"{label}: {'resuming at update ' + str(run.state.step) if run.resumed else 'training'}, "
                 f"{run.recipe.epochs * run.updates_per_epoch} updates of {run.global_batch} images → {run_dir}")
            try:
                if not _train(run, config, stop, progress, world):
                    return None
            except NonFiniteLoss as err:
                tell(f"{label}: diverged ({err})")
                return _diverged(run, variant, seed, world)
            finish(run)
        finally:
            run.close()
    result = _result(config, variant, seed, run_dir, world)
    if result.status == "done":
        test = f", test top-1 {100 * result.test_top1:.2f} %" if result.test_top1 is not None else ""
        tell(f"{label}: validation top-1 {100 * (result.final_val_top1 or 0):.2f} %{test}, "
             f"{result.train_time_s:.0f} s of training ({result.images_per_s:.0f} img/s)")
    return result


def _open(config: SweepConfig, recipe: Recipe, run_dir: Path, state: str, world: DistEnv) -> Run:
    """The run, fresh or resumed from its last.pt (refused if that run has another recipe)."""
    if state == "partial":
        stored, _ = resume_settings(run_dir)
        changed = differences({"recipe": stored.to_dict()}, {"recipe": recipe.to_dict()})
        if changed:
            raise ConfigError(f"{run_dir} holds a run of another recipe ({'; '.join(changed)}); remove the "
                              f"folder to train it anew, or choose {hint('another out', 'another --out')}")
        run = open_run(recipe, resume=run_dir, world=world)
    else:
        if world.is_main:
            (run_dir / CURVE).unlink(missing_ok=True)  # a run that never reached a checkpoint starts anew
        barrier()
        settings = RunSettings(data=config.data, val=config.val, data_dir=config.data_dir)
        run = open_run(recipe, settings, out=run_dir, world=world)
    if run.data.val_batches is None:
        run.close()
        raise DataError("the sweep compares validation curves, and this data has no validation set: give "
                        f"{hint('val=FOLDER', '--val FOLDER')} or a val_fraction above 0")
    return run


def _train(run: Run, config: SweepConfig, stop: StopRequest, progress: bool, world: DistEnv) -> bool:
    """Train in stretches between evaluation points, validating at each (the loop's own validation where an
    epoch ends) and appending it to curve.jsonl. False when a stop request ended it early."""
    state, upe = run.state, run.updates_per_epoch
    curve_path = run.run_dir / CURVE
    curve = [p for p in read_jsonl(curve_path) if p["step"] <= state.step] if world.is_main else []
    if world.is_main:  # points past the checkpoint are trained (and measured) again
        atomic_write(curve_path, lambda tmp: tmp.write_text("".join(json.dumps(p) + "\n" for p in curve)))
    recorded = broadcast_object({p["step"] for p in curve})
    with open_log(run) as run_log:
        for step in eval_steps(upe, run.recipe.epochs, config.evals_per_epoch):
            if step < state.step:
                continue
            record: dict[str, Any] | None = None
            if step > state.step:
                done = fit(run, run_log, steps=step, stop=stop, progress=progress)
                if state.step < step:
                    return False
                record = done.records[-1] if done.records and done.records[-1]["step"] == step else None
            if step in recorded:
                continue
            values = {k: record[k] for k in _VAL_KEYS} if record and "val_top1" in record else validate(run)
            point = {"step": step, "epoch": round(step / upe, 6), **{k: values[k] for k in _VAL_KEYS}}
            if world.is_main:
                _append_jsonl(curve_path, point)
            recorded.add(step)
    return True


# -- a run's figures --------------------------------------------------------------------------------------


def _result(config: SweepConfig, variant: str, seed: int, run_dir: Path, world: DistEnv) -> RunResult:
    """Test the final model (every process takes its share), gather the run's figures from its folder and
    write result.json (main process); every process gets the result."""
    checkpoint = load_checkpoint(run_dir)
    recipe = Recipe.from_dict(checkpoint["recipe"])
    test = _test(config, checkpoint, recipe, world)
    result = None
    if world.is_main:
        world_size = checkpoint.get("world_size", 1)
        result = _base_result(variant, seed, "done", checkpoint["step"], checkpoint["epoch"],
                              recipe.batch_size * recipe.accum_steps * world_size, world_size,
                              XceptionConfig.from_dict(checkpoint["model_config"]),
                              Preprocessing.from_dict(checkpoint["preprocessing"]).input_size, run_dir)
        _fill_figures(result, run_dir, test)
        _write_result(run_dir, result)
    return broadcast_object(result)


def _diverged(run: Run, variant: str, seed: int, world: DistEnv) -> RunResult:
    """The result of a run whose loss became NaN/inf: its cost and where it stopped, no accuracy."""
    result = None
    if world.is_main:
        state = run.state
        result = _base_result(variant, seed, "diverged", state.step, state.epoch, run.global_batch,
                              run.world.world_size, state.model.config, state.preprocessing.input_size, run.run_dir)
        _write_result(run.run_dir, result)
    return broadcast_object(result)


def _base_result(variant: str, seed: int, status: str, steps: int, epochs: int, global_batch: int, world_size: int,
                 model_config: XceptionConfig, input_size: int, run_dir: Path) -> RunResult:
    cost = model_cost(Xception(model_config), input_size)
    info = _run_table(run_dir)
    return RunResult(variant=variant, seed=seed, status=status, steps=steps, epochs=epochs, global_batch=global_batch,
                     params=cost.trainable_params, macs=cost.macs, input_size=input_size,
                     device=str(info.get("device", "")), threads=int(info.get("threads", 0)), world_size=world_size)


def _write_result(run_dir: Path, result: RunResult) -> None:
    atomic_write(run_dir / RESULT, lambda tmp: tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n"))


def _fill_figures(result: RunResult, run_dir: Path, test: dict[str, Any] | None) -> None:
    """Validation curve with training time at each point, final and test accuracy, throughput, time."""
    records = read_metrics(run_dir)
    epoch_ends, epoch_times = [0], [0.0]
    for record in records:  # the loop's own measure of training time: images / training throughput
        images = (record["step"] - epoch_ends[-1]) * result.global_batch
        epoch_times.append(epoch_times[-1] + images / max(record["train_images_per_s"], 1e-9))
        epoch_ends.append(record["step"])

    def time_at(step: int) -> float:
        for e in range(1, len(epoch_ends)):
            if step <= epoch_ends[e]:
                share = (step - epoch_ends[e - 1]) / max(epoch_ends[e] - epoch_ends[e - 1], 1)
                return epoch_times[e - 1] + share * (epoch_times[e] - epoch_times[e - 1])
        return epoch_times[-1]

    curve = read_jsonl(run_dir / CURVE)
    result.curve = [{**p, "train_time_s": round(time_at(p["step"]), 3)} for p in curve]
    result.final_val_top1 = curve[-1]["val_top1"] if curve else None
    result.train_time_s = round(epoch_times[-1], 3)
    result.images_per_s = round(result.steps * result.global_batch / max(epoch_times[-1], 1e-9), 1)
    summary = json.loads((run_dir / _SUMMARY).read_text())
    result.elapsed_s = summary.get("elapsed_s")
    if test is not None:
        result.test_top1, result.test_loss, result.test_images = test["top1"], test["loss"], test["images"]


def _test(config: SweepConfig, checkpoint: dict[str, Any], recipe: Recipe, world: DistEnv) -> dict[str, Any] | None:
    """Top-1 and loss of the run's final model (its EMA when averaging) on the sweep's test data."""
    data = config.test_data
    if data is None:
        return None
    classes = list(checkpoint["class_names"])
    source = evaluation_source(data, classes=classes, split="test", data_dir=config.data_dir)
    model = Xception(XceptionConfig.from_dict(checkpoint["model_config"]))
    if checkpoint.get("ema") is not None:
        model.load_state_dict({k.removeprefix("module."): v for k, v in checkpoint["ema"].items() if k != "updates"})
    else:
        model.load_state_dict(checkpoint["model"])
    device = world.local_device(resolve_device(recipe.device))
    dtype = torch.float64 if recipe.precision == "float64" else torch.float32
    model.to(device, dtype)
    workers = default_workers() if recipe.workers < 0 else recipe.workers
    batches = source.batches(Preprocessing.from_dict(checkpoint["preprocessing"]), train=False,
                             batch_size=2 * recipe.batch_size, device=device, workers=workers,
                             sampler=ShardSampler(len(source), world.rank, world.world_size))
    counts = count_batches(model, batches, len(classes), device=device).all_reduce(all_reduce_sum)
    if counts.total == 0:
        raise DataError(f"no readable test images in {data}")
    return {"top1": counts.top1, "loss": counts.loss, "images": counts.total}


def _run_table(run_dir: Path) -> dict[str, Any]:
    """The [run] table of the run's config.toml: device, threads, … of its last session."""
    try:
        return tomllib.loads((run_dir / _CONFIG).read_text()).get("run", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}




def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())

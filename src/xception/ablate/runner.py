"""The sweep: every (variant, seed) an ordinary training run, with one recipe, resumable, on any device.

    >>> from xception.ablate import SweepConfig, run_sweep
    >>> outcome = run_sweep(SweepConfig(out="runs/ablation"))      # Fashion-MNIST: 6 variants × 3 seeds
    >>> outcome.report["claims"][0]["verdict"]

What is equal across the variants of a seed: the recipe and its schedule, the number of optimizer
updates, the validation split, the order of the training images and their augmentation (the sampler and
the augmentation are seeded by the recipe's seed, the epoch and the sample only, never by the model).
Only the model differs, and with it its initialisation.

A sweep folder::

    DIR/sweep.json              what the sweep runs: recipe, data, seeds, variants, evaluation points
    DIR/<variant>/seed<k>/      an ordinary run folder (config.toml, metrics.jsonl, last.pt, summary.json, …)
        curve.jsonl             validation top-1 / top-5 / loss at each evaluation point of the run
        result.json             the run's figures (written last: the run is complete)
    DIR/report.md, report.json, *.png

Running the sweep again skips complete runs, resumes an interrupted one from its last.pt, and rebuilds
the report; on a complete folder it rebuilds the identical report. Under ``torchrun`` every process runs
the same sequence of runs (rank 0 decides which are done and writes the files).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis import model_cost
from ..data import FASHION_MNIST, ShardSampler, evaluation_source
from ..data.loader import default_workers
from ..distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_object,
    init_distributed,
    launched_by_torchrun,
    shutdown_distributed,
)
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
    load_recipe,
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
from .variants import DEFAULT_VARIANTS, VARIANTS, check_variants

SWEEP_FILE, CURVE, RESULT = "sweep.json", "curve.jsonl", "result.json"
SWEEP_VERSION = 1
_VAL_KEYS = ("val_top1", "val_top5", "val_loss")
# Settings a sweep may change between sessions without changing what it measures.
_FREE_SETTINGS = ("device", "workers")


def default_recipe(data: str | os.PathLike[str] | None = None) -> Recipe:
    """The sweep's recipe: for Fashion-MNIST, the shipped ``fashion-mnist`` recipe cut to 3 epochs of the
    paper's depth (8 middle-flow modules) at width 0.125, so that 6 variants × 3 seeds fit about two hours
    on a 2-core CPU (the standard-conv variant costs the most); for a folder, the ``modern`` recipe."""
    if data is None or str(data) == FASHION_MNIST:
        recipe = load_recipe("fashion-mnist")
        options = {**recipe.model_options, "width": 0.125, "middle_repeats": 8}
        return recipe.replace(name="ablation", epochs=3, model_options=options,
                              description="the paper's claims re-tested: small-input Xception of the paper's depth "
                                          "(8 middle modules) at width 0.125 on Fashion-MNIST, 3 epochs")
    return load_recipe("modern").replace(name="ablation")


@dataclass
class SweepConfig:
    """What a sweep runs and where it writes.

    Attributes:
        out: the sweep folder.
        recipe: one recipe for every run (default :func:`default_recipe`); the variants change model
            options on top of it, the seeds its ``seed``. Its ``epochs`` are the budget: the same number of
            optimizer updates for every variant.
        variants: names in :data:`~xception.ablate.VARIANTS`.
        seeds: runs per variant, with seeds 0 … seeds − 1.
        data, val, data_dir: as for :func:`xception.train.train` (None: Fashion-MNIST).
        test: data to test the final models on (default: Fashion-MNIST's test split for Fashion-MNIST,
            ``DATA/test`` for a folder that has one, else none).
        evals_per_epoch: validation points per epoch, equally spaced in updates.
        margin: percentage points within which two variants count as equal (the order claim), and the
            most the standard convs may buy for the separable claim to hold.
        command: the command line that started the sweep, for the report (kept from the first session).
    """

    out: Path = Path("runs/ablation")
    recipe: Recipe | None = None
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    seeds: int = 3
    data: str | None = None
    val: str | None = None
    test: str | None = None
    data_dir: str | None = None
    evals_per_epoch: int = 4
    margin: float = 0.5
    command: str | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.data = None if self.data is None or str(self.data) == FASHION_MNIST else str(self.data)
        self.recipe = self.recipe or default_recipe(self.data)
        self.variants = check_variants(tuple(self.variants))
        checks = [
            (isinstance(self.seeds, int) and self.seeds >= 1, f"seeds must be ≥ 1, got {self.seeds!r}"),
            (isinstance(self.evals_per_epoch, int) and self.evals_per_epoch >= 1,
             f"evals_per_epoch must be ≥ 1, got {self.evals_per_epoch!r}"),
            (self.margin > 0, f"margin must be > 0 percentage points, got {self.margin!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        fixed = sorted({k for v in VARIANTS.values() for k in v.options} & set(self.recipe.model_options))
        if fixed:
            raise ConfigError(f"the sweep's variants set {', '.join(fixed)} themselves; remove "
                              f"{', '.join('model.' + k for k in fixed)} from the recipe")

    @property
    def seed_list(self) -> list[int]:
        return list(range(self.seeds))

    @property
    def test_data(self) -> str | None:
        """What the final models are tested on, or None."""
        if self.test is not None:
            return str(self.test)
        if self.data is None:
            return FASHION_MNIST
        found = Path(self.data) / "test"
        return str(found) if found.is_dir() else None

    def run_dir(self, variant: str, seed: int) -> Path:
        return self.out / variant / f"seed{seed}"

    def run_recipe(self, variant: str, seed: int) -> Recipe:
        """The recipe of one run: the sweep's, with the variant's model options and the seed."""
        assert self.recipe is not None
        options = {**self.recipe.model_options, **VARIANTS[variant].options}
        return self.recipe.replace(seed=seed, model_options=options)

    def runs(self) -> list[tuple[str, int]]:
        """(variant, seed) in the order they run: seed by seed, so a partial sweep compares all variants."""
        return [(v, s) for s in self.seed_list for v in self.variants]

    def to_dict(self) -> dict[str, Any]:
        assert self.recipe is not None
        return {
            "version": SWEEP_VERSION, "data": self.data, "val": self.val, "test": self.test_data,
            "data_dir": self.data_dir, "recipe": self.recipe.to_dict(), "variants": list(self.variants),
            "seeds": self.seeds, "evals_per_epoch": self.evals_per_epoch, "margin": self.margin,
            "command": self.command,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], out: str | os.PathLike[str]) -> SweepConfig:
        if data.get("version") != SWEEP_VERSION:
            raise ConfigError(f"{Path(out) / SWEEP_FILE} is not a sweep file of this version")
        return cls(out=Path(out), recipe=Recipe.from_dict(data["recipe"]), variants=tuple(data["variants"]),
                   seeds=data["seeds"], data=data["data"], val=data["val"], test=data["test"],
                   data_dir=data["data_dir"], evals_per_epoch=data["evals_per_epoch"], margin=data["margin"],
                   command=data.get("command"))

    @classmethod
    def load(cls, out: str | os.PathLike[str]) -> SweepConfig:
        """The sweep stored in folder ``out`` (its sweep.json), to resume or report it."""
        path = Path(out) / SWEEP_FILE
        if not path.is_file():
            raise ConfigError(f"{out} holds no sweep ({SWEEP_FILE} is missing)")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{path} is not readable: {err}") from err
        return cls.from_dict(data, out)


@dataclass
class RunResult:
    """One run's figures, as its result.json holds them. Accuracies are fractions (0.9 = 90 %)."""

    variant: str
    seed: int
    status: str  # "done", or "diverged" (the loss became NaN/inf: no figures)
    steps: int
    epochs: int
    global_batch: int
    curve: list[dict[str, Any]] = field(default_factory=list)  # step, epoch, val_*, train_time_s
    final_val_top1: float | None = None
    test_top1: float | None = None
    test_loss: float | None = None
    test_images: int = 0
    train_time_s: float | None = None  # training alone (from the loop's per-epoch throughput)
    images_per_s: float | None = None
    elapsed_s: float | None = None  # the whole run as the loop counts it: validation and checkpoints too
    params: int = 0
    macs: int = 0  # per image at the run's input size
    input_size: int = 0
    device: str = ""
    threads: int = 0
    world_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    @classmethod
    def read(cls, path: Path) -> RunResult:
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: every run's result, which runs it skipped (complete already) or
    resumed, whether it stopped early, and the report (None when stopped, or off the main process)."""

    results: list[RunResult]
    skipped: list[tuple[str, int]]
    resumed: list[tuple[str, int]]
    interrupted: bool
    report: dict[str, Any] | None = None
    report_files: list[Path] = field(default_factory=list)


def run_sweep(
    config: SweepConfig, *, report_dir: str | os.PathLike[str] | None = None, progress: bool = False,
    stop: StopRequest | None = None, dist: DistEnv | None = None, say: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Train every (variant, seed) of ``config`` that is not complete yet, then write the report.

    ``report_dir``: where report.md, report.json and the plots go (default: the sweep folder). ``stop``:
    a :class:`~xception.train.StopRequest`; Ctrl-C / SIGTERM set it, and the run in progress saves its
    checkpoint and the sweep returns ``interrupted`` (run it again to continue). ``dist``: this process's
    place in a data-parallel job (default: the job torchrun describes, if any). ``say``: where progress
    lines go (default: stderr of the main process).
    """
    from .report import write_report

    assert config.recipe is not None
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    joined = dist is None and launched_by_torchrun()
    world = dist or init_distributed(resolve_device(config.recipe.device))
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    tell = say if world.is_main else (lambda text: None)
    stop = stop or StopRequest()
    lock = None
    try:
        failure: XceptionError | None = None
        if world.is_main:  # one sweep at a time in a folder (each run folder is claimed by the loop too)
            try:
                lock = FolderLock(config.out, user="ablation sweep",
                                  advice="wait for it to end, or " + hint("choose another out", "choose another --out"))
                problem = _claim_folder(config)
                failure = ConfigError(problem) if problem else None
            except XceptionError as err:
                failure = err
        failure = broadcast_object(failure)  # every process fails the same way
        if failure is not None:
            raise failure
        results: list[RunResult] = []
        skipped: list[tuple[str, int]] = []
        resumed: list[tuple[str, int]] = []
        interrupted = False
        runs = config.runs()
        device = resolve_device(config.recipe.device)
        if device.type == "cuda" and world.distributed:
            device = torch.device("cuda", world.local_rank)
        with stop.installed():
            for number, (variant, seed) in enumerate(runs, 1):
                if _agreed_stop(stop, world, device):
                    interrupted = True
                    break
                state = broadcast_object(_run_state(config.run_dir(variant, seed)) if world.is_main else None)
                label = f"[{number}/{len(runs)}] {variant} seed {seed}"
                if state == "done":
                    skipped.append((variant, seed))
                    result = RunResult.read(config.run_dir(variant, seed) / RESULT) if world.is_main else None
                    results.append(broadcast_object(result))
                    tell(f"{label}: complete, skipped")
                    continue
                if state == "partial":
                    resumed.append((variant, seed))
                result = _run_one(config, variant, seed, state, world, stop, progress, tell, label)
                if result is None:
                    interrupted = True
                    break
                results.append(result)
        outcome = SweepOutcome(results, skipped, resumed, interrupted)
        if interrupted:
            tell("sweep stopped; run the same command again to continue where it stopped")
        elif world.is_main:
            outcome.report, outcome.report_files = write_report(config, results, report_dir or config.out)
        barrier()
        return outcome
    finally:
        if lock is not None:
            lock.release()
        torch.use_deterministic_algorithms(deterministic_before)
        if joined:
            shutdown_distributed()


def _agreed_stop(stop: StopRequest, world: DistEnv, device: torch.device) -> bool:
    """Whether a stop was requested on any process (a signal reaches them at different moments)."""
    flag = torch.tensor([int(stop.requested)], device=device)
    return bool(all_reduce_sum(flag).item())


def collect_results(config: SweepConfig) -> tuple[list[RunResult], list[tuple[str, int]]]:
    """The results of the sweep's complete runs, and the (variant, seed) still missing."""
    results, missing = [], []
    for variant, seed in config.runs():
        path = config.run_dir(variant, seed) / RESULT
        if path.is_file():
            results.append(RunResult.read(path))
        else:
            missing.append((variant, seed))
    return results, missing


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
        differences = _differences(theirs, mine)
        if len(differences) > 4:
            differences = [*differences[:4], f"and {len(differences) - 4} more"]
        if differences:
            again = hint(f"SweepConfig.load({str(config.out)!r})", f"xception ablate --resume {config.out}")
            other = hint("another out", "another --out")
            return (f"{config.out} holds a sweep of other settings ({'; '.join(differences)}); continue it with the "
                    f"settings it was started with ({again}) or choose {other}")
        mine["command"] = theirs.get("command") or mine["command"]
        config.command = mine["command"]
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(mine, indent=2) + "\n"))
    return None


def _differences(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
    """What makes two sweep files measure different things (variants, seeds and where files are may differ)."""
    out = []
    for key in ("version", "data", "val", "test", "evals_per_epoch", "margin"):
        if theirs.get(key) != mine.get(key):
            out.append(f"{key}: {theirs.get(key)!r} there, {mine.get(key)!r} here")
    recipe_theirs, recipe_mine = theirs.get("recipe", {}), mine["recipe"]
    # A setting one side lacks came with another version of the library: its default held there.
    for key in sorted(set(recipe_theirs) & set(recipe_mine)):
        if key in _FREE_SETTINGS or key in ("name", "description"):
            continue
        a, b = _plain(recipe_theirs.get(key)), _plain(recipe_mine.get(key))
        if a != b:
            out.append(f"{key}: {a!r} there, {b!r} here")
    return out


def _plain(value: Any) -> Any:
    """JSON-shaped value for comparisons (tuples as lists)."""
    return json.loads(json.dumps(value))


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
        differences = _differences({"recipe": stored.to_dict()}, {"recipe": recipe.to_dict()})
        if differences:
            raise ConfigError(f"{run_dir} holds a run of another recipe ({'; '.join(differences)}); remove the "
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


def eval_steps(updates_per_epoch: int, epochs: int, per_epoch: int) -> list[int]:
    """The updates after which a run is validated: ``per_epoch`` points equally spaced in each epoch, the
    last at its end (where the loop validates anyway)."""
    steps: list[int] = []
    for epoch in range(epochs):
        base = epoch * updates_per_epoch
        for j in range(1, per_epoch + 1):
            step = base + round(updates_per_epoch * j / per_epoch)
            if step > base and (not steps or step > steps[-1]):
                steps.append(step)
    return steps


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
    device = resolve_device(recipe.device)
    if device.type == "cuda" and world.distributed:
        device = torch.device("cuda", world.local_rank)
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

"""What a sweep is and what it gives: its settings (:class:`SweepConfig`, stored as the folder's sweep.json),
one run's figures (:class:`RunResult`, its result.json) and the outcome of a session (:class:`SweepOutcome`).

A sweep folder::

    DIR/sweep.json              what the sweep runs: recipe, data, seeds, variants, evaluation points
    DIR/<variant>/seed<k>/      an ordinary run folder (config.toml, metrics.jsonl, last.pt, summary.json, …)
        curve.jsonl             validation top-1 / top-5 / loss at each evaluation point of the run
        result.json             the run's figures (written last: the run is complete)
    DIR/report.md, report.json, *.png

The runner (:mod:`.runner`) trains what these describe; the report (:mod:`.report`) reads them alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data import FASHION_MNIST
from ..errors import ConfigError
from ..train import Recipe, load_recipe
from .variants import DEFAULT_VARIANTS, VARIANTS, check_variants

SWEEP_FILE, CURVE, RESULT = "sweep.json", "curve.jsonl", "result.json"
SWEEP_VERSION = 1
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


def measure(result: RunResult, name: str, use_test: bool) -> float:
    """A run's ``final`` or ``auc`` measure, in percent."""
    if name == "final":
        value = result.test_top1 if use_test and result.test_top1 is not None else result.final_val_top1
        return 100.0 * float(value or 0.0)
    return 100.0 * statistics.fmean(p["val_top1"] for p in result.curve)


@dataclass
class SweepOutcome:
    """What a sweep did: every run's result, which runs it skipped (complete already) or resumed, whether it
    stopped early, whether this process is the one that writes files (rank 0), and the report that
    :func:`~xception.ablate.run_sweep` then wrote (None when stopped, or off the main process)."""

    results: list[RunResult] = field(default_factory=list)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    resumed: list[tuple[str, int]] = field(default_factory=list)
    interrupted: bool = False
    stop_signal: int | None = None  # the signal that stopped it (SIGINT, SIGTERM), if one did
    is_main: bool = True
    report: dict[str, Any] | None = None
    report_files: list[Path] = field(default_factory=list)


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



def differences(theirs: dict[str, Any], mine: dict[str, Any]) -> list[str]:
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

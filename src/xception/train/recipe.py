"""Training recipes: plain TOML files a person can read, copy and edit; command-line flags override them.

A recipe is a flat set of settings (:class:`Recipe`) written in sections for readability::

    description = "..."
    [model]       name (a registered model) and options for create_model (stem, width, drop_rate, ...)
    [data]        preprocessing (used when the weights bring none) and augmentation
    [optim]       epochs, batch size, optimiser, learning rate and its schedule, regularisation, EMA
    [runtime]     device, mixed precision, channels_last, torch.compile, seed, determinism, checkpoint interval

The recipes shipped with the package live next to this file (``recipes/*.toml``); ``xception train
--recipe NAME --show-recipe`` prints one, ready to be saved and edited.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import textwrap
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..data.transforms import Augmentation
from ..errors import ConfigError, MissingPathError
from ..models import XceptionConfig, list_models, model_config
from ..preprocessing import Preprocessing
from .mixing import Mixing

SECTIONS: tuple[str, ...] = ("data", "optim", "runtime")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw", "rmsprop")
SCHEDULES: tuple[str, ...] = ("step", "cosine", "constant")
LR_SCALING: tuple[str, ...] = ("auto", "linear", "sqrt")
PRECISE_BN: tuple[str, ...] = ("auto", "on", "off")
# What "auto" scaling means per optimiser. Linear scaling keeps SGD's update per image constant; Adam-type
# optimisers normalise the gradient, so their noise scale calls for the square root (Malladi et al. 2022).
AUTO_LR_SCALING: dict[str, str] = {"sgd": "linear", "adamw": "sqrt", "rmsprop": "sqrt"}
# Settings added after runs had been stored, with the behaviour before them: a fully resolved recipe (a
# checkpoint's, or a saved --show-recipe) that lacks them ran that way, and its resume or rerun still does.
STORED_BEFORE: dict[str, Any] = {"lr_scaling": "linear", "precise_bn": "off", "precise_bn_images": 4096,
                                  "mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0}
# Model options a recipe leaves to the run: the table (the model's name says it), the classifier's outputs
# (the data's class count) and the input channels (one per value of mean).
FROM_RUN: tuple[str, ...] = ("arch", "num_classes", "in_chans")


def _f(default: Any, section: str, doc: str) -> Any:
    return field(default=default, metadata={"section": section, "doc": doc})


@dataclass
class Recipe:
    """Every setting of a training run that is not about where the data or the output lives."""

    name: str = field(default="custom", metadata={"section": "", "doc": "recipe name"})
    description: str = field(default="", metadata={"section": "", "doc": "what the recipe is for"})
    model: str = field(default="xception", metadata={"section": "", "doc": "registered model name"})
    model_options: dict[str, Any] = field(default_factory=dict, metadata={
        "section": "model", "doc": "options of the model (fields of XceptionConfig); unset ones keep the model's"})

    # data: preprocessing (when the weights carry none) and training augmentation
    input_size: int = _f(299, "data", "side of the square network input, pixels")
    crop_pct: float = _f(0.875, "data", "evaluation: resize the shorter side to input_size / crop_pct, crop")
    resize_mode: str = _f("crop", "data", "'crop' (resize + centre crop) or 'squash'")
    interpolation: str = _f("bicubic", "data", "nearest, bilinear or bicubic")
    mean: tuple[float, ...] = _f((0.5, 0.5, 0.5), "data", "per-channel mean of [0, 1] pixels")
    std: tuple[float, ...] = _f((0.5, 0.5, 0.5), "data", "per-channel std of [0, 1] pixels")
    scale: tuple[float, ...] = _f((0.08, 1.0), "data", "random resized crop: range of the crop's area fraction")
    ratio: tuple[float, ...] = _f((0.75, 1.3333333), "data", "random resized crop: range of the aspect ratio")
    hflip: float = _f(0.5, "data", "probability of a horizontal flip")
    translate: float = _f(0.0, "data", "how far a crop may reach past the border (fraction of the side)")
    erase: float = _f(0.0, "data", "random erasing: probability per image of a rectangle replaced by noise (0: off)")
    erase_scale: tuple[float, ...] = _f((0.02, 0.4), "data", "random erasing: range of the rectangle's area fraction")
    erase_ratio: tuple[float, ...] = _f((0.3, 3.3), "data", "random erasing: range of its aspect ratio (height/width)")
    mixup: float = _f(0.0, "data", "mixup: α of the Beta(α, α) weight that blends each image with another of its "
                      "batch, labels weighted alike (0: off; 0.2–0.4 usual)")
    cutmix: float = _f(0.0, "data", "CutMix: α of the Beta(α, α) share of each image kept when a box of another image "
                       "of its batch is pasted in, labels weighted by area (0: off; 1.0 usual)")
    mix_prob: float = _f(1.0, "data", "share of batches mixed when mixup or cutmix is on (with both on, each mixed "
                         "batch takes one of them at random)")
    val_fraction: float = _f(0.1, "data", "share of each class held out for validation without a val folder")
    workers: int = _f(-1, "data", "image decoding processes (-1: one per core, at most 8)")

    # optimisation
    epochs: int = _f(100, "optim", "passes over the training data")
    batch_size: int = _f(32, "optim", "images per step and process")
    accum_steps: int = _f(1, "optim", "steps whose gradients are summed before an update")
    optimizer: str = _f("sgd", "optim", "sgd, adamw or rmsprop")
    lr: float = _f(0.045, "optim", "peak learning rate, for a global batch of lr_base_batch")
    lr_base_batch: int = _f(0, "optim", "global batch the lr is meant for; other batches scale it (0: never)")
    lr_scaling: str = _f("auto", "optim", "how lr follows the global batch: linear (SGD; Goyal et al. 2017), sqrt "
                         "(Adam-type; Malladi et al. 2022), or auto: linear for sgd, sqrt for adamw and rmsprop")
    momentum: float = _f(0.9, "optim", "SGD / RMSprop momentum")
    nesterov: bool = _f(False, "optim", "Nesterov momentum (SGD)")
    betas: tuple[float, ...] = _f((0.9, 0.999), "optim", "AdamW betas")
    eps: float = _f(1e-8, "optim", "AdamW / RMSprop epsilon")
    weight_decay: float = _f(1e-5, "optim", "decay of conv and linear weights (not of norms or biases)")
    schedule: str = _f("step", "optim", "step (x decay_rate every decay_epochs), cosine or constant")
    warmup_epochs: float = _f(0.0, "optim", "linear warm-up from 0 to lr")
    decay_epochs: float = _f(2.0, "optim", "step schedule: epochs between decays")
    decay_rate: float = _f(0.94, "optim", "step schedule: factor per decay")
    min_lr: float = _f(0.0, "optim", "cosine schedule: final learning rate")
    label_smoothing: float = _f(0.0, "optim", "label smoothing of the cross-entropy")
    grad_clip: float = _f(0.0, "optim", "clip the gradient norm to this (0: off)")
    ema_decay: float = _f(0.0, "optim", "Polyak averaging: EMA decay per update (0: off)")
    precise_bn: str = _f("auto", "optim", "recompute the BatchNorm statistics of the evaluated weights (the EMA's when "
                         "averaging) from training batches before each validation: on, off, or auto: while they "
                         "cannot have settled, for the first 10 / momentum updates (100 at PyTorch's 0.1), twice "
                         "that with EMA")
    precise_bn_images: int = _f(4096, "optim", "precise_bn: at most this many training images per recomputation")
    freeze_epochs: int = _f(0, "optim", "fine-tuning: train only the new head for this many epochs")
    freeze_bn: bool = _f(False, "optim", "fine-tuning: keep the backbone's BatchNorm statistics (eval-mode BN)")

    # runtime
    device: str = _f("auto", "runtime", "auto (cuda if present), cpu, cuda, cuda:1, mps")
    amp: str = _f("auto", "runtime", "mixed precision: auto (bf16 on GPU), bf16, fp16, off")
    channels_last: str = _f("auto", "runtime", "NHWC memory layout: auto (on for CUDA and CPU), on, off")
    compile: bool = _f(False, "runtime", "torch.compile the model")
    seed: int = _f(0, "runtime", "seed for initialisation, shuffling, augmentation and the split")
    deterministic: bool = _f(False, "runtime", "deterministic algorithms only (bit-exact reruns and resumes)")
    sync_bn: bool = _f(False, "runtime", "under torchrun: BatchNorm statistics over the global batch")
    precision: str = _f("float32", "runtime", "parameter precision: float32, or float64 for numerical checks")
    checkpoint_minutes: float = _f(10.0, "runtime", "minutes between saves of last.pt in an epoch (0: at its end only)")

    def __post_init__(self) -> None:
        self.validate()

    # -- checks --------------------------------------------------------------------------------------

    def validate(self) -> Recipe:
        checks: list[tuple[bool, str]] = [
            (self.epochs >= 1, f"epochs must be ≥ 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be ≥ 1, got {self.batch_size}"),
            (self.accum_steps >= 1, f"accum_steps must be ≥ 1, got {self.accum_steps}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {self.schedule!r}"),
            (self.lr > 0 and math.isfinite(self.lr), f"lr must be > 0, got {self.lr}"),
            (self.lr_base_batch >= 0, f"lr_base_batch must be ≥ 0, got {self.lr_base_batch}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be ≥ 0, got {self.warmup_epochs}"),
            (self.decay_epochs > 0, f"decay_epochs must be > 0, got {self.decay_epochs}"),
            (0 < self.decay_rate <= 1, f"decay_rate must be in (0, 1], got {self.decay_rate}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.grad_clip >= 0, f"grad_clip must be ≥ 0, got {self.grad_clip}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0: off), got {self.ema_decay}"),
            (self.lr_scaling in LR_SCALING, f"lr_scaling must be one of {LR_SCALING}, got {self.lr_scaling!r}"),
            (self.precise_bn in PRECISE_BN, f"precise_bn must be one of {PRECISE_BN}, got {self.precise_bn!r}"),
            (self.precise_bn_images >= 1, f"precise_bn_images must be ≥ 1, got {self.precise_bn_images}"),
            (self.freeze_epochs >= 0, f"freeze_epochs must be ≥ 0, got {self.freeze_epochs}"),
            (self.checkpoint_minutes >= 0 and math.isfinite(self.checkpoint_minutes),
             f"checkpoint_minutes must be ≥ 0 (0: at epoch ends only), got {self.checkpoint_minutes}"),
            (self.amp in ("auto", "bf16", "fp16", "off"), f"amp must be auto, bf16, fp16 or off, got {self.amp!r}"),
            (self.channels_last in ("auto", "on", "off"),
             f"channels_last must be auto, on or off, got {self.channels_last!r}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.workers >= -1, f"workers must be ≥ 0 (or -1 for automatic), got {self.workers}"),
            (len(self.betas) == 2, f"betas needs two values, got {self.betas}"),
            (self.precision in ("float32", "float64"), f"precision must be float32 or float64, got {self.precision!r}"),
            (self.precision == "float32" or self.amp in ("auto", "off"), "precision float64 needs amp = 'off'"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"recipe {self.name!r}: {message}")
        try:
            model_config(self.model, **self.model_options)  # unknown models and options fail here, not mid-run
        except ConfigError as err:
            raise ConfigError(f"recipe {self.name!r}: {err}") from err
        self.preprocessing()  # checks input_size, crop_pct, interpolation, mean/std
        self.augmentation()
        self.mixing()
        return self

    # -- derived objects -----------------------------------------------------------------------------

    def preprocessing(self) -> Preprocessing:
        """The recipe's preprocessing, used when the model's weights bring none."""
        return Preprocessing(
            input_size=self.input_size, crop_pct=self.crop_pct, resize_mode=self.resize_mode,  # type: ignore[arg-type]
            interpolation=self.interpolation, mean=tuple(self.mean), std=tuple(self.std),  # type: ignore[arg-type]
            channels=len(self.mean),
        )

    def augmentation(self) -> Augmentation:
        return Augmentation(scale=_pair("scale", self.scale), ratio=_pair("ratio", self.ratio), hflip=self.hflip,
                            translate=self.translate, erase=self.erase,
                            erase_scale=_pair("erase_scale", self.erase_scale),
                            erase_ratio=_pair("erase_ratio", self.erase_ratio))

    def mixing(self) -> Mixing:
        return Mixing(mixup=self.mixup, cutmix=self.cutmix, prob=self.mix_prob)

    def lr_rule(self) -> str:
        """The lr scaling rule in force: ``linear`` or ``sqrt`` (``auto`` resolved for the optimiser)."""
        return AUTO_LR_SCALING[self.optimizer] if self.lr_scaling == "auto" else self.lr_scaling

    def scaled_lr(self, global_batch: int) -> float:
        """The peak learning rate for ``global_batch`` images per update: ``lr × global_batch /
        lr_base_batch`` (linear rule) or ``lr × √(global_batch / lr_base_batch)`` (sqrt rule), or ``lr``
        itself when ``lr_base_batch`` is 0."""
        if not self.lr_base_batch:
            return self.lr
        ratio = global_batch / self.lr_base_batch
        return self.lr * (ratio if self.lr_rule() == "linear" else math.sqrt(ratio))

    # -- files ---------------------------------------------------------------------------------------

    def replace(self, **changes: Any) -> Recipe:
        return Recipe.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["model_options"] = dict(self.model_options)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"unknown recipe setting(s) {unknown}; known: {', '.join(sorted(fields))}")
        if set(fields) - set(data) <= set(STORED_BEFORE):  # a stored recipe: keep what it ran with
            data = {**STORED_BEFORE, **data}
        values = {}
        for name, value in data.items():
            values[name] = _coerce(name, value, fields[name].default if fields[name].default is not
                                   dataclasses.MISSING else None)
        return cls(**values)

    @classmethod
    def from_toml(cls, text: str, name: str = "custom") -> Recipe:
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"recipe {name!r} is not valid TOML: {err}") from err
        flat: dict[str, Any] = {"name": name}
        sections = {f.name: f.metadata["section"] for f in dataclasses.fields(cls)}
        for key, value in raw.items():
            if key == "run":
                continue  # a run folder's config.toml records what the run used: not a setting
            if key == "model" and isinstance(value, dict):
                options = dict(value)
                if "name" in options:
                    flat["model"] = options.pop("name")
                flat["model_options"] = options
            elif key in SECTIONS and isinstance(value, dict):
                flat.update(_section_settings(name, key, value, sections))
            elif key == "description":
                flat[key] = value
            else:
                raise ConfigError(f"recipe {name!r}: unknown top-level setting {key!r}")
        return cls.from_dict(flat)

    def to_toml(self) -> str:
        """The recipe as TOML, in sections, every setting spelled out with its documentation (a fully
        resolved config). Model options the recipe leaves unset are written commented out, with the
        named model's default: they follow ``name`` when it is edited."""
        fields = dataclasses.fields(self)
        lines = [f"# {self.name} recipe, resolved: every setting spelled out.",
                 f"# Model options shown commented out are unset: {self.model}'s defaults, which follow `name`.",
                 f"description = {toml_value(self.description)}", "", "[model]"]
        lines += _commented(f"name = {toml_value(self.model)}", f"registered model: {', '.join(list_models())}")
        docs, defaults = model_option_docs(), model_config(self.model).to_dict()
        explicit = {k: v for k, v in self.model_options.items() if v is not None}
        lines += [line for key, doc in docs.items() if key in explicit
                  for line in _commented(f"{key} = {toml_value(explicit[key])}", doc)]
        for key, doc in docs.items():
            if key not in explicit and key not in FROM_RUN:
                value = "unset" if defaults[key] is None else toml_value(defaults[key])
                lines += _commented(f"# {key} = {value}", doc)
        for section in SECTIONS:
            lines += ["", f"[{section}]"]
            for f in fields:
                if f.metadata["section"] == section:
                    doc = f.metadata["doc"]
                    if f.name == "lr_scaling" and self.lr_scaling == "auto":
                        doc += f" (here: {self.lr_rule()})"
                    lines += _commented(f"{f.name} = {toml_value(getattr(self, f.name))}", doc)
        return "\n".join(lines) + "\n"


def model_option_docs() -> dict[str, str]:
    """Every option of :class:`~xception.models.XceptionConfig`, in field order, with its documentation
    (the class docstring's ``Attributes`` entry, one line)."""
    docs: dict[str, str] = {}
    text = inspect.cleandoc(XceptionConfig.__doc__ or "").split("Attributes:", 1)[-1]
    for entry in re.split(r"\n(?=    \S)", text):  # entries start at four spaces; their continuations deeper
        names, sep, doc = entry.strip().partition(":")
        if sep:
            for name in names.split(","):
                docs[name.strip()] = " ".join(doc.split())
    return {f.name: docs.get(f.name, "") for f in dataclasses.fields(XceptionConfig)}


def _commented(setting: str, doc: str, column: int = 36, width: int = 120) -> list[str]:
    """``setting`` followed by ``# doc``, wrapped at ``width`` with the continuation aligned under it."""
    wrapped = textwrap.wrap(doc, width - column - 2) or [""]
    lines = [setting.ljust(column - 1) + f" # {wrapped[0]}".rstrip()]
    return lines + [" " * column + f"# {more}" for more in wrapped[1:]]


def _pair(name: str, values: tuple[float, ...]) -> tuple[float, float]:
    if len(values) != 2:
        raise ConfigError(f"recipe setting {name} needs two values (low, high), got {list(values)}")
    return values[0], values[1]


def _section_settings(recipe: str, section: str, values: dict[str, Any], sections: dict[str, str]) -> dict[str, Any]:
    """The settings of a TOML ``[section]``, each checked to belong in it."""
    for setting in values:
        if sections.get(setting) != section:
            where = f"[{sections[setting]}]" if sections.get(setting) else "no section (unknown setting)"
            raise ConfigError(f"recipe {recipe!r}: [{section}] {setting} belongs in {where}")
    return dict(values)


def _coerce(name: str, value: Any, default: Any) -> Any:
    """Make TOML / command-line values fit the field: ints where floats go, lists for pairs."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"recipe setting {name} must be true or false, got {value!r}")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if name in ("mean", "std", "scale", "ratio", "betas", "erase_scale", "erase_ratio"):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"recipe setting {name} must be a list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if default is not None and not isinstance(value, type(default)) and name != "model_options":
        kind = {int: "a whole number", float: "a number", str: "a string"}.get(type(default), type(default).__name__)
        raise ConfigError(f"recipe setting {name} must be {kind}, got {value!r}")
    return value


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} to TOML")


# -- the shipped recipes -------------------------------------------------------------------------------


def list_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files(__package__).joinpath("recipes")
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name (``paper``, ``modern``, ``fashion-mnist``) or a recipe file by path."""
    text_path = Path(name_or_path)
    if text_path.suffix == ".toml" or text_path.exists():
        if not text_path.is_file():
            raise MissingPathError(f"recipe file {text_path} does not exist")
        return Recipe.from_toml(text_path.read_text(), name=text_path.stem)
    names = list_recipes()
    if str(name_or_path) not in names:
        raise ConfigError(f"unknown recipe {str(name_or_path)!r}; shipped recipes: {', '.join(names)} "
                         "(or give the path of a .toml file)")
    text = resources.files(__package__).joinpath("recipes", f"{name_or_path}.toml").read_text()
    return Recipe.from_toml(text, name=str(name_or_path))


def parse_value(text: str) -> Any:
    """A command-line value read as TOML (``0.1``, ``true``, ``[0.5, 1.0]``), else as a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """Apply ``key=value`` strings (``lr=0.1``, ``model.width=0.5``) to a recipe."""
    changes: dict[str, Any] = {}
    options = dict(recipe.model_options)
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        key = key.strip().replace("-", "_")
        if key.startswith("model."):
            options[key.removeprefix("model.")] = parse_value(value)
        else:
            changes[key.split(".")[-1]] = parse_value(value)
    return recipe.replace(**changes, model_options=options)


def note_changes(base: Recipe, recipe: Recipe) -> Recipe:
    """``recipe`` with ``base``'s description followed by the settings that now differ from ``base``'s (a run's
    config.toml then does not describe a recipe it no longer is)."""
    old, new = base.to_dict(), recipe.to_dict()
    changed = [f"{k}={toml_value(v)}" for k, v in new.items() if k not in ("name", "description", "model_options")
               and v != old[k]]
    changed += [f"model.{k}={toml_value(v)}" for k, v in new["model_options"].items()
                if old["model_options"].get(k) != v]
    if not changed or not base.description or recipe.description != base.description:
        return recipe
    return recipe.replace(description=f"{base.description}; changed: {', '.join(changed)}")

"""Training: recipes (plain TOML files), the loop, checkpoints, EMA, run artifacts.

    >>> from xception.train import load_recipe, train
    >>> result = train(load_recipe("fashion-mnist"))     # trains the small-input Xception on Fashion-MNIST
    >>> result.weights                                   # runs/fashion-mnist-…/model.safetensors

The phases :func:`train` runs are public too, for experiments that drive runs themselves:
:func:`open_run` (:func:`build_run`, :func:`restore`), :func:`fit` (:func:`train_one_epoch`,
:func:`end_epoch`, :func:`validate`) and :func:`finish`; a :class:`Run` carries a :class:`TrainState`,
exactly what a checkpoint (``last.pt``, ``best.pt``) holds. Fine-tuning helpers: :func:`freeze_backbone`,
:func:`freeze_batchnorm` (eval-mode BatchNorm, the pretrained statistics kept).
"""

from ..distributed import DistEnv
from .artifacts import RunLog, read_metrics
from .checkpoint import EpochSums, ResumePoint, RunSettings, TrainState, find_resume_point, load_checkpoint
from .ema import ModelEma
from .epoch import EpochEnd, NonFiniteLoss, train_one_epoch
from .finetune import freeze_backbone, freeze_batchnorm
from .finish import TrainResult, finish
from .loop import FitResult, end_epoch, fit, open_log, train
from .recipe import Recipe, apply_overrides, list_recipes, load_recipe, note_changes
from .run import Compute, Run, RunData, build_optimizer, build_run, open_run, restore, resume_settings
from .schedule import lr_at
from .stop import StopRequest
from .validation import validate

__all__ = [
    "Compute",
    "DistEnv",
    "EpochEnd",
    "EpochSums",
    "FitResult",
    "ModelEma",
    "NonFiniteLoss",
    "Recipe",
    "ResumePoint",
    "Run",
    "RunData",
    "RunLog",
    "RunSettings",
    "StopRequest",
    "TrainResult",
    "TrainState",
    "apply_overrides",
    "build_optimizer",
    "build_run",
    "end_epoch",
    "find_resume_point",
    "finish",
    "fit",
    "freeze_backbone",
    "freeze_batchnorm",
    "list_recipes",
    "load_checkpoint",
    "load_recipe",
    "lr_at",
    "note_changes",
    "open_log",
    "open_run",
    "read_metrics",
    "restore",
    "resume_settings",
    "train",
    "train_one_epoch",
    "validate",
]

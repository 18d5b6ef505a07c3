"""Training: recipes (plain TOML files), the loop, checkpoints, EMA, run artifacts.

    >>> from xception.train import load_recipe, train
    >>> result = train(load_recipe("fashion-mnist"))     # trains the small-input Xception on Fashion-MNIST
    >>> result.weights                                   # runs/fashion-mnist-…/model.safetensors
"""

from ..distributed import DistEnv
from .ema import ModelEma
from .loop import NonFiniteLoss, RunSettings, TrainResult, resume_settings, train
from .recipe import Recipe, apply_overrides, list_recipes, load_recipe
from .schedule import lr_at

__all__ = [
    "DistEnv",
    "ModelEma",
    "NonFiniteLoss",
    "Recipe",
    "RunSettings",
    "TrainResult",
    "apply_overrides",
    "list_recipes",
    "load_recipe",
    "lr_at",
    "resume_settings",
    "train",
]

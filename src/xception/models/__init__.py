"""Model: config tables, the generic builder and the registry of named variants."""

from .config import ARCHITECTURES, Architecture, ModuleSpec, XceptionConfig
from .registry import MODELS, build_model, list_models, model_config, model_entry
from .xception import ClassifierHead, FeatureInfo, Xception, XceptionModule

__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "Architecture",
    "ClassifierHead",
    "FeatureInfo",
    "ModuleSpec",
    "Xception",
    "XceptionConfig",
    "XceptionModule",
    "build_model",
    "list_models",
    "model_config",
    "model_entry",
]

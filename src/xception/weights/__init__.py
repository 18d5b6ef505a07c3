"""Weights: formats in (Keras .h5, timm .pth/.safetensors, ours), our format out, named tags and downloads."""

from .checkpoint import Checkpoint, HeadReplacedWarning, LoadReport, WeightsMismatchError
from .hub import TAGS, WeightsTag, cache_dir, fetch, get_tag, list_weights
from .imagenet import imagenet_class_names
from .load import convert_weights, detect_format, load_pretrained, read_checkpoint
from .native import WeightsMeta, is_native, load_native, read_metadata, read_weights, save_weights

__all__ = [
    "TAGS",
    "Checkpoint",
    "HeadReplacedWarning",
    "LoadReport",
    "WeightsMeta",
    "WeightsMismatchError",
    "WeightsTag",
    "cache_dir",
    "convert_weights",
    "detect_format",
    "fetch",
    "get_tag",
    "imagenet_class_names",
    "is_native",
    "list_weights",
    "load_native",
    "load_pretrained",
    "read_checkpoint",
    "read_metadata",
    "read_weights",
    "save_weights",
]

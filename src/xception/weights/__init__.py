"""Weights: formats in (Keras 3 .keras/.weights.h5, legacy Keras .h5, timm .pth/.safetensors, ours), our format
out, named tags and downloads, files on the Hugging Face Hub (``hf-hub:ORG/NAME``)."""

from .hub import TAGS, WeightsTag, cache_dir, fetch, get_tag, list_weights
from .imagenet import imagenet_class_names
from .load import Loaded, convert_weights, detect_format, load_native, load_pretrained, read_mapped_weights
from .mapping import HeadReplacedWarning, LoadReport, MappedWeights, WeightsMismatchError
from .meta import WeightsMeta
from .native import is_native, read_metadata, read_weights, save_weights

__all__ = [
    "TAGS",
    "HeadReplacedWarning",
    "LoadReport",
    "Loaded",
    "MappedWeights",
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
    "read_mapped_weights",
    "read_metadata",
    "read_weights",
    "save_weights",
]

"""Data: image folders and Fashion-MNIST, robust decoding, transforms from a Preprocessing, loaders.

    >>> from xception.data import training_sources
    >>> train, val = training_sources("fashion-mnist")            # or a folder in ImageFolder layout
    >>> batches = val.batches(preprocessing, train=False, batch_size=256)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each name from the module that defines it, imported on first use: the transforms pull in torchvision
# (about a second), which commands that only need to find a dataset (``xception info``) should not pay for.
_HOMES = {
    "fashion_mnist": ("load_fashion_mnist", "read_idx", "save_samples"),
    "folder": ("FileWalk", "FolderScan", "ImageFolderDataset", "SkipLog", "Skipped", "scan_folder", "split_indices"),
    "images": ("IMAGE_EXTENSIONS", "UnreadableImage", "is_image_file", "load_image"),
    "loader": ("Batches", "EpochOrder", "FolderBatches", "ShardSampler", "TensorBatches"),
    "sources": ("FASHION_MNIST", "FolderSource", "Source", "TensorSource", "evaluation_source", "training_sources"),
    "transforms": ("Augmentation", "BatchTransform", "eval_transform", "train_transform"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:
    from .fashion_mnist import load_fashion_mnist, read_idx, save_samples
    from .folder import FileWalk, FolderScan, ImageFolderDataset, SkipLog, Skipped, scan_folder, split_indices
    from .images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_image
    from .loader import Batches, EpochOrder, FolderBatches, ShardSampler, TensorBatches
    from .sources import FASHION_MNIST, FolderSource, Source, TensorSource, evaluation_source, training_sources
    from .transforms import Augmentation, BatchTransform, eval_transform, train_transform


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "FASHION_MNIST",
    "IMAGE_EXTENSIONS",
    "Augmentation",
    "BatchTransform",
    "Batches",
    "EpochOrder",
    "FileWalk",
    "FolderBatches",
    "FolderScan",
    "FolderSource",
    "ImageFolderDataset",
    "ShardSampler",
    "SkipLog",
    "Skipped",
    "Source",
    "TensorBatches",
    "TensorSource",
    "UnreadableImage",
    "eval_transform",
    "evaluation_source",
    "is_image_file",
    "load_fashion_mnist",
    "load_image",
    "read_idx",
    "save_samples",
    "scan_folder",
    "split_indices",
    "train_transform",
    "training_sources",
]

"""Data: image folders and Fashion-MNIST, robust decoding, transforms from a Preprocessing, loaders.

    >>> from xception.data import training_sources
    >>> train, val = training_sources("fashion-mnist")            # or a folder in ImageFolder layout
    >>> batches = val.batches(preprocessing, train=False, batch_size=256)
"""

from .fashion_mnist import load_fashion_mnist, read_idx, save_samples
from .folder import FileWalk, FolderScan, ImageFolderDataset, SkipLog, Skipped, scan_folder, split_indices
from .images import IMAGE_EXTENSIONS, UnreadableImage, is_image_file, load_image
from .loader import Batches, EpochOrder, FolderBatches, ShardSampler, TensorBatches
from .sources import FASHION_MNIST, FolderSource, Source, TensorSource, evaluation_source, training_sources
from .transforms import Augmentation, BatchTransform, eval_transform, train_transform

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

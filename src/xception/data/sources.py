"""Datasets by name or path: what to train on and what to evaluate, before any transform is chosen.

A :class:`Source` knows its samples and class names; given a :class:`~xception.preprocessing.Preprocessing`
(from the weights, or from the recipe) it makes the batches. ``"fashion-mnist"`` names the embedded
default; anything else is a folder in ImageFolder layout.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from ..preprocessing import Preprocessing
from . import fashion_mnist
from .folder import FileWalk, ImageFolderDataset, Skipped, find_split_folders, scan_folder, split_indices
from .loader import Batches, EpochOrder, FolderBatches, ShardSampler, TensorBatches
from .transforms import Augmentation, BatchTransform, eval_transform, train_transform

FASHION_MNIST = "fashion-mnist"


class Source(ABC):
    """A labelled set of images: class names, size, files set aside while scanning, and batches."""

    classes: list[str]
    skipped: list[Skipped]
    description: str
    channels: int  # channels of the stored images (1 or 3)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def batches(
        self, pre: Preprocessing, *, train: bool, batch_size: int, sampler: EpochOrder | None = None,
        aug: Augmentation | None = None, seed: int = 0, device: torch.device | str = "cpu",
        workers: int | None = None,
    ) -> Batches:
        """Training batches (augmented, in ``sampler``'s order; a sampler is required) or evaluation batches
        (resized and cropped; every sample once, in order, unless a sampler says otherwise)."""

    def _order(self, train: bool, sampler: EpochOrder | None) -> EpochOrder:
        if sampler is not None:
            return sampler
        if train:
            raise ConfigError("training batches need a sampler (e.g. xception.distributed.ResumableSampler)")
        return ShardSampler(len(self))


class TensorSource(Source):
    """Images held in memory as a uint8 tensor (N, C, H, W) with int64 labels."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: Sequence[str], description: str) -> None:
        self.images, self.labels = images, labels
        self.classes, self.description = list(classes), description
        self.skipped = []
        self.channels = images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: Sequence[int], description: str) -> TensorSource:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return TensorSource(self.images[index], self.labels[index], self.classes, description)

    def batches(
        self, pre: Preprocessing, *, train: bool, batch_size: int, sampler: EpochOrder | None = None,
        aug: Augmentation | None = None, seed: int = 0, device: torch.device | str = "cpu",
        workers: int | None = None,
    ) -> TensorBatches:
        order = self._order(train, sampler)
        return TensorBatches(
            self.images, self.labels, batch_size=batch_size, sampler=order,
            transform=BatchTransform(pre, (aug or Augmentation()) if train else None), device=device,
            drop_last=train and len(order) > batch_size, seed=seed,
        )


class FolderSource(Source):
    """Image files in ImageFolder layout, decoded by worker processes."""

    def __init__(
        self, samples: Sequence[tuple[str, int]], classes: Sequence[str], description: str,
        skipped: Sequence[Skipped] = (),
    ) -> None:
        self.samples, self.classes, self.description = list(samples), list(classes), description
        self.skipped = list(skipped)
        self.channels = 3

    def __len__(self) -> int:
        return len(self.samples)

    def batches(
        self, pre: Preprocessing, *, train: bool, batch_size: int, sampler: EpochOrder | None = None,
        aug: Augmentation | None = None, seed: int = 0, device: torch.device | str = "cpu",
        workers: int | None = None,
    ) -> FolderBatches:
        transform = train_transform(pre, aug or Augmentation()) if train else eval_transform(pre)
        dataset = ImageFolderDataset(self.samples, self.classes, transform, channels=pre.channels)
        order = self._order(train, sampler)
        return FolderBatches(dataset, batch_size=batch_size, sampler=order, device=device, workers=workers,
                             drop_last=train and len(order) > batch_size, augment_seed=seed if train else None)


def training_sources(
    data: str | os.PathLike[str] | None = None, *, val: str | os.PathLike[str] | None = None,
    val_fraction: float = 0.1, seed: int = 0, data_dir: str | os.PathLike[str] | None = None,
) -> tuple[Source, Source | None]:
    """Training and validation data from ``data``: ``None``/``"fashion-mnist"`` or an image folder.

    A folder with ``train/`` and ``val/`` sub-folders is used as split; ``val`` names a validation folder
    explicitly; otherwise ``val_fraction`` of each class is held out (reproducibly from ``seed``; 0: no
    validation).
    """
    if data is None or str(data) == FASHION_MNIST:
        images, labels = fashion_mnist.load_fashion_mnist("train", data_dir)
        full = TensorSource(images, labels, fashion_mnist.CLASSES, "Fashion-MNIST train")
        if val_fraction <= 0:
            return full, None
        train_idx, val_idx = split_indices(labels.tolist(), val_fraction, seed)
        return (full.subset(train_idx, f"Fashion-MNIST train ({len(train_idx)} images)"),
                full.subset(val_idx, f"Fashion-MNIST held-out validation ({len(val_idx)} images)"))

    train_dir, found_val = find_split_folders(data)
    walk = FileWalk()  # one walk for both folders: an image reached from both is used for training only
    scan = scan_folder(train_dir, walk=walk)
    if len(scan.classes) < 2:
        raise DataError(f"{train_dir} has only one class ({scan.classes[0]}); a classifier needs at least two "
                        f"class folders, e.g. {train_dir}/{scan.classes[0]}/… and {train_dir}/other/…")
    train = FolderSource(scan.samples, scan.classes, str(train_dir), scan.skipped)
    val_dir = Path(val) if val is not None else found_val
    if val_dir is not None:
        val_scan = scan_folder(val_dir, scan.classes, walk=walk)
        return train, FolderSource(val_scan.samples, scan.classes, str(val_dir), val_scan.skipped)
    if val_fraction <= 0:
        return train, None
    train_idx, val_idx = split_indices([label for _, label in scan.samples], val_fraction, seed)
    return (FolderSource([scan.samples[i] for i in train_idx], scan.classes, f"{train_dir} (training share)",
                         scan.skipped),
            FolderSource([scan.samples[i] for i in val_idx], scan.classes, f"{train_dir} (held-out share)"))


def evaluation_source(
    data: str | os.PathLike[str], *, classes: Sequence[str] | None = None, split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
) -> Source:
    """Data to evaluate: ``"fashion-mnist"`` (its ``split``) or one image folder (its class sub-folders,
    matched by name against ``classes`` — the model's)."""
    if str(data) == FASHION_MNIST:
        if classes is not None and list(classes) != fashion_mnist.CLASSES:
            raise DataError("these weights were not trained on Fashion-MNIST classes; evaluate them on a folder "
                            "of their own classes")
        images, labels = fashion_mnist.load_fashion_mnist(split, data_dir)
        return TensorSource(images, labels, fashion_mnist.CLASSES, f"Fashion-MNIST {split}")
    scan = scan_folder(data, classes)
    return FolderSource(scan.samples, scan.classes, str(data), scan.skipped)

"""Batches for training and evaluation, with the seams distributed training needs.

Every loader here yields ``(images, labels, skipped)`` on the target device and has the same three
controls: ``set_epoch(epoch, start_batch)`` (which epoch's order, and where in it to start: exact resume),
``len()`` (batches left in this epoch) and ``num_samples``. An :class:`EpochSampler` decides the order:
a permutation seeded by (seed, epoch), so any process can recompute any epoch, and a ``rank`` /
``world_size`` share of it, so several processes can split an epoch without overlap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from .folder import ImageFolderDataset, Skipped, collate_skipping
from .transforms import BatchTransform

Batch = tuple[torch.Tensor, torch.Tensor, list[Skipped]]


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix64 steps): neighbouring inputs give unrelated seeds."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 31
    return value & 0x7FFFFFFFFFFFFFFF


class EpochSampler(Sampler):
    """The indices one process visits in one epoch.

    Args:
        size: samples in the dataset.
        shuffle: a fresh permutation each epoch (seeded by ``seed`` and the epoch), else 0, 1, 2, …
        rank, world_size: this process's share: every ``world_size``-th index from ``rank``.
        pad: repeat the first indices so every rank gets the same count (training: equal step counts);
            False gives exact shares (evaluation: every sample counted once).
        with_seeds: yield ``(index, seed)`` pairs so the dataset can draw that sample's augmentation
            from its own seed (see :class:`~xception.data.folder.ImageFolderDataset`).
    """

    def __init__(
        self, size: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
        pad: bool = True, with_seeds: bool = False,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank, self.world_size, self.pad, self.with_seeds = rank, world_size, pad, with_seeds
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Visit epoch ``epoch``'s order, skipping this rank's first ``start`` samples (already seen)."""
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This rank's whole share of the current epoch (before ``start`` is applied)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.size, generator=generator).tolist()
        else:
            order = list(range(self.size))
        if self.pad and self.world_size > 1 and order:
            total = math.ceil(self.size / self.world_size) * self.world_size
            order += (order * math.ceil(total / len(order)))[: total - len(order)]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int | tuple[int, int]]:
        for index in self.indices()[self.start :]:
            yield (index, mix_seed(self.seed, self.epoch, index)) if self.with_seeds else index

    def __len__(self) -> int:
        if self.pad:
            share = math.ceil(self.size / self.world_size)
        else:
            share = len(range(self.rank, self.size, self.world_size))
        return max(0, share - self.start)


class Batches(Protocol):
    """What the training loop and the evaluator need of a loader."""

    batch_size: int
    sampler: EpochSampler

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...

    @property
    def num_samples(self) -> int: ...


class TensorBatches:
    """Batches from images held in memory as one uint8 tensor (N, C, H, W), transformed per batch.

    The uint8 batch moves to the device first and is augmented there; augmentation is seeded by
    (seed, epoch, batch index), so resuming mid-epoch replays the same batches exactly.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, sampler: EpochSampler,
        transform: BatchTransform, device: torch.device | str = "cpu", drop_last: bool = False,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.batch_size, self.sampler, self.transform = batch_size, sampler, transform
        self.device, self.drop_last = torch.device(device), drop_last
        self.start_batch = 0

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.start_batch = start_batch
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        pin = self.device.type == "cuda"
        for i in range(len(self)):
            index = order[i * self.batch_size : (i + 1) * self.batch_size]
            images, labels = self.images[index], self.labels[index]
            if pin:
                images, labels = images.pin_memory(), labels.pin_memory()
            images = images.to(self.device, non_blocking=True)
            generator = torch.Generator().manual_seed(
                mix_seed(self.sampler.seed, self.sampler.epoch, self.sampler.rank, self.start_batch + i)
            )
            yield self.transform(images, generator), labels.to(self.device, non_blocking=True), []


def default_workers() -> int:
    """Decoding workers: one per core, keeping one for the training process, at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


class FolderBatches:
    """Batches of an image folder, decoded and augmented in worker processes.

    Workers stay alive between epochs; pinned memory speeds the copy to a GPU. Unreadable files arrive
    as :class:`Skipped` records next to each batch.
    """

    def __init__(
        self, dataset: ImageFolderDataset, *, batch_size: int, sampler: EpochSampler,
        device: torch.device | str = "cpu", workers: int | None = None, drop_last: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.device = torch.device(device)
        workers = default_workers() if workers is None else workers
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            drop_last=drop_last, collate_fn=collate_skipping, prefetch_factor=4 if workers > 0 else None,
        )

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.sampler.set_epoch(epoch, start_batch * self.batch_size)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels, skipped in self.loader:
            yield (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                   skipped)

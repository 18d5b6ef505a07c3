"""Batches for training and evaluation, with the seams distributed training needs.

Every loader here yields ``(images, labels, skipped)`` on the target device and has the same controls:
``set_epoch(epoch, start)`` (which epoch's order, and from which position: exact resume), ``len()``
(batches left in this epoch) and ``num_samples``. The order comes from a sampler the caller supplies —
the training loop's resumable, rank-sharded one, or :class:`ShardSampler` for evaluation — so the
same loaders serve one process or many.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import ConfigError, DataError
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


class EpochOrder(Protocol):
    """A sampler that can replay any epoch from any position (e.g. ``xception.distributed.ResumableSampler``).

    ``set_epoch(epoch, start)`` selects the epoch's order and skips its first ``start`` positions (counted
    over all processes together); ``epoch`` is the epoch selected.
    """

    epoch: int

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...
    def __iter__(self) -> Iterator[int]: ...
    def __len__(self) -> int: ...


class ShardSampler(Sampler[int]):
    """Every sample once, in order, dealt round-robin over ``world_size`` processes without padding:
    evaluation counts summed over the processes are exact."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.size, self.rank, self.world_size = size, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.size, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world_size))


class _WithSeeds(Sampler[tuple[int, int]]):
    """Pairs each index with its own augmentation seed, a function of (seed, epoch, index) only."""

    def __init__(self, sampler: EpochOrder, seed: int) -> None:
        self.sampler, self.seed = sampler, seed

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((i, mix_seed(self.seed, epoch, i)) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class Batches(Protocol):
    """What the training loop and the evaluator need of a loader."""

    batch_size: int

    def set_epoch(self, epoch: int, start: int = 0) -> None: ...
    def __iter__(self) -> Iterator[Batch]: ...
    def __len__(self) -> int: ...

    @property
    def num_samples(self) -> int: ...


class TensorBatches:
    """Batches from images held in memory as one uint8 tensor (N, C, H, W), transformed per batch.

    The uint8 batch moves to the device first and is augmented there; augmentation is seeded by
    (seed, epoch, rank, start position, batch index), so resuming mid-epoch replays the same batches.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int, sampler: EpochOrder,
        transform: BatchTransform, device: torch.device | str = "cpu", drop_last: bool = False, seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(f"expected uint8 images shaped (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, labels.long()
        self.batch_size, self.sampler, self.transform = batch_size, sampler, transform
        self.device, self.drop_last, self.seed = torch.device(device), drop_last, seed
        self.start = 0

    @property
    def num_samples(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.start = start
        self.sampler.set_epoch(epoch, start)

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
            rank = getattr(self.sampler, "rank", 0)
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.sampler.epoch, rank, self.start, i))
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
        self, dataset: ImageFolderDataset, *, batch_size: int, sampler: EpochOrder,
        device: torch.device | str = "cpu", workers: int | None = None, drop_last: bool = False,
        augment_seed: int | None = None,
    ) -> None:
        """``augment_seed`` (training): each sample's augmentation is drawn from its own seed, derived from
        this, the epoch and the index — the same whichever worker or process decodes it."""
        self.dataset, self.batch_size, self.sampler = dataset, batch_size, sampler
        self.device, self.drop_last = torch.device(device), drop_last
        workers = default_workers() if workers is None else workers
        order = _WithSeeds(sampler, augment_seed) if augment_seed is not None else sampler
        self.loader = DataLoader(
            dataset, batch_size=batch_size, sampler=order, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=workers > 0,
            drop_last=drop_last, collate_fn=collate_skipping, prefetch_factor=4 if workers > 0 else None,
            # Worker seeds come from this generator, not the global one, so starting workers never shifts
            # the random numbers training draws (dropout): a resumed run stays exact.
            generator=torch.Generator().manual_seed(0),
        )

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch, start)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        held: Batch | None = None  # each batch waits for the next, so the last can carry the tail's records
        for images, labels, skipped in self.loader:
            if held is not None:
                yield held
            held = (images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True),
                    skipped)
        if held is not None:
            yield (held[0], held[1], [*held[2], *self._unreadable_in_dropped_tail()])

    def _unreadable_in_dropped_tail(self) -> list[Skipped]:
        """``drop_last`` leaves the epoch's last partial batch unread: read those few files only to find the
        unreadable ones, so that every bad file is warned about and counted in the epoch that meets it."""
        tail = len(self.sampler) % self.batch_size if self.drop_last else 0
        if not tail:
            return []
        order = list(self.sampler)[-tail:]
        return [found for index in order if (found := self.dataset.unreadable(index)) is not None]

"""Image folders in the ImageFolder layout: ``root/<class>/**/<image>``, one sub-folder per class.

Scanning checks what is cheap to check (the folder exists, every class has images, no file is empty) so
a bad path fails before any work starts. Decoding happens later, in loader workers: a file that turns out
unreadable becomes a :class:`Skipped` record instead of a sample, and the training loop counts it.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from .images import EMPTY, NOT_AN_IMAGE, UnreadableImage, is_image_file, load_image

log = logging.getLogger("xception.data")

VAL_FOLDER_NAMES: tuple[str, ...] = ("val", "valid", "validation")


@dataclass(frozen=True)
class Skipped:
    """A file a dataset could not use, and why."""

    path: str
    reason: str
    detail: str = ""


@dataclass
class SkipLog:
    """Unreadable files met so far: each is warned about once and counted by reason."""

    strict: bool = False
    seen: dict[str, Skipped] = field(default_factory=dict)

    def add(self, items: Sequence[Skipped]) -> None:
        for item in items:
            if item.path in self.seen:
                continue
            if self.strict:
                detail = f" ({item.detail})" if item.detail else ""
                raise ValueError(f"{item.path}: {item.reason}{detail}; remove or replace the file, "
                                 "or run without --strict to skip unreadable files")
            self.seen[item.path] = item
            log.warning("skipping %s: %s%s", item.path, item.reason, f" ({item.detail})" if item.detail else "")

    def counts(self) -> dict[str, int]:
        return dict(Counter(item.reason for item in self.seen.values()))

    def __len__(self) -> int:
        return len(self.seen)


@dataclass(frozen=True)
class FolderScan:
    """What a scan found: class names (sorted), (path, class index) samples, and files it set aside."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[Skipped]

    def counts_per_class(self) -> list[int]:
        counts = Counter(label for _, label in self.samples)
        return [counts[i] for i in range(len(self.classes))]


def scan_folder(root: str | os.PathLike[str], classes: Sequence[str] | None = None) -> FolderScan:
    """List the images of ``root`` in ImageFolder layout; raise before any work if it cannot be used.

    ``classes`` fixes the class list (and indices), e.g. a validation folder must use the training
    folder's classes; the folder may hold a subset of them.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a folder; expected one sub-folder per class (ImageFolder layout)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise ValueError(f"{root} has no class folders; expected one sub-folder per class, "
                         f"e.g. {root}/cat/001.jpg, {root}/dog/002.jpg")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise ValueError(f"{root} has class folders the model does not know: {unknown}; "
                             f"known classes: {list(classes)}")
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    skipped: list[Skipped] = []
    for name in found:
        images = 0
        for path in walk_files(root / name):
            if not is_image_file(path):
                skipped.append(Skipped(str(path), NOT_AN_IMAGE, f"unknown extension {path.suffix or '(none)'}"))
            elif path.stat().st_size == 0:
                skipped.append(Skipped(str(path), EMPTY))
            else:
                samples.append((str(path), index[name]))
                images += 1
        if images == 0:
            raise ValueError(f"class folder {root / name} has no usable images; add images or remove the folder")
    return FolderScan(root, list(classes), samples, skipped)


def walk_files(folder: Path) -> list[Path]:
    """Every file below ``folder`` (links followed), hidden files and folders left out, in sorted order."""
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return files


def find_split_folders(root: str | os.PathLike[str]) -> tuple[Path, Path | None]:
    """``root/train`` + ``root/val`` (or ``valid``, ``validation``) when present, else ``root`` alone."""
    root = Path(root)
    train = root / "train"
    if train.is_dir():
        for name in VAL_FOLDER_NAMES:
            if (root / name).is_dir():
                return train, root / name
        return train, None
    return root, None


def split_indices(labels: Sequence[int], val_fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """A reproducible stratified split of sample indices: ``val_fraction`` of every class goes to val
    (at least one sample of each class with two or more)."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(i)
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=generator).tolist()
        n_val = max(1, round(len(members) * val_fraction)) if len(members) > 1 else 0
        val.extend(members[i] for i in order[:n_val])
        train.extend(members[i] for i in order[n_val:])
    return sorted(train), sorted(val)


class ImageFolderDataset(Dataset):
    """Samples of an image folder, decoded and transformed on demand (in loader workers).

    ``dataset[i]`` returns ``(image tensor, class index)`` or a :class:`Skipped` record. ``dataset[(i, seed)]``
    draws the random augmentation from ``seed``: the sampler then decides both which image and which
    augmentation, so results do not depend on how many workers or processes share the work.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Callable[[Any], torch.Tensor],
        channels: int = 3,
    ) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform
        self.channels = channels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int] | Skipped:
        index, seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        try:
            image = load_image(path, self.channels)
        except UnreadableImage as err:
            return Skipped(path, err.reason, err.detail)
        if seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), label


def collate_skipping(batch: list[Any]) -> tuple[torch.Tensor, torch.Tensor, list[Skipped]]:
    """Stack the good samples; pass the skipped ones on so the main process can count them."""
    good = [item for item in batch if not isinstance(item, Skipped)]
    skipped = [item for item in batch if isinstance(item, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    images, labels = default_collate(good)
    return images, labels, skipped

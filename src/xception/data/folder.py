"""Image folders in the ImageFolder layout: ``root/<class>/**/<image>``, one sub-folder per class.

Scanning checks what is cheap to check (the folder exists, every class has images, no file is empty) so
a bad path fails before any work starts. Decoding happens later, in loader workers: a file that turns out
unreadable becomes a :class:`Skipped` record instead of a sample, and the training loop counts it.

Links are followed, but every real folder and file is visited once (:class:`FileWalk`): a link loop
(``cat/loop -> ../cat``) cannot multiply a class, and an image reached twice cannot land on both sides
of the train/validation split. What a walk leaves out is counted as a ``duplicate`` skip.
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

from ..errors import ConfigError, DataError, MissingPathError, NotAFolderError, hint
from .images import (
    DUPLICATE,
    EMPTY,
    MISSING,
    NOT_AN_IMAGE,
    UNREADABLE_FOLDER,
    UnreadableImage,
    is_image_file,
    load_image,
)

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
            # A duplicate is not unreadable: its file is used once, so strict mode has nothing to refuse.
            if self.strict and item.reason != DUPLICATE:
                detail = f" ({item.detail})" if item.detail else ""
                raise DataError(f"{item.path}: {item.reason}{detail}; remove or replace the file, or run "
                                f"{hint('with strict=False', 'without --strict')} to skip unreadable files")
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


def scan_folder(
    root: str | os.PathLike[str], classes: Sequence[str] | None = None, *, walk: FileWalk | None = None
) -> FolderScan:
    """List the images of ``root`` in ImageFolder layout; raise before any work if it cannot be used.

    ``classes`` fixes the class list (and indices), e.g. a validation folder must use the training
    folder's classes; the folder may hold a subset of them. ``walk`` carries what earlier scans visited
    (a training folder's, when this is its validation folder): files met there are duplicates here.
    """
    root = Path(root)
    if not root.exists():
        raise MissingPathError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise NotAFolderError(f"{root} is a file, not a folder; expected one sub-folder per class (ImageFolder "
                              "layout)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DataError(f"{root} has no class folders; expected one sub-folder per class, "
                        f"e.g. {root}/cat/001.jpg, {root}/dog/002.jpg")
    if classes is None:
        classes = found
    else:
        unknown = sorted(set(found) - set(classes))
        if unknown:
            raise DataError(f"{root} has class folders the model does not know: {unknown}; "
                            f"known classes: {list(classes)}")
    walk = walk if walk is not None else FileWalk()
    # The root and every class folder are claimed first: a link to one of them from inside a class is a
    # duplicate, and does not take the other class's images into this one.
    for folder in (root, *(root / name for name in found)):
        if (first := walk.reserve(folder)) is not None:
            raise DataError(f"{folder} is the same folder as {first} (a link): remove one of them")
    index = {name: i for i, name in enumerate(classes)}
    samples: list[tuple[str, int]] = []
    skipped: list[Skipped] = []
    for name in found:
        images = 0
        for path, stat in walk.entries(root / name):
            if not is_image_file(path):
                skipped.append(Skipped(str(path), NOT_AN_IMAGE, f"unknown extension {path.suffix or '(none)'}"))
            elif stat is None:
                skipped.append(Skipped(str(path), MISSING, "a link to nothing"))
            elif stat.st_size == 0:
                skipped.append(Skipped(str(path), EMPTY))
            else:
                samples.append((str(path), index[name]))
                images += 1
        if images == 0:
            raise DataError(f"class folder {root / name} has no usable images; add images or remove the folder")
    return FolderScan(root, list(classes), samples, skipped + walk.take_skipped())


class FileWalk:
    """Walks folders, links followed, visiting every real folder and file once.

    A file or folder is identified by what it is on disk (device and inode), so a folder reached again
    through a link (a loop such as ``cat/loop -> ../cat``, a link into another class) is not entered again
    and a file reached again (a link, a hard link) is not listed again: each is recorded in ``skipped`` as
    a ``duplicate`` (a folder that cannot be listed, as ``folder not readable``). One walk may span several
    folders (a folder's classes, a training and a validation folder, the inputs of a prediction): what one
    visited, the others do not repeat. Hidden files and folders are left out; listings are in sorted
    order, a folder's files before its sub-folders.
    """

    def __init__(self) -> None:
        self.skipped: list[Skipped] = []
        self._first: dict[tuple[int, int], str] = {}  # (device, inode) → the path it was first met at
        self._reserved: set[tuple[int, int]] = set()  # claimed by reserve(), not walked yet
        self._taken = 0

    def files(self, folder: str | os.PathLike[str]) -> list[Path]:
        """The files below ``folder`` not met before (links to nothing included: reading them says so)."""
        return [path for path, _ in self.entries(folder)]

    def entries(self, folder: str | os.PathLike[str]) -> list[tuple[Path, os.stat_result | None]]:
        """:meth:`files`, each with its ``stat`` (None for a link to nothing)."""
        folder = Path(folder)
        found: list[tuple[Path, os.stat_result | None]] = []
        stat = self._stat(folder)
        key = None if stat is None else (stat.st_dev, stat.st_ino)
        if key in self._reserved and self._first[key] == str(folder):
            self._reserved.discard(key)
            self._walk(folder, found)
        elif self._claim(folder, stat, "folder"):
            self._walk(folder, found)
        return found

    def add_file(self, path: str | os.PathLike[str]) -> bool:
        """Claim one file given by name: True if it is new (or missing: reading it will say so)."""
        return self._claim(Path(path), self._stat(Path(path)), "file")

    def reserve(self, folder: str | os.PathLike[str]) -> str | None:
        """Claim ``folder`` before walking it, so that links reaching it from elsewhere are duplicates.
        Returns the path it was first claimed at when that was another path, else None."""
        stat = self._stat(Path(folder))
        if stat is None:
            return None
        key = (stat.st_dev, stat.st_ino)
        if key in self._first:
            return self._first[key] if self._first[key] != str(folder) else None
        self._first[key] = str(folder)
        self._reserved.add(key)
        return None

    def take_skipped(self) -> list[Skipped]:
        """What was left out since the last call."""
        new = self.skipped[self._taken :]
        self._taken = len(self.skipped)
        return new

    @staticmethod
    def _stat(path: Path) -> os.stat_result | None:
        try:
            return path.stat()
        except OSError:  # a link to nothing (or a file removed meanwhile)
            return None

    def _claim(self, path: Path, stat: os.stat_result | None, kind: str) -> bool:
        if stat is None:
            return True
        key = (stat.st_dev, stat.st_ino)
        if key not in self._first:
            self._first[key] = str(path)
            return True
        self.skipped.append(Skipped(str(path), DUPLICATE, f"the same {kind} as {self._first[key]}"))
        return False

    def _walk(self, folder: Path, found: list[tuple[Path, os.stat_result | None]]) -> None:
        pending = [folder]
        while pending:
            current = pending.pop()
            try:
                with os.scandir(current) as it:
                    names = sorted((entry.name, entry.is_dir()) for entry in it if not entry.name.startswith("."))
            except OSError as err:
                self.skipped.append(Skipped(str(current), UNREADABLE_FOLDER, err.strerror or str(err)))
                continue
            folders = []
            for name, is_dir in names:
                path = current / name
                stat = self._stat(path)
                if not self._claim(path, stat, "folder" if is_dir else "file"):
                    continue
                if is_dir:
                    folders.append(path)
                else:
                    found.append((path, stat))
            pending.extend(reversed(folders))  # depth first, in sorted order


def walk_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Every file below ``folder``, each real file once (see :class:`FileWalk`), in sorted order."""
    return FileWalk().files(folder)


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
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
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

    def unreadable(self, index: int) -> Skipped | None:
        """Why sample ``index`` cannot be used, or None when its image decodes."""
        path = self.samples[index][0]
        try:
            load_image(path, self.channels)
        except UnreadableImage as err:
            return Skipped(path, err.reason, err.detail)
        return None

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

"""The images quantisation reads: calibration images (labels unused) and labelled held-out images.

Calibration images are an image folder (any layout: every image below it), ``"fashion-mnist"`` (the training
split) or a float tensor already preprocessed as the model expects. Held-out images are labelled: a folder
of class sub-folders, ``"fashion-mnist-test"``, or (images, labels) tensors. The two never overlap: without
held-out images, Fashion-MNIST calibration is checked on the test split, and a labelled calibration folder
gives a fifth of each class to the check.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import FASHION_MNIST, FolderSource, Source, TensorSource, evaluation_source, training_sources
from ..data.folder import FileWalk, scan_folder, split_indices
from ..data.images import is_image_file
from ..errors import ConfigError, DataError, MissingPathError, NotAFolderError, hint
from ..preprocessing import Preprocessing

FASHION_MNIST_TEST = "fashion-mnist-test"
HELD_OUT_FRACTION = 0.2
Calibration = str | os.PathLike | torch.Tensor
HeldOut = str | os.PathLike | tuple[torch.Tensor, torch.Tensor] | None


@dataclass
class ImageSet:
    """Preprocessed batches (images, labels or None), readable more than once; unreadable files counted."""

    description: str
    size: int
    read: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor | None, int]]]
    skipped: int = 0

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        self.skipped = 0
        for x, y, skipped in self.read():
            self.skipped += skipped
            if len(x):
                yield x, y

    def images(self) -> Iterator[torch.Tensor]:
        return (x for x, _ in self.batches())


@dataclass(frozen=True)
class Reading:
    """How to read images: the weights' preprocessing, batch size, decoding workers, where Fashion-MNIST is."""

    pre: Preprocessing
    batch_size: int = 64
    workers: int | None = None
    data_dir: str | os.PathLike[str] | None = None
    seed: int = 0


def _subset(source: Source, count: int | None, seed: int) -> Source:
    """``count`` images of ``source`` drawn at random (reproducibly from ``seed``), in their order."""
    if count is None or count >= len(source):
        return source
    pick = sorted(torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:count].tolist())
    what = f"{source.description} ({count} of {len(source)} images)"
    if isinstance(source, TensorSource):
        return source.subset(pick, what)
    assert isinstance(source, FolderSource)
    return FolderSource([source.samples[i] for i in pick], source.classes, what, source.skipped)


def _from_source(source: Source, reading: Reading) -> ImageSet:
    def read() -> Iterator[tuple[torch.Tensor, torch.Tensor | None, int]]:
        loader = source.batches(reading.pre, train=False, batch_size=reading.batch_size, workers=reading.workers)
        for x, y, skipped in loader:
            yield x, y, len(skipped)

    return ImageSet(source.description, len(source), read)


def _from_tensors(images: torch.Tensor, labels: torch.Tensor | None, what: str, batch_size: int) -> ImageSet:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        raise DataError(f"{what} must be a float tensor (N, C, H, W) preprocessed as the model expects")
    if not len(images):
        raise DataError(f"{what} holds no images")
    if labels is not None and len(labels) != len(images):
        raise DataError(f"{what}: {len(images)} images but {len(labels)} labels")

    def read() -> Iterator[tuple[torch.Tensor, torch.Tensor | None, int]]:
        for i in range(0, len(images), batch_size):
            yield images[i:i + batch_size].float(), None if labels is None else labels[i:i + batch_size], 0

    return ImageSet(f"{what} ({len(images)} images)", len(images), read)


def _image_folder(folder: Path) -> FolderSource:
    """Every image below ``folder``, in any layout (calibration needs no labels)."""
    if not folder.exists():
        raise MissingPathError(f"calibration folder {folder} does not exist")
    if not folder.is_dir():
        raise NotAFolderError(f"calibration images must be a folder, and {folder} is a file")
    paths = [p for p in FileWalk().files(folder) if is_image_file(p)]
    if not paths:
        raise DataError(f"no calibration images in {folder}: put a few hundred images like the ones the model "
                        "will see there (any layout)")
    return FolderSource([(str(p), 0) for p in paths], ["image"], str(folder))


def _labelled_split(folder: Path, classes: Sequence[str] | None, seed: int) -> tuple[FolderSource, FolderSource]:
    """A labelled folder cut in two per class: the larger part calibrates, the rest checks."""
    scan = scan_folder(folder, classes)
    labels = [label for _, label in scan.samples]
    keep, held = split_indices(labels, HELD_OUT_FRACTION, seed)
    if not keep or not held:
        raise DataError(f"{folder} has too few images to set {HELD_OUT_FRACTION:.0%} aside for the check; "
                        f"give held-out images with {hint('held_out=FOLDER', '--held-out FOLDER')}")
    pick = [scan.samples[i] for i in keep]
    return (FolderSource(pick, scan.classes, f"{folder} (calibration share)", scan.skipped),
            FolderSource([scan.samples[i] for i in held], scan.classes, f"{folder} (held-out share)"))


def _has_class_folders(folder: Path) -> bool:
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def calibration_and_held_out(
    calibration: Calibration, held_out: HeldOut, *, classes: Sequence[str] | None, images: int,
    held_out_images: int | None, reading: Reading,
) -> tuple[ImageSet, ImageSet]:
    """The calibration images (``images`` of them at most) and the labelled held-out images."""
    if images < 1:
        raise ConfigError(f"the number of calibration images must be ≥ 1, got {images}")
    held: Source | ImageSet | None = None
    if isinstance(calibration, torch.Tensor):
        calib: Source | ImageSet = _from_tensors(calibration[:images], None, "calibration tensor", reading.batch_size)
    elif str(calibration) == FASHION_MNIST:
        calib = training_sources(FASHION_MNIST, val_fraction=0, data_dir=reading.data_dir)[0]
    elif str(calibration) == FASHION_MNIST_TEST:
        raise ConfigError("calibrate on Fashion-MNIST's training split ('fashion-mnist'); its test split is "
                          "for the held-out check")
    elif held_out is None and _has_class_folders(Path(calibration)):
        calib, held = _labelled_split(Path(calibration), classes, reading.seed)
    else:
        calib = _image_folder(Path(calibration))
    if held is None:
        held = _held_out(held_out, calibration, classes, reading)
    calib_set = calib if isinstance(calib, ImageSet) else _from_source(_subset(calib, images, reading.seed), reading)
    if isinstance(held, ImageSet):
        return calib_set, held
    return calib_set, _from_source(_subset(held, held_out_images, reading.seed + 1), reading)


def _held_out(held_out: HeldOut, calibration: Calibration, classes: Sequence[str] | None,
              reading: Reading) -> Source | ImageSet:
    if isinstance(held_out, tuple):
        return _from_tensors(held_out[0], held_out[1], "held-out tensor", reading.batch_size)
    if held_out is None:
        if isinstance(calibration, torch.Tensor) or str(calibration) != FASHION_MNIST:
            raise ConfigError("the calibration method is chosen on labelled held-out images: give them with "
                              f"{hint('held_out=FOLDER', '--held-out FOLDER')} (class sub-folders) or "
                              f"{hint(f'held_out={FASHION_MNIST_TEST!r}', f'--held-out {FASHION_MNIST_TEST}')}")
        held_out = FASHION_MNIST_TEST
    if str(held_out) in (FASHION_MNIST_TEST, FASHION_MNIST):
        return evaluation_source(FASHION_MNIST, classes=classes, split="test", data_dir=reading.data_dir)
    return evaluation_source(held_out, classes=classes)

"""Fashion-MNIST (Xiao et al. 2017): 70,000 28×28 grayscale images of 10 kinds of clothing, from IDX files.

Where the files come from, in order: the folder given (``data_dir``), else the installed copies
(:func:`xception.locations.dataset_folders`: Debian's ``dataset-fashion-mnist`` package in
``/usr/share/datasets/fashion-mnist``, then the cache, or the folders ``$XCEPTION_DATA_PATH`` names), and
finally a download from the upstream mirror (``$XCEPTION_FASHION_MNIST_URL`` names another) into the folder
given or the cache, verified against the published MD5 checksums. Files may be gzipped (``*.gz``) or not.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import urllib.error
import urllib.request
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from ..errors import ConfigError, DataError, DownloadError, MissingPathError, hint
from ..fileio import atomic_write, file_digest
from ..locations import dataset_cache, dataset_folders

if TYPE_CHECKING:
    import torch

log = logging.getLogger("xception.data")

CLASSES: list[str] = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
SIZES = {"train": 60_000, "test": 10_000}
MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
MIRROR_ENV = "XCEPTION_FASHION_MNIST_URL"
# The MD5 sums upstream publishes for its gzipped files.
CHECKSUMS: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# Pixel statistics of the 60,000 training images (for normalisation).
MEAN, STD = 0.2860, 0.3530

_IDX_TYPES = {0x08: "uint8"}  # IDX type codes: the torch dtypes, by name


def cache_dir() -> Path:
    """Where a download goes when no folder is given."""
    return dataset_cache("fashion-mnist")


def mirror() -> str:
    """The base URL of the download: ``$XCEPTION_FASHION_MNIST_URL``, else upstream's."""
    return os.environ.get(MIRROR_ENV) or MIRROR


def _file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def has_files(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` holds all four IDX files (gzipped or not)."""
    return all(_file(Path(folder), stem) for pair in SPLITS.values() for stem in pair)


def find_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The first folder holding the four IDX files: ``data_dir`` if given, else the first installed copy."""
    candidates = [Path(data_dir)] if data_dir is not None else dataset_folders("fashion-mnist")
    return next((c for c in candidates if has_files(c)), None)


def locate(data_dir: str | os.PathLike[str] | None = None, *, download: bool = True) -> Path:
    """A folder with the IDX files, downloading them (into ``data_dir`` or the cache) if none has them."""
    found = find_fashion_mnist(data_dir)
    if found is not None:
        return found
    searched = [Path(data_dir)] if data_dir is not None else dataset_folders("fashion-mnist")
    where = " or ".join(map(str, searched)) or "any folder (XCEPTION_DATA_PATH names none)"
    if not download:
        raise MissingPathError(
            f"Fashion-MNIST is not in {where}; install it with 'apt-get install dataset-fashion-mnist', "
            f"put the four IDX files in a folder and pass {hint('data_dir=FOLDER', '--data-dir FOLDER')}, or allow "
            "the download"
        )
    return download_fashion_mnist(Path(data_dir) if data_dir is not None else cache_dir(), base_url=mirror(),
                                  checksums=CHECKSUMS)


def download_fashion_mnist(
    dest: str | os.PathLike[str], *, base_url: str = MIRROR, checksums: Mapping[str, str] = CHECKSUMS,
    timeout: float = 60.0,
) -> Path:
    """Download the gzipped IDX files into ``dest``, each verified against its MD5 before it is kept."""
    dest = Path(dest)
    for name, md5 in checksums.items():
        target = dest / name
        if target.is_file() and file_digest(target, "md5") == md5:
            continue
        url = base_url.rstrip("/") + "/" + name
        log.info("downloading %s", url)
        atomic_write(target, lambda tmp, url=url, md5=md5: _fetch(url, tmp, md5, timeout))
    return dest


def _fetch(url: str, path: Path, md5: str, timeout: float) -> None:
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False) as bar:
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(
            f"could not download {url} ({reason}); install Fashion-MNIST with "
            f"'apt-get install dataset-fashion-mnist' or pass {hint('data_dir=FOLDER', '--data-dir FOLDER')} with "
            "the four IDX files"
        ) from err
    if digest.hexdigest() != md5:
        raise DownloadError(f"{url} has MD5 {digest.hexdigest()}, expected {md5}: the download is damaged or "
                            "not the published file; nothing was kept, try again")


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """An IDX file (gzipped or not) as a tensor; a DataError naming the problem if it is not a valid one."""
    import torch  # here, where tensors are made: finding the files (xception info) goes without torch

    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path} cannot be read ({err}); the file is damaged, fetch it again") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DataError(f"{path} has a damaged IDX header")
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + math.prod(shape)
    if len(data) != expected:
        raise DataError(f"{path} holds {len(data)} bytes but its header promises {expected}: it is truncated "
                        "or damaged; fetch it again")
    return torch.frombuffer(bytearray(data[header:]), dtype=getattr(torch, _IDX_TYPES[data[2]])).view(shape)


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike[str] | None = None, *, download: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 1, 28, 28) uint8 and labels (N,) int64 of the ``"train"`` or ``"test"`` split."""
    if split not in SPLITS:
        raise ConfigError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = locate(data_dir, download=download)
    image_stem, label_stem = SPLITS[split]
    image_file, label_file = _file(folder, image_stem), _file(folder, label_stem)
    assert image_file is not None and label_file is not None
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise DataError(f"{folder}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    if int(labels.max()) >= len(CLASSES):
        raise DataError(f"{label_file} has labels up to {int(labels.max())}; Fashion-MNIST has {len(CLASSES)} classes")
    return images.unsqueeze(1).contiguous(), labels.long()


def save_samples(
    out_dir: str | os.PathLike[str], count: int = 8, *, split: str = "test",
    data_dir: str | os.PathLike[str] | None = None,
) -> list[Path]:
    """Write the first ``count`` images of a split as PNG files named ``<index>_<class>.png``."""
    from PIL import Image

    images, labels = load_fashion_mnist(split, data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(min(count, len(images))):
        name = CLASSES[int(labels[i])].lower().replace("/", "-").replace(" ", "-")
        path = out / f"{i:04d}_{name}.png"
        Image.fromarray(images[i, 0].numpy()).save(path)
        paths.append(path)
    return paths

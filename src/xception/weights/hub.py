"""Named pretrained weights, the download cache, and downloads that verify what they fetch.

A tag (``"xception.keras_in1k"``) names one public file: its URL, its checksum and what the weights mean
(model, preprocessing, classes, source, reported accuracy). The tags are derived from the variant records
(:mod:`xception.catalog`): one per published set of weights, ``<variant>.<tag>``. :func:`fetch` returns
the file's path in the cache, downloading it first if needed. A tag on the Hugging Face Hub
(``hf-hub:…``) is fetched by the Hub's client, into its cache (:mod:`.hfhub`); for the others:

* the cache is ``$XCEPTION_CACHE`` if set, else ``$XDG_CACHE_HOME/xception`` (``~/.cache/xception``);
* the download goes to ``NAME.part`` and is renamed into place only once its checksum is verified, so the
  cache never holds a half-written or unverified file under the real name;
* after a dropped connection the next attempt resumes the ``.part`` with an HTTP Range request (or starts
  over cleanly when the server does not honour it);
* processes fetching the same file at once take turns on an exclusive lock (``NAME.lock``, released when
  its process ends, however it ends): one downloads, the others wait and then find the verified file.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..catalog import CATALOG
from ..errors import ChecksumError, ConfigError, DownloadError, StorageError
from ..fileio import file_digest
from ..locations import CACHE_ENV, cache_root
from ..preprocessing import Preprocessing
from . import hfhub
from .imagenet import imagenet_class_names

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

CHUNK = 1 << 20


@dataclass(frozen=True)
class WeightsTag:
    """One published set of weights: where it lives, how to check it, and what it means.

    ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"``; a sha256 may be a prefix (timm's and torch.hub's
    file names carry the first hex digits of the file's sha256). None for a file on the Hugging Face Hub
    whose source publishes none: the Hub's own sha256 of the file is checked instead. ``metrics`` are
    accuracies reported by the source, in percent, on the ImageNet validation set.
    """

    name: str
    model: str
    url: str
    checksum: str | None
    num_classes: int
    preprocessing: Preprocessing
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def on_hub(self) -> bool:
        """Whether the file is on the Hugging Face Hub (``hf-hub:ORG/NAME``), fetched into the Hub's cache."""
        return hfhub.is_hub_ref(self.url)

    @property
    def file_name(self) -> str:
        return Path(urllib.parse.urlsplit(self.url).path).name

    @property
    def class_names(self) -> list[str] | None:
        return imagenet_class_names() if self.num_classes == 1000 else None

    def path(self, cache: Path | None = None) -> Path | None:
        """Where the file lives in the cache (it may not be there yet); for a file on the Hub, where it is in
        the Hub's cache, or None while it is not there."""
        if self.on_hub:
            return hfhub.cached(self.url)
        return (cache or cache_dir()) / "weights" / self.file_name

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "model": self.model, "url": self.url, "checksum": self.checksum,
            "num_classes": self.num_classes, "preprocessing": self.preprocessing.to_dict(),
            "source": self.source, "metrics": dict(self.metrics),
        }


# One tag per published set of weights of each variant record.
TAGS: dict[str, WeightsTag] = {f"{record.name}.{w.tag}": WeightsTag(
    f"{record.name}.{w.tag}", record.name, w.url, w.checksum, w.num_classes, w.preprocessing, w.source,
    dict(w.metrics),
) for record in CATALOG.values() for w in record.weights}
# What ``weights="imagenet"`` means for each model name: its record's first weights.
DEFAULT_TAGS: dict[str, str] = {
    record.name: f"{record.name}.{record.default_weights.tag}" for record in CATALOG.values() if record.default_weights
}


def tag_for_url(url: str) -> WeightsTag | None:
    """The tag whose file ``url`` names (an ``hf-hub:`` reference of a known source gets its metadata)."""
    return next((tag for tag in TAGS.values() if tag.url == url), None)


def list_weights() -> list[str]:
    """The tags :func:`fetch` and ``create_model(weights=...)`` accept."""
    return list(TAGS)


def get_tag(name: str) -> WeightsTag:
    if name not in TAGS:
        raise ConfigError(f"unknown weights tag {name!r}; known tags: {', '.join(TAGS)}")
    return TAGS[name]


def cache_dir() -> Path:
    """``$XCEPTION_CACHE``, else ``$XDG_CACHE_HOME/xception``, else ``~/.cache/xception``."""
    return cache_root()


# -- checksums -------------------------------------------------------------------------------------------

def verify_checksum(path: str | os.PathLike[str], checksum: str) -> str:
    """Raise :class:`ChecksumError` unless ``path`` matches ``checksum``; return the full hex digest."""
    algorithm, _, expected = checksum.partition(":")
    expected = expected.lower()
    if algorithm not in ("md5", "sha256") or not re.fullmatch(r"[0-9a-f]{8,64}", expected):
        raise ConfigError(f"checksum must look like 'sha256:<hex>' or 'md5:<hex>', got {checksum!r}")
    actual = file_digest(path, algorithm)
    if not actual.startswith(expected):
        raise ChecksumError(f"{path} has {algorithm} {actual}, expected {expected}")
    return actual


def checksum_from_url(url: str) -> str | None:
    """A checksum the URL itself carries: a ``#sha256=<hex>`` (or ``#md5=``) fragment, or a hash prefix in
    the file name (``name-<8+ hex digits>.ext``, the torch.hub convention timm follows). A fragment that
    names a digest but does not hold one (``#sha256=xyz``, ``#sha256:…``) is a :class:`ConfigError`."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError as err:
        raise ConfigError(f"{url} is not a valid URL ({err})") from err
    if m := re.fullmatch(r"(sha256|md5)=([0-9a-f]{8,64})", parts.fragment, re.IGNORECASE):
        return f"{m[1].lower()}:{m[2].lower()}"
    if re.match(r"(sha|md)\d*(\W|$)", parts.fragment, re.IGNORECASE):
        raise ConfigError(f"malformed checksum '#{parts.fragment}' in {url}: write '#sha256=<hex digest>' (or "
                          "'#md5=<hex digest>'), 8 to 64 hexadecimal digits")
    if m := re.search(r"-([0-9a-f]{8,64})\.", Path(parts.path).name):
        return f"sha256:{m[1]}"
    return None


# -- downloads -------------------------------------------------------------------------------------------

class _Interrupted(Exception):
    """The transfer stopped part-way (dropped connection, short read, timeout): worth resuming."""


class _Unreachable(Exception):
    """No route, connection refused, unknown host: retrying will not help."""


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    checksum: str,
    progress: bool = True,
    retries: int = 3,
    retry_pause: float = 1.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``dest``: resumable, verified, atomic.

    Bytes go to ``dest.part``; an interrupted transfer is resumed (HTTP Range) up to ``retries`` times, and
    left in place for a later call to resume if it still fails. The finished file is renamed to ``dest``
    only if it matches ``checksum``; on a mismatch the download is deleted and :class:`ChecksumError` raised.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create {dest.parent} for the download of {url}: {err.strerror or err}; set "
                           f"{CACHE_ENV} to a folder you can write to") from err
    with _exclusive(dest.with_name(dest.name + ".lock"), dest, progress=progress):
        if dest.is_file():
            try:  # another process may have finished it while this one waited for the lock
                verify_checksum(dest, checksum)
                return dest
            except ChecksumError:
                pass  # an old or damaged file: fetch it again, and replace it only once verified
        _download_locked(url, dest, part, checksum=checksum, progress=progress, retries=retries,
                         retry_pause=retry_pause, timeout=timeout)
    return dest


def _download_locked(
    url: str, dest: Path, part: Path, *, checksum: str, progress: bool, retries: int, retry_pause: float,
    timeout: float,
) -> None:
    retries = max(1, retries)
    for attempt in range(1, retries + 1):
        try:
            _transfer(url, part, progress=progress, timeout=timeout)
            break
        except _Unreachable as err:
            raise DownloadError(_by_hand(url, dest, str(err))) from err
        except _Interrupted as err:
            if attempt == retries:
                kept = f" ({part.stat().st_size} bytes kept in {part}; the next try resumes)" if part.exists() else ""
                raise DownloadError(_by_hand(url, dest, f"{err}{kept}")) from err
            time.sleep(retry_pause * attempt)
    try:
        verify_checksum(part, checksum)
    except ChecksumError as err:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"the download of {url} is not the published file: {err}. It was deleted; if this repeats, the "
            "file on the server (or a proxy in between) has changed"
        ) from err
    os.replace(part, dest)


@contextlib.contextmanager
def _exclusive(lock: Path, dest: Path, *, progress: bool) -> Iterator[None]:
    """Hold an exclusive lock on the file ``lock``: one process at a time fetches ``dest``.

    ``flock`` locks belong to the open file, so the kernel releases them when the process ends, even by
    SIGKILL: a crashed download never blocks the next. The holder deletes the lock file before releasing
    it; a waiter that then wakes up on the deleted file starts over on a new one.
    """
    if fcntl is None:  # no flock (Windows): downloads are still verified and renamed atomically
        yield
        return
    waited = False
    while True:
        try:
            handle = open(lock, "a")  # noqa: SIM115 (closed below, after the lock is released)
        except OSError as err:
            raise StorageError(f"cannot create {lock}: {err.strerror or err}; set {CACHE_ENV} to a folder you "
                               "can write to") from err
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress and not waited:
                print(f"waiting for another process downloading {dest.name}", file=sys.stderr)
            waited = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:  # a file system without locks (some network mounts): as without flock
            handle.close()
            yield
            return
        if _same_file(handle, lock):
            break
        handle.close()  # the holder deleted this lock file on its way out: lock the current one
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)
        handle.close()  # releases the lock


def _same_file(handle: Any, path: Path) -> bool:
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _by_hand(url: str, dest: Path, reason: str) -> str:
    return (
        f"could not download {url}: {reason}. Without network access, fetch that URL on another machine "
        f"and copy the file to {dest} (it is checked against its published checksum there), or pass the "
        "file's local path instead"
    )


def _transfer(url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """One HTTP request: resume ``part`` if it exists and the server honours Range, else start over."""
    start = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "xception-weights"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and start:
            return  # nothing left to fetch: the .part is complete (the checksum decides if it is right)
        raise DownloadError(f"could not download {url}: the server answered {err.code} {err.reason}") from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError | socket.timeout):
            raise _Interrupted(f"timed out after {timeout:.0f} s") from err
        raise _Unreachable(str(err.reason)) from err
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Interrupted(str(err) or type(err).__name__) from err
    except ValueError as err:  # a URL urllib cannot parse (bad port, bad IPv6 address)
        raise ConfigError(f"{url} is not a valid URL ({err})") from err

    with response:
        content_range = response.headers.get("Content-Range", "")
        resumed = bool(start) and response.status == 206 and content_range.startswith(f"bytes {start}-")
        if response.status == 206 and not resumed:
            part.unlink(missing_ok=True)
            raise _Interrupted(f"the server sent bytes {content_range or '?'} instead of {start}-; starting over")
        if not resumed:
            start = 0  # the server ignored the Range header and sends the whole file: start over
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        received = start
        try:
            f = open(part, "ab" if resumed else "wb")  # noqa: SIM115 (closed by the with below)
        except OSError as err:
            raise StorageError(f"cannot write {part}: {err.strerror or err}") from err
        with f, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress,
        ) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as err:  # reset, timeout, TLS error mid-body
                    raise _Interrupted(f"connection lost after {received} bytes ({err or type(err).__name__})") from err
                if not chunk:
                    break
                try:
                    f.write(chunk)
                except OSError as err:  # no space left, quota
                    raise StorageError(f"cannot write {part}: {err.strerror or err}") from err
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body without complaint when the peer closes early: count the bytes.
    if total is not None and received < total:
        raise _Interrupted(f"connection closed after {received} of {total} bytes")


def fetch(weights: str | WeightsTag, *, progress: bool = True, cache: Path | None = None) -> Path:
    """The local path of a tag's or a URL's file, downloading and verifying it on first use.

    A URL must carry its checksum (``#sha256=<hex>`` or a hash prefix in the file name): network code
    never trusts what it fetched without one. A file on the Hugging Face Hub (a tag of one, or
    ``hf-hub:ORG/NAME[/FILE][@REVISION]``) is checked against the sha256 the Hub states (:mod:`.hfhub`).
    """
    tag = weights if isinstance(weights, WeightsTag) else TAGS.get(weights)
    url = tag.url if tag is not None else str(weights)
    if hfhub.is_hub_ref(url):
        return hfhub.fetch(url, progress=progress)
    cache = cache or cache_dir()
    if tag is not None:
        if tag.checksum is None:
            raise ConfigError(f"tag {tag.name} names {tag.url} without a checksum; only files on the Hugging Face "
                              "Hub may (the Hub states their sha256)")
        checksum, dest = tag.checksum, cache / "weights" / tag.file_name
    else:
        found = checksum_from_url(url)
        if found is None:
            raise ConfigError(
                f"no checksum known for {url}: append '#sha256=<hex digest>' to the URL, or download the file "
                "yourself and pass its path"
            )
        checksum = found
        url = urllib.parse.urldefrag(url).url
        # Different servers may use the same file name: key the cache entry on the URL too.
        key = hashlib.sha256(url.encode()).hexdigest()[:10]
        dest = cache / "weights" / f"{key}-{Path(urllib.parse.urlsplit(url).path).name or 'weights'}"
    if dest.exists():
        try:
            verify_checksum(dest, checksum)
        except ChecksumError as err:
            raise ChecksumError(f"the cached file for {url} is not the published one ({err}); delete it to "
                                "download it again") from err
        return dest
    return download(url, dest, checksum=checksum, progress=progress)

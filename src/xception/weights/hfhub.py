"""Weights from the Hugging Face Hub: ``hf-hub:ORG/NAME[/FILE][@REVISION]``, through ``huggingface_hub``.

    >>> create_model(weights="hf-hub:timm/xception65.ra3_in1k")

The Hub's own client fetches the file, so its cache (``HF_HOME``, ``HF_HUB_CACHE``), its token
(``HF_TOKEN`` or a stored login, for private and gated repositories) and its offline mode
(``HF_HUB_OFFLINE=1``: the cache alone, no request) apply as in any library built on it. ``HF_ENDPOINT``
is read at each call, not only when the client is first imported, so that a mirror set later counts.
Without a FILE, ``model.safetensors`` is fetched, else ``pytorch_model.bin`` (timm's older repositories).
The file then goes through the same content-based format detection as a local one.

What the Hub gives is verified before it is used. The client files each download in its cache under the
file's ETag: for a file in Git LFS (weights) the sha256 of its content, for a small file in Git its Git
blob id; it checks only the size. Here the content is hashed against that name, and a file that does not
match is removed from the cache and refused.

Needs the ``hub`` extra: ``pip install 'xception[hub]'``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..catalog import HF_HUB
from ..errors import ChecksumError, ConfigError, DownloadError
from ..fileio import file_digest

DEFAULT_FILES = ("model.safetensors", "pytorch_model.bin")
_REPO = re.compile(r"[\w.-]+/[\w.-]+")
_SHA256, _GIT_SHA1 = re.compile(r"[0-9a-f]{64}"), re.compile(r"[0-9a-f]{40}")
_TRANSPORTS = ("requests", "urllib3", "httpx", "httpx2", "httpcore")


@dataclass(frozen=True)
class HubRef:
    """A file in a Hub repository: ``hf-hub:ORG/NAME[/FILE][@REVISION]`` (no FILE: the default weights file)."""

    repo_id: str
    filename: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, text: str) -> HubRef:
        body, _, revision = text.removeprefix(HF_HUB).partition("@")
        org, _, rest = body.partition("/")
        name, _, filename = rest.partition("/")
        repo_id = f"{org}/{name}"
        if not text.startswith(HF_HUB) or not _REPO.fullmatch(repo_id) or (revision == "" and "@" in text):
            raise ConfigError(f"{text!r} is not a Hugging Face Hub reference: write hf-hub:ORG/NAME, optionally "
                              "with /FILE and @REVISION (e.g. hf-hub:timm/xception65.ra3_in1k)")
        return cls(repo_id, filename or None, revision or None)

    def __str__(self) -> str:
        path = f"{self.repo_id}/{self.filename}" if self.filename else self.repo_id
        return f"{HF_HUB}{path}" + (f"@{self.revision}" if self.revision else "")


def is_hub_ref(text: str) -> bool:
    return text.startswith(HF_HUB)


def client() -> ModuleType:
    """The ``huggingface_hub`` package; a one-line :class:`ConfigError` naming it where it is missing."""
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as err:
        raise ConfigError("hf-hub: weights need the huggingface_hub package: pip install 'xception[hub]' "
                          "(or pip install huggingface_hub)") from err
    return huggingface_hub


def fetch(ref: str | HubRef, *, progress: bool = True) -> Path:
    """The local path of a Hub file, from the Hub's cache or downloaded into it; verified either way."""
    hub = client()
    ref = ref if isinstance(ref, HubRef) else HubRef.parse(ref)
    names = (ref.filename,) if ref.filename else DEFAULT_FILES
    missing: list[Exception] = []
    for name in names:
        try:
            path = _download(hub, ref, name, progress)
        except hub.errors.EntryNotFoundError as err:  # not on the Hub, or (offline) not in the cache
            missing.append(err)
            continue
        verify(path, str(ref))
        return path
    if any(isinstance(err, hub.errors.LocalEntryNotFoundError) for err in missing):
        raise DownloadError(_not_cached(hub, ref)) from missing[-1]
    raise DownloadError(f"{ref}: the repository has no {' and no '.join(names)}; name the file, e.g. "
                        f"{HF_HUB}{ref.repo_id}/FILE") from missing[-1]


def _download(hub: ModuleType, ref: HubRef, filename: str, progress: bool) -> Path:
    errors = hub.errors
    try:
        with _progress_bars(hub, progress):
            return Path(hub.hf_hub_download(ref.repo_id, filename, revision=ref.revision,
                                            endpoint=os.environ.get("HF_ENDPOINT") or None))
    except errors.EntryNotFoundError:
        raise
    except errors.RevisionNotFoundError as err:
        raise DownloadError(f"{ref}: the repository has no revision {ref.revision!r}") from err
    except errors.RepositoryNotFoundError as err:  # also gated and private repositories without access
        raise DownloadError(f"{ref}: no such repository on {_endpoint(hub)}, or it is private or gated and the "
                            "token (HF_TOKEN, or hf auth login) does not give access") from err
    except errors.HfHubHTTPError as err:
        raise DownloadError(f"{ref}: the Hub answered {_first_line(err)}") from err
    except OSError as err:  # no space left, a cache folder that cannot be written
        raise DownloadError(f"{ref}: could not store the file in the Hugging Face cache: {err}") from err
    except Exception as err:
        # A transfer cut off after the client's own retries. Its HTTP library changes between its versions
        # (requests, httpx, httpx2), so its errors are told by where they come from.
        if type(err).__module__.split(".")[0] not in _TRANSPORTS:
            raise
        raise DownloadError(f"{ref}: the transfer failed ({_first_line(err)}); run it again") from err


def _not_cached(hub: ModuleType, ref: HubRef) -> str:
    where = hub.constants.HF_HUB_CACHE
    if hub.constants.HF_HUB_OFFLINE:
        return (f"{ref} is not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE is set: fetch it once while "
                "online, or unset HF_HUB_OFFLINE")
    return (f"could not reach {_endpoint(hub)} for {ref}, and it is not in the Hugging Face cache ({where}): "
            "check the connection (or HF_ENDPOINT), or fetch it once on a machine that can and copy the cache")


def _endpoint(hub: ModuleType) -> str:
    return os.environ.get("HF_ENDPOINT") or hub.constants.ENDPOINT


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


@contextlib.contextmanager
def _progress_bars(hub: ModuleType, show: bool) -> Iterator[None]:
    """The client's progress bars as it shows them, or none for this call (``progress=False``)."""
    utils = hub.utils
    if show or utils.are_progress_bars_disabled():
        yield
        return
    utils.disable_progress_bars()
    try:
        yield
    finally:
        utils.enable_progress_bars()


def stated_digest(path: Path) -> tuple[str, str] | None:
    """The digest the Hub stated for a cached file (``("sha256", hex)`` or ``("git-sha1", hex)``), read from
    the name the client filed its content under; None where the cache holds copies instead of links."""
    blob = Path(os.path.realpath(path))
    if blob.parent.name != "blobs":
        return None
    if _SHA256.fullmatch(blob.name):
        return "sha256", blob.name
    if _GIT_SHA1.fullmatch(blob.name):
        return "git-sha1", blob.name
    return None


def verify(path: Path, what: str) -> None:
    """Raise :class:`~xception.errors.ChecksumError` (and remove the file from the cache) unless ``path``
    hashes to the digest the Hub stated for it."""
    stated = stated_digest(path)
    if stated is None:
        return
    kind, expected = stated
    actual = file_digest(path, "sha256") if kind == "sha256" else _git_blob_id(path)
    if actual != expected:
        blob = Path(os.path.realpath(path))
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise ChecksumError(f"the file the Hub gave for {what} has {kind} {actual}, but the Hub states "
                               f"{expected}; it was removed from the cache: try again, and if this repeats the "
                               "file on the server (or a proxy in between) is damaged")


def _git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def cached(ref: str | HubRef) -> Path | None:
    """The file in the Hugging Face cache, if it is there (None too where ``huggingface_hub`` is missing)."""
    try:
        hub = client()
    except ConfigError:
        return None
    ref = ref if isinstance(ref, HubRef) else HubRef.parse(ref)
    for name in (ref.filename,) if ref.filename else DEFAULT_FILES:
        found = hub.try_to_load_from_cache(ref.repo_id, name, revision=ref.revision)
        if isinstance(found, str):
            return Path(found)
    return None

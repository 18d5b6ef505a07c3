"""Small file helpers shared by every stage that writes artifacts: atomic writes that say why they failed,
checksums, and a lock that gives a folder to one process at a time."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
import threading
import weakref
from collections.abc import Callable
from pathlib import Path

from .errors import BusyError, IsAFolderError, NotAFolderError, StorageError, XceptionError

try:
    import fcntl
except ImportError:  # Windows: folders are not locked there
    fcntl = None  # type: ignore[assignment]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object], *,
                 backup: str | os.PathLike[str] | None = None) -> Path:
    """Call ``write(tmp_path)`` then rename into place: readers never see a half-written file.

    The file is flushed to the disk before the rename, and gets the mode a plain ``open()`` would give it
    (``0o666`` less the umask). ``backup``: move the file being replaced there first (kept until the next
    write). A path that names a folder, or lies below a file, and writing that fails (no space, no
    permission) raise a :class:`~xception.errors.StorageError` naming the path; the temporary file is
    removed on every failure, and the file being replaced stays as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise IsAFolderError(f"cannot write {path}: it is an existing folder; name a file (inside it, or elsewhere)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise NotAFolderError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, created = _new_temp(path)
    except OSError as err:
        raise storage_error(err, path) or StorageError(f"cannot write {path}: {err}") from err
    try:
        write(tmp)
        _keep_mode(tmp, created)
        _sync(tmp)
        if backup is not None and path.exists():
            os.replace(path, backup)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the file is in place; making the rename durable is best effort
            _sync(path.parent)
    except XceptionError:
        tmp.unlink(missing_ok=True)
        raise
    except BaseException as err:
        failure = storage_error(err, path)
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from err
        raise
    return path


# Why writing failed, by errno, as the message says it.
_STORAGE_ERRNOS = {
    errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large",
}
# Libraries that write in native code report a full disk in their own words (safetensors: "(os error 28)").
_NO_SPACE_WORDS = ("no space left on device", "(os error 28)", "disk quota exceeded", "(os error 122)")


def storage_error(err: BaseException, path: str | os.PathLike[str]) -> StorageError | None:
    """``err``, raised while writing ``path``, as a :class:`StorageError` saying why (``"no space left on
    device writing PATH"``), or None when it is not about the storage.

    The cause is looked for along the exception's chain: ``torch.save`` into a Python file, for one, raises
    a ``RuntimeError`` whose context is the ``OSError`` of the failed write. Writers that lose the errno
    (``torch.save`` to a path: ``basic_ios::clear``) are recognised by the disk being full when they fail.
    """
    if isinstance(err, StorageError):
        return err
    seen: BaseException | None = err
    for _ in range(16):  # a chain is short; a cycle would be a bug elsewhere, but must not hang us
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _STORAGE_ERRNOS:
            return StorageError(f"{_STORAGE_ERRNOS[seen.errno]} writing {path}")
        text = str(seen).lower()
        if any(words in text for words in _NO_SPACE_WORDS):
            return StorageError(f"no space left on device writing {path}")
        seen = seen.__cause__ or seen.__context__
    if isinstance(err, OSError):
        return StorageError(f"cannot write {path}: {err.strerror or err}")
    if isinstance(err, Exception) and _disk_full(Path(path).parent):
        return StorageError(f"no space left on device writing {path}")
    return None


def _disk_full(folder: Path) -> bool:
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < _FULL_BELOW


_FULL_BELOW = 64 * 1024  # a file system with less room than this is full, for a writer that lost the errno


def _new_temp(path: Path) -> tuple[Path, os.stat_result]:
    """A new, empty hidden file beside ``path``, created as ``open()`` would create it (``0o666`` less the umask,
    or as the folder's default ACL says; ``tempfile.mkstemp`` would give ``0o600`` whatever the umask), and
    its status."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, os.fstat(fd)
        finally:
            os.close(fd)
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _keep_mode(tmp: Path, created: os.stat_result) -> None:
    """Give ``tmp`` the mode it was created with when the writer replaced it by a file of its own (safetensors
    writes a ``0o600`` file and renames it over the path it is given)."""
    now = os.stat(tmp)
    if now.st_ino != created.st_ino and stat.S_IMODE(now.st_mode) != stat.S_IMODE(created.st_mode):
        os.chmod(tmp, stat.S_IMODE(created.st_mode))


def _sync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder after a rename in it) to the disk: after a power cut the renamed
    file holds what was written, never nothing."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EROFS):  # file systems that cannot sync (some FUSE, /proc)
            raise
    finally:
        os.close(fd)


_TEMP_NAME = re.compile(r"^\..+\.[0-9A-Za-z_]{8}\.tmp$")  # atomic_write's temporary files (and mkstemp's before)


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary files a killed writer left in ``folder``; the names removed. Call it only while
    holding the folder (:class:`FolderLock`): another writer's temporary files are not stale."""
    removed = []
    for entry in os.scandir(folder):
        if _TEMP_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return sorted(removed)


class FolderLock:
    """One process's claim on a folder: an exclusive ``flock`` on ``FOLDER/.lock``, held until
    :meth:`release` (or until the object is collected). The kernel drops the lock when the process ends,
    however it ends, so a killed process never leaves a stale lock behind.

    Another process claiming the folder gets a :class:`~xception.errors.BusyError` naming the holder. Within
    one process the claim is shared: claiming a folder this process already holds succeeds (the lock goes
    when the last claim is released). Children forked while the lock is held (data-loading workers) do not
    keep it: a worker that outlives a killed parent for a moment must not keep the folder busy. (Where
    there is no ``flock``, on Windows, the folder is claimed by no lock.)

        >>> with FolderLock("runs/a"):
        ...     ...                                   # only this process writes into runs/a
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike[str], *, user: str = "training",
                 advice: str = "wait for it to end, or use another folder") -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._key = str(self.folder.resolve())
        except OSError as err:
            raise storage_error(err, self.folder / self.NAME) or StorageError(f"cannot use {self.folder}") from err
        with _HELD_GUARD:
            held = _HELD.get(self._key)
            if held is None:
                held = _HELD[self._key] = [self._acquire(user, advice), 0]
            held[1] += 1
        self._finalizer = weakref.finalize(self, _drop, self._key)

    def _acquire(self, user: str, advice: str) -> int:
        path = self.folder / self.NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise storage_error(err, path) or StorageError(f"cannot write {path}: {err}") from err
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.lseek(fd, 0, os.SEEK_SET)
            holder = os.read(fd, 200).decode(errors="replace").split()
            os.close(fd)
            who = f"process {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
            raise BusyError(f"{self.folder} is in use by another {user} ({who}); {advice}") from None
        except OSError as err:  # a file system without locks: say so rather than run unprotected silently
            os.close(fd)
            raise StorageError(f"cannot lock {path} ({err.strerror}); use a folder on a local file system") from err
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        return fd

    def release(self) -> None:
        """Give the claim up (once; later calls do nothing)."""
        self._finalizer()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[str, list[int]] = {}  # resolved folder → [lock file descriptor, claims in this process]
_HELD_GUARD = threading.Lock()


def _drop(key: str) -> None:
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del _HELD[key]
            os.close(held[0])  # closing the last descriptor releases the flock


def _forget_in_child() -> None:
    # A forked child shares the parent's lock (flock belongs to the open file, not the process): close the
    # child's descriptors so that only the claiming process keeps the folder.
    for fd, _ in _HELD.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_in_child)


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """The hex digest of a file, read in chunks (MD5 only names published files here: it guards nothing)."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    return file_digest(path, "sha256")

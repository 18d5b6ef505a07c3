"""Keeping freed memory for reuse on CPU, as ONNX Runtime's arena does.

glibc hands every allocation above its mmap threshold (a few MB: every activation of a 299-px batch)
back to the kernel when it is freed, so the next forward pass touches fresh pages again: ~90,000 page
faults (~350 MB zeroed by the kernel) per batch of 8 on Xception, a quarter of the time of a forward pass
on a 2-core machine (benchmarks/NOTES.md). Telling glibc to serve large blocks from its heap and never
trim it makes a second forward pass reuse the first one's pages.

This is process-wide and only grows memory as far as the largest working set seen so far: the price a
memory arena always has. Nothing changes on systems without glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()  # only glibc has it (musl does not)
        return libc
    except (OSError, AttributeError):
        return None


_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (process-wide); True if it took effect (or already had)."""
    global _kept
    libc = _libc()
    if libc is None:
        return False
    if not _kept:
        _kept = bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _kept


def freed_memory_kept() -> bool:
    """Whether :func:`keep_freed_memory` is in effect in this process."""
    return _kept


def release_freed_memory() -> None:
    """Give free heap pages back to the kernel now (``malloc_trim``); used before measuring memory."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)

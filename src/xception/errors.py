"""The errors a user can fix, as one family.

Every error the library raises because of what it was given (an option, a file, a folder, a device)
derives from :class:`XceptionError`; the command line prints those as one line and anything else as a
traceback, since anything else is a bug. Each class also derives from the built-in type that code
catching errors generically expects (``ValueError``, ``FileNotFoundError``, ``OSError``). A message that
suggests a fix spells it as the caller writes it (:func:`hint`): in Python or on the command line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar


class XceptionError(Exception):
    """Base of every error caused by the library's input rather than by the library itself."""


class ConfigError(XceptionError, ValueError):
    """An option, argument, recipe setting or model option that is not valid."""


class DataError(XceptionError, ValueError):
    """Data that cannot be trained or evaluated on: no images, one class, classes that do not match."""


class WeightsError(XceptionError, ValueError):
    """A weights file that cannot be read, or whose tensors do not fit the model."""


class DeviceError(XceptionError, ValueError):
    """A device that was asked for but is not available (CUDA on a machine without it)."""


class MissingPathError(XceptionError, FileNotFoundError):
    """A file or folder that does not exist."""


class StorageError(XceptionError, OSError):
    """Writing failed for a reason outside the library: no space left on the device, no permission."""


class DownloadError(XceptionError, OSError):
    """A download that failed or whose checksum does not match."""


class ChecksumError(DownloadError, ValueError):
    """A file's digest differs from the published one (or from the one its server states)."""


class BusyError(XceptionError, RuntimeError):
    """A resource another process holds: a run folder that another training writes into."""


class NotAFolderError(XceptionError, NotADirectoryError):
    """A path that must be a folder (a data folder, a run folder) names a file."""


class IsAFolderError(XceptionError, IsADirectoryError):
    """A path that must be a file (weights, an output file) names a folder."""


# -- hints in the caller's own syntax ----------------------------------------------------------------------
# A fix is spelled where the user is: ``stem="small"`` in Python, ``--set model.stem=small`` on the command
# line. The command line sets this flag for the duration of a command (see :func:`command_line`).
_COMMAND_LINE: ContextVar[bool] = ContextVar("xception_command_line", default=False)


@contextmanager
def command_line() -> Iterator[None]:
    """Within this block, error hints are spelled as the ``xception`` command takes them."""
    token = _COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _COMMAND_LINE.reset(token)


def hint(python: str, command_line: str) -> str:
    """``python`` when called from Python, ``command_line`` when called from the ``xception`` command."""
    return command_line if _COMMAND_LINE.get() else python


def model_option(key: str, value: object) -> str:
    """A model option as the caller writes it: ``stem="small"`` or ``--set model.stem=small``."""
    python = f'{key}="{value}"' if isinstance(value, str) else f"{key}={value!r}"
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return hint(python, f"--set model.{key}={text}")

"""The errors a user can fix, as one family.

Every error the library raises because of what it was given (an option, a file, a folder, a device)
derives from :class:`XceptionError`; the command line prints those as one line and anything else as a
traceback, since anything else is a bug. Each class also derives from the built-in type that code
catching errors generically expects (``ValueError``, ``FileNotFoundError``, ``OSError``).
"""

from __future__ import annotations


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


class BusyError(XceptionError, RuntimeError):
    """A resource another process holds: a run folder that another training writes into."""

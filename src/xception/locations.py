"""Where the library keeps and looks for files outside a run folder, each set by one environment variable.

- ``XCEPTION_CACHE``: downloads (weights, datasets); else ``$XDG_CACHE_HOME/xception``, else
  ``~/.cache/xception``.
- ``XCEPTION_DATA_PATH``: the folders searched for an installed dataset, separated by ``os.pathsep``, in
  place of the defaults (the system's dataset folder, then the cache). Set but empty, no folder is searched:
  only a folder passed explicitly, or a download, provides a dataset — how the test suite makes sure that
  nothing it runs depends on what happens to be installed on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "XCEPTION_CACHE"
DATA_PATH_ENV = "XCEPTION_DATA_PATH"
SYSTEM_DATASETS = Path("/usr/share/datasets")  # where Debian's dataset-* packages install


def cache_root() -> Path:
    """``$XCEPTION_CACHE``, else ``$XDG_CACHE_HOME/xception``, else ``~/.cache/xception``."""
    if env := os.environ.get(CACHE_ENV):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "xception"


def dataset_folders(name: str) -> list[Path]:
    """The folders where an installed copy of dataset ``name`` is looked for, in order."""
    env = os.environ.get(DATA_PATH_ENV)
    if env is not None:
        return [Path(p).expanduser() / name for p in env.split(os.pathsep) if p]
    return [SYSTEM_DATASETS / name, cache_root() / name]


def dataset_cache(name: str) -> Path:
    """Where a download of dataset ``name`` goes when no folder is given."""
    return cache_root() / name

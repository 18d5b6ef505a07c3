"""A training run's folder: which it is, whether a run in it has finished, and the claim on it.

One training at a time writes into a run folder: the claim is a :class:`~xception.fileio.FolderLock`
(``flock`` on ``RUN/.lock``), which the kernel drops when the process ends, however it ends. A fresh run
is refused where a run is; a resume claims the folder before anything in it is read.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import ConfigError, NotAFolderError, hint
from ..fileio import FolderLock
from ..weights.checkpoint import EXPORT
from . import artifacts
from .checkpoint import has_checkpoint
from .recipe import Recipe


def run_dir_for(recipe: Recipe, out: str | os.PathLike[str] | None, resume: str | os.PathLike[str] | None) -> Path:
    """The folder of a resumed run (``resume`` itself, or its checkpoint's), else ``out``, else a new
    ``runs/<recipe>-<date>-<time>``; a file in its place is refused."""
    if resume is not None:
        path = Path(resume)
        return path if path.is_dir() else path.parent
    run_dir = Path(out) if out is not None else Path("runs") / f"{recipe.name}-{datetime.now():%Y%m%d-%H%M%S}"
    if run_dir.exists() and not run_dir.is_dir():
        raise NotAFolderError(f"{run_dir} is an existing file, not a run folder; choose another "
                              + hint("out=", "--out"))
    return run_dir


def is_finished(run_dir: Path, checkpoint: dict[str, Any], recipe: Recipe) -> bool:
    """Whether the run at ``checkpoint`` has nothing left to do: its epochs done and its end written (a run
    stopped while writing its model or summary is finished by its resume)."""
    done = checkpoint["epoch"] >= recipe.epochs and checkpoint["position"] == 0
    return done and (run_dir / EXPORT).is_file() and (run_dir / artifacts.SUMMARY).is_file()


def check_fresh(run_dir: Path) -> None:
    """Refuse to start a new run in a folder that holds one."""
    if has_checkpoint(run_dir):
        raise ConfigError(f"{run_dir} already holds a training run; continue it with "
                          + hint(f"resume={str(run_dir)!r} or choose another out=",
                                 f"--resume {run_dir} or choose another --out"))


def choose_folder(recipe: Recipe, out: str | os.PathLike[str] | None,
                  resume: str | os.PathLike[str] | None) -> tuple[Path, FolderLock | None]:
    """The run folder, claimed when it exists (None: it is new, and claimed once the run is built)."""
    run_dir = run_dir_for(recipe, out, resume)
    return run_dir, claim_folder(run_dir, fresh=resume is None) if run_dir.is_dir() else None


def claim_folder(run_dir: Path, *, fresh: bool) -> FolderLock:
    """This process's claim on ``run_dir`` (created if need be); a fresh run is refused where a run is."""
    advice = "wait for it to end" if not fresh else "wait for it to end, or " + hint("choose another out=",
                                                                                    "choose another --out")
    lock = FolderLock(run_dir, user="training", advice=advice)
    if fresh:
        try:
            check_fresh(run_dir)
        except BaseException:
            lock.release()
            raise
    return lock


def claim_for_resume(path: str | os.PathLike[str]) -> FolderLock | None:
    """This process's claim on the run folder ``path`` continues (``path`` itself, or a checkpoint's folder),
    taken before anything in it is read: another training holding it is refused at once, not after its
    checkpoint has been verified. None when ``path`` does not exist (reading it then says so)."""
    path = Path(path)
    if not path.exists():
        return None
    return claim_folder(path if path.is_dir() else path.parent, fresh=False)

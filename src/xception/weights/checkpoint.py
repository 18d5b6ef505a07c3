"""Training checkpoints and run folders read as weights, and the facts of their layout that reading needs.

A run folder holds ``model.safetensors`` (the best model so far, in the library's own format), ``best.pt``,
``last.pt`` and ``last.prev.pt`` (training checkpoints: ``torch.save`` zip archives of tensors and plain
containers). A checkpoint is weights too: the ones the run evaluates and exports (the EMA's when it
averages), with the config, class names and preprocessing it records. Training writes these files
(:mod:`xception.train.checkpoint`) with the names and checks defined here, so this layer reads them without
knowing anything of training.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import IsAFolderError, WeightsError
from ..models import XceptionConfig
from ..preprocessing import Preprocessing
from .mapping import MappedWeights

CHECKPOINT_VERSION = 1
# last.pt's predecessor stays as last.prev.pt: a crash while last.pt is replaced never leaves a run without a
# way to continue.
LAST, PREVIOUS, BEST = "last.pt", "last.prev.pt", "best.pt"
EXPORT = "model.safetensors"  # the run's best model so far, in the library's own weights format


class Unreadable(Exception):
    """Why a checkpoint file cannot be used, in a few words ("missing", "empty", "damaged (…)")."""


def check_records(path: Path) -> None:
    """Every record of the checkpoint's zip archive as its writer meant it: each record's CRC-32, computed
    as it was written, must match the bytes read back. ``torch.load`` checks none (a flipped bit in a tensor
    loads silently), and this costs a fraction of a load."""
    if not path.is_file():
        raise Unreadable("missing")
    if path.stat().st_size == 0:
        raise Unreadable("empty")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as err:  # zipfile raises several types for cut or foreign files
        raise Unreadable(damaged(err)) from None
    if bad is not None:
        raise Unreadable(f"damaged (its record {bad} fails its checksum)")


def damaged(err: Exception) -> str:
    reason = (str(err).strip().splitlines() or [""])[0][:160]
    return f"damaged ({type(err).__name__}: {reason})" if reason else f"damaged ({type(err).__name__})"


def evaluation_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights a run evaluates and exports at ``checkpoint``: the EMA's when it averages, else the model's."""
    ema = checkpoint.get("ema")
    if ema is None:
        return dict(checkpoint["model"])
    return {k.removeprefix("module."): v for k, v in ema.items() if k != "updates"}


def export_metrics(best: dict[str, Any] | None, averaged: bool, dataset: str) -> dict[str, Any]:
    """What an exported model records of its training: the data, the best epoch and its figures."""
    metrics: dict[str, Any] = {"dataset": dataset, "epoch": best["epoch"] if best else None, "ema": averaged}
    if best is not None:
        metrics.update({k: best[k] for k in ("val_top1", "val_top5", "val_loss", "train_loss") if k in best})
    return metrics


def as_weights(checkpoint: dict[str, Any], path: str | os.PathLike[str]) -> MappedWeights:
    """A checkpoint dict (``torch.load(weights_only=True)`` of ``path``) as weights: its evaluation weights
    with the model name, config, class names and preprocessing it records. The file is checked whole first
    (every record against its checksum, as ``--resume`` does); the best epoch's figures come along when the
    checkpoint holds that epoch's model."""
    version = checkpoint.get("version")
    if version != CHECKPOINT_VERSION:
        raise WeightsError(f"{path} is a training checkpoint of version {version!r}; this library reads version "
                           f"{CHECKPOINT_VERSION}: load its run's {EXPORT} instead")
    try:
        check_records(Path(path))
    except Unreadable as err:
        raise WeightsError(f"{path} is a training checkpoint but {err}; load another checkpoint of its run "
                           f"({PREVIOUS}, {BEST}) or its {EXPORT}") from None
    try:
        best, averaged = checkpoint.get("best"), checkpoint.get("ema") is not None
        dataset = checkpoint["run"].get("data") or "fashion-mnist"
        # best.pt, and a last.pt saved at the same epoch's end, hold the best epoch's model: its figures apply.
        if best is not None and best.get("epoch") == checkpoint["epoch"] and checkpoint["position"] == 0:
            metrics = export_metrics(best, averaged, dataset)
        else:
            metrics = {"dataset": dataset, "epoch": checkpoint["epoch"], "step": checkpoint["step"], "ema": averaged}
        return MappedWeights(
            "xception-checkpoint", checkpoint["recipe"]["model"], evaluation_state(checkpoint),
            config=XceptionConfig.from_dict(checkpoint["model_config"]),
            preprocessing=Preprocessing.from_dict(checkpoint["preprocessing"]),
            class_names=list(checkpoint["class_names"]), metrics=metrics, source=f"trained: {path}", sha256="",
        )
    except (KeyError, TypeError, AttributeError) as err:  # a file written by hand, or by other code
        raise WeightsError(f"{path} is a training checkpoint with a missing or malformed field ({err!r}); load "
                           f"its run's {EXPORT} instead") from err


def run_folder_weights(folder: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """The weights file a run folder offers: its model.safetensors, or, when the run wrote none, its best
    intact checkpoint (best.pt, else last.pt, else last.prev.pt) with a line saying which and why."""
    folder = Path(folder)
    if (folder / EXPORT).is_file():
        return folder / EXPORT, None
    problems: dict[str, str] = {}
    for name in (BEST, LAST, PREVIOUS):
        try:
            check_records(folder / name)
        except Unreadable as err:
            problems[name] = str(err)
            continue
        what = "its best model so far" if name == BEST else "the model as last saved"
        why = "".join(f"; {other} is {problem}" for other, problem in problems.items())
        return folder / name, f"{folder} has no {EXPORT}: loading {folder / name}, {what}{why}"
    if all(problem == "missing" for problem in problems.values()):
        raise IsAFolderError(f"weights {str(folder)!r} is a directory with no {EXPORT} or training checkpoint in it; "
                             "pass a weights file")
    said = "; ".join(f"{name} is {problem}" for name, problem in problems.items())
    raise WeightsError(f"{folder} has no {EXPORT} and no intact checkpoint ({said}); nothing in it can be loaded")

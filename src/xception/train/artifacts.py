"""A run's folder: resolved config, metrics.jsonl, TensorBoard events, checkpoints, plots, exported model.

::

    runs/<name>/
      config.toml          the recipe with every setting resolved, plus a [run] table (data, weights, ...)
      metrics.jsonl        one JSON line per epoch
      events.out.tfevents.*  TensorBoard scalars (per step and per epoch)
      last.pt, best.pt     checkpoints: the training state (see checkpoint.py); last.prev.pt, the one before
      .lock                held by the training that writes here (one at a time)
      loss.png, accuracy.png
      model.safetensors    the best model (EMA weights when averaging), for evaluate / predict
      summary.json         the outcome: best epoch and metrics, skipped files, time
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import StorageError
from ..fileio import atomic_write, storage_error

log = logging.getLogger("xception.train")

METRICS, CONFIG, SUMMARY = "metrics.jsonl", "config.toml", "summary.json"


class RunLog:
    """Writes metrics.jsonl and TensorBoard events (main process only; others pass ``enabled=False``).

    A write that fails (a full disk) raises a :class:`~xception.errors.StorageError` and leaves
    metrics.jsonl as it was: never a line cut short.
    """

    def __init__(self, folder: Path, *, enabled: bool = True, resume_epoch: int | None = None,
                 resume_step: int = 0) -> None:
        self.folder, self.enabled = folder, enabled
        self.writer: Any = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if resume_epoch is not None:
            # Epochs logged after the checkpoint we resume from will be run (and logged) again.
            kept = "".join(json.dumps(r) + "\n" for r in read_metrics(folder) if r["epoch"] <= resume_epoch)
            atomic_write(folder / METRICS, lambda tmp: tmp.write_text(kept))
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard events for this run")
        else:
            _quiet_event_thread_failures()
            with self._events():
                self.writer = SummaryWriter(str(folder), purge_step=resume_step if resume_epoch is not None else None)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            with self._events():
                for key, value in values.items():
                    self.writer.add_scalar(key, value, step)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        _append(self.folder / METRICS, (json.dumps(record) + "\n").encode())
        scalars = {f"epoch/{k}": v for k, v in record.items() if isinstance(v, int | float) and k != "epoch"}
        self.scalars(record["step"], scalars)
        if self.writer is not None:
            with self._events():
                self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            with self._events():
                writer.close()

    @contextlib.contextmanager
    def _events(self) -> Iterator[None]:
        """TensorBoard's writes: a full disk there is said like anywhere else."""
        try:
            yield
        except Exception as err:
            failure = storage_error(err, self.folder / "events.out.tfevents…")
            if failure is None:
                raise
            raise failure from err

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the error under way says what went wrong; closing must not hide it
            self.close()


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` to ``path`` and flush it to the disk; on failure cut the file back to where it was."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as err:
        raise storage_error(err, path) or StorageError(f"cannot write {path}") from err
    try:
        start = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise storage_error(err, path) or StorageError(f"cannot write {path}") from err
    finally:
        os.close(fd)


def _quiet_event_thread_failures() -> None:
    """TensorBoard writes from a thread of its own, which prints the traceback of a failed write (a full disk)
    and keeps the error for the training thread's next call to raise. That call says it, in one line
    (:meth:`RunLog._events`): the thread's traceback is left out."""
    try:
        from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
    except ImportError:
        return
    previous = threading.excepthook
    if getattr(previous, "quiet_event_writer", False):
        return

    def hook(args: Any) -> None:
        if not (isinstance(args.thread, _AsyncWriterThread) and isinstance(args.exc_value, OSError)):
            previous(args)

    hook.quiet_event_writer = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file, in order (none if it is missing); a line cut short by a crash ends them."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut short by a crash: everything before it is good
    return records


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The run folder's epoch records (metrics.jsonl), in order."""
    return read_jsonl(folder / METRICS)


def plot_curves(records: list[dict[str, Any]], folder: Path) -> list[Path]:
    """``loss.png`` and ``accuracy.png``: training and validation curves per epoch."""
    if not records:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in records]
    paths = []
    for name, keys, label in (
        ("loss", (("train_loss", "training"), ("val_loss", "validation")), "cross-entropy loss"),
        ("accuracy", (("train_acc", "training (augmented)"), ("val_top1", "validation top-1")), "accuracy (%)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
        for key, legend in keys:
            values = [r.get(key) for r in records]
            if any(v is not None for v in values):
                scale = 100.0 if name == "accuracy" else 1.0
                ax.plot(epochs, [v * scale if v is not None else float("nan") for v in values], marker="o",
                        markersize=3, label=legend)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{folder.name}: {name}")
        fig.tight_layout()
        path = folder / f"{name}.png"
        atomic_write(path, lambda tmp, fig=fig: fig.savefig(tmp, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths

"""Measure a trained classifier: top-1 / top-5, per-class accuracy, the confusion matrix and its plot.

    >>> from xception.evaluate import evaluate
    >>> report = evaluate("runs/demo/model.safetensors", "fashion-mnist")
    >>> print(report.format())

Counting is exact and additive (a confusion matrix of integer counts, a top-5 hit count, a loss sum), so
counts from several processes or batches add up to the single-pass result.

``flip=True`` is test-time flip: each image and its mirror image are classified and their class
probabilities averaged. Every figure it gives is labelled "with test-time flip".
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .errors import DataError

log = logging.getLogger("xception.evaluate")


TOP_K = 5
FLIP_LABEL = "with test-time flip"


@dataclass
class Counts:
    """Integer counts of one evaluation: ``confusion[true, predicted]``, top-5 hits and the loss sum."""

    confusion: torch.Tensor
    top5_correct: torch.Tensor
    loss_sum: torch.Tensor

    @classmethod
    def zeros(cls, num_classes: int, device: torch.device | str = "cpu") -> Counts:
        return cls(
            torch.zeros(num_classes, num_classes, dtype=torch.long, device=device),
            torch.zeros((), dtype=torch.long, device=device),
            torch.zeros((), dtype=torch.float64, device=device),
        )

    @property
    def num_classes(self) -> int:
        return self.confusion.shape[0]

    @torch.no_grad()
    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        logits = logits.float()
        c = self.num_classes
        predicted = logits.argmax(1)
        self.confusion += torch.bincount(labels * c + predicted, minlength=c * c).view(c, c)
        if c >= TOP_K:
            top = logits.topk(TOP_K, dim=1).indices
            self.top5_correct += (top == labels[:, None]).any(1).sum()
        self.loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()

    def add(self, other: Counts) -> Counts:
        return Counts(self.confusion + other.confusion, self.top5_correct + other.top5_correct,
                      self.loss_sum + other.loss_sum)

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> Counts:
        """Sum the counts over processes with ``reduce_sum`` (e.g. ``DistEnv.all_reduce_sum``)."""
        for tensor in (self.confusion, self.top5_correct, self.loss_sum):
            reduce_sum(tensor)
        return self

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def top1(self) -> float:
        return float(self.confusion.diagonal().sum()) / max(self.total, 1)

    @property
    def top5(self) -> float | None:
        return int(self.top5_correct) / max(self.total, 1) if self.num_classes >= TOP_K else None

    @property
    def loss(self) -> float:
        return float(self.loss_sum) / max(self.total, 1)

    def per_class(self) -> list[float | None]:
        """Recall of each class (None for a class without images)."""
        hits, counts = self.confusion.diagonal(), self.confusion.sum(1)
        return [float(h) / int(n) if int(n) else None for h, n in zip(hits, counts, strict=True)]


@torch.no_grad()
def count_batches(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, list[Any]]], num_classes: int, *,
    device: torch.device | str = "cpu", autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    channels_last: bool = False, on_skipped: Callable[[list[Any]], None] | None = None,
    progress: bool = False, desc: str = "evaluating", total: int | None = None, flip: bool = False,
) -> Counts:
    """Run ``model`` (in eval mode) over ``batches`` and count on ``device``; the model's mode is restored
    after. ``model`` is a module, or any callable from images to logits (a
    :class:`~xception.inference.Runner`: it places and casts the images itself).

    ``flip``: test-time flip. The model also sees each image mirrored left to right, and what is counted
    is the mean of the two softmax distributions (as log-probabilities: the loss is that of the mean)."""
    module = model if isinstance(model, nn.Module) else None
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    counts = Counts.zeros(num_classes, device)
    param = next(module.parameters(), None) if module is not None else None
    dtype = param.dtype if param is not None else None
    bar = tqdm(batches, total=total, desc=desc, unit="batch", leave=False, disable=not progress, dynamic_ncols=True)
    try:
        for images, labels, skipped in bar:
            if skipped and on_skipped is not None:
                on_skipped(skipped)
            if len(labels) == 0:
                continue
            fmt = torch.channels_last if channels_last else torch.preserve_format
            images = images.to(dtype, memory_format=fmt) if dtype is not None else images.to(memory_format=fmt)
            with autocast() if autocast is not None else contextlib.nullcontext():
                logits = model(images)
                if flip:
                    mirrored = model(images.flip(-1))
            if flip:
                pair = torch.stack((logits.float(), mirrored.float())).log_softmax(-1)
                logits = pair.logsumexp(0) - math.log(2)
            counts.update(logits.to(counts.confusion.device), labels.to(counts.confusion.device))
    finally:
        bar.close()
        if module is not None:
            module.train(was_training)
    return counts


@dataclass
class EvalReport:
    """The outcome of :func:`evaluate`, printable (``format``) and serialisable (``to_dict``)."""

    weights: str
    dataset: str
    class_names: list[str]
    counts: Counts
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    plot: str | None = None
    flip: bool = False  # test-time flip: every figure is labelled with it

    def to_dict(self) -> dict[str, Any]:
        c = self.counts
        per_class = c.per_class()
        support = c.confusion.sum(1).tolist()
        return {
            "weights": self.weights,
            "dataset": self.dataset,
            "images": c.total,
            "top1": c.top1,
            "top5": c.top5,
            "loss": c.loss,
            "test_time_flip": self.flip,
            "per_class": {name: {"accuracy": acc, "images": n}
                          for name, acc, n in zip(self.class_names, per_class, support, strict=True)},
            "confusion_matrix": c.confusion.tolist(),
            "class_names": self.class_names,
            "skipped": self.skipped,
            "elapsed_s": round(self.elapsed_s, 2),
            "images_per_s": round(c.total / self.elapsed_s, 1) if self.elapsed_s > 0 else None,
            "confusion_plot": self.plot,
        }

    def format(self) -> str:
        c = self.counts
        lines = [f"{self.dataset}: {c.total} images, weights {self.weights}" + (f", {FLIP_LABEL}" if self.flip else "")]
        lines.append(f"top-1 {100 * c.top1:.2f} %" + (f"   top-5 {100 * c.top5:.2f} %" if c.top5 is not None else "")
                     + f"   loss {c.loss:.4f}" + (f"   ({FLIP_LABEL})" if self.flip else ""))
        width = max(len(n) for n in self.class_names)
        support = c.confusion.sum(1).tolist()
        lines.append("per class:")
        for name, acc, n in zip(self.class_names, c.per_class(), support, strict=True):
            shown = f"{100 * acc:6.2f} %" if acc is not None else "     –  "
            lines.append(f"  {name:<{width}}  {shown}  ({n} images)")
        if self.skipped:
            lines.append("skipped files: " + ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())))
        if self.plot:
            lines.append(f"confusion matrix: {self.plot}")
        return "\n".join(lines)


def plot_confusion(confusion: torch.Tensor, class_names: Sequence[str], path: str | os.PathLike[str],
                   title: str = "confusion matrix") -> Path:
    """A PNG of the row-normalised confusion matrix (rows: true class, columns: predicted), with counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .fileio import atomic_write

    cm = confusion.double().cpu()
    rows = cm.sum(1, keepdim=True).clamp(min=1)
    share = (cm / rows).numpy()
    n = len(class_names)
    size = min(max(4.0, 0.55 * n + 2), 30.0)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=120)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if cm[i, j] > 0:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return path


def _classes(names: list[str], named: bool, found: Sequence[str], data: str | os.PathLike[str]) -> list[str]:
    """The model's class names; the data's, in order, when the model names none and the counts agree."""
    if named:
        return names
    if len(found) != len(names):
        raise DataError(f"{data} has {len(found)} classes but the model has {len(names)} outputs and no class "
                        "names to match them by")
    return list(found)


def evaluate(
    weights: str | os.PathLike[str], data: str | os.PathLike[str], *, model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None,
    split: str = "test", batch_size: int = 128, device: str = "auto", workers: int | None = None,
    strict: bool = False, data_dir: str | os.PathLike[str] | None = None, progress: bool = True,
    plot: str | os.PathLike[str] | None = None, flip: bool = False, runtime: str = "auto",
) -> EvalReport:
    """Evaluate ``weights`` on ``data`` (``"fashion-mnist"`` or a folder of class sub-folders).

    ``weights`` is weights (a file of any supported format, a URL, a tag, ``hf-hub:ORG/NAME``) or an exported
    model (ONNX, a torch.export ``.pt2``), run by ``runtime`` (:func:`xception.inference.open_model`). The
    folder's classes are matched by name to the class names the file carries; the preprocessing is the one it
    carries.
    ``model_name`` names the network of a bare state dict (every other format says it itself);
    ``model_options`` are config fields for :func:`xception.create_model` (e.g. ``{"in_chans": 1}``).
    ``plot`` writes the confusion-matrix PNG there; without it nothing is written.
    ``flip``: test-time flip (:func:`count_batches`); the report says so wherever it gives a figure.
    """
    from .data import ShardSampler, SkipLog, evaluation_source
    from .distributed import all_reduce_sum, distributed
    from .inference import open_model
    from .runtime import resolve_device

    # Under torchrun each process takes every world_size-th image; the counts are summed, so the metrics
    # are those of the whole set, exactly.
    dev = resolve_device(device)
    with distributed(dev) as env:
        dev = env.local_device(dev)
        runner = open_model(weights, runtime=runtime, device=dev, model_name=model_name, model_options=model_options)
        source = evaluation_source(data, classes=runner.class_names if runner.named_classes else None, split=split,
                                   data_dir=data_dir)
        classes = _classes(runner.class_names, runner.named_classes, source.classes, data)
        skip_log = SkipLog(strict=strict)
        skip_log.add(source.skipped)
        batches = source.batches(runner.preprocessing, train=False, batch_size=batch_size, device=runner.device,
                                 workers=workers, sampler=ShardSampler(len(source), env.rank, env.world_size))
        start = time.perf_counter()
        counts = count_batches(runner.forward, batches, len(classes), device=dev, on_skipped=skip_log.add,
                               progress=progress and env.is_main, total=len(batches),
                               flip=flip).all_reduce(all_reduce_sum)
        elapsed = time.perf_counter() - start
    if not env.is_main:
        plot = None  # one process draws
    if counts.total == 0:
        raise DataError(f"no readable images in {data}")
    report = EvalReport(str(weights), source.description, list(classes), counts, skip_log.counts(), elapsed,
                        flip=flip)
    if plot is not None:
        title = f"{Path(str(weights)).name} on {source.description} (top-1 {100 * counts.top1:.1f} %"
        title += f", {FLIP_LABEL})" if flip else ")"
        report.plot = str(plot_confusion(counts.confusion, classes, plot, title=title))
    if math.isnan(counts.loss):
        log.warning("the loss is NaN: the weights may be damaged")
    return report

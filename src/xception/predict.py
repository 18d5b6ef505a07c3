"""Classify image files with trained weights: the top-k class names and probabilities of each image.

    >>> from xception.predict import predict
    >>> for p in predict("runs/demo/model.safetensors", ["shoe.png", "photos/"]):
    ...     print(p.path, p.top[0] if p.ok else p.error)

Images are decoded in worker processes and classified in batches, by any runtime of
:mod:`xception.inference` (weights or an exported model). A file that cannot be read is reported with its
reason and the others go on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .data.folder import FileWalk, Skipped
from .data.images import UnreadableImage, is_image_file, load_image
from .errors import ConfigError, DataError


@dataclass
class Prediction:
    """One file's outcome: its top classes with probabilities, or why it could not be read."""

    path: str
    top: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "top": [{"class": name, "probability": p} for name, p in self.top]}

    def format(self) -> str:
        if self.error is not None:
            return f"{self.path}: error: {self.error}"
        return f"{self.path}: " + ", ".join(f"{name} {100 * p:.1f} %" for name, p in self.top)


class Predictions(list[Prediction]):
    """The predictions, in input order, and ``skipped``: the paths left out, each with its reason (mostly
    ``duplicate``: a file or a folder reached a second time, through a link or by being named twice)."""

    def __init__(self, items: Sequence[Prediction] = (), skipped: Sequence[Skipped] = ()) -> None:
        super().__init__(items)
        self.skipped = list(skipped)


def list_inputs(inputs: Sequence[str | os.PathLike[str]], *, walk: FileWalk | None = None) -> list[Path]:
    """Files as given, and the image files inside folders (recursively, sorted); every real file once.

    What is left out as a duplicate is recorded in ``walk.skipped`` (pass a :class:`FileWalk` to read it).
    """
    walk = walk if walk is not None else FileWalk()
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths.extend(p for p in walk.files(path) if is_image_file(p))
        elif walk.add_file(path):
            paths.append(path)  # reported later if missing or unreadable
    return paths


class _Files(Dataset):
    def __init__(self, paths: list[Path], transform: Callable[[Any], torch.Tensor], channels: int) -> None:
        self.paths, self.transform, self.channels = paths, transform, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(load_image(self.paths[index], self.channels)), None
        except UnreadableImage as err:
            return index, None, err.reason + (f" ({err.detail})" if err.detail else "")


def _keep_order(batch: list[tuple[int, torch.Tensor | None, str | None]]) -> list[tuple[int, Any, Any]]:
    return batch


# The spellings of --backend before --runtime: "torch" was the plain model, as it is now.
BACKENDS = ("torch", "onnxruntime")


@torch.no_grad()
def predict(
    weights: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]], *, top_k: int = 5,
    batch_size: int = 32, device: str = "auto", workers: int = 0, model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None, progress: bool = False, backend: str | None = None,
    runtime: str = "auto",
) -> Predictions:
    """The ``top_k`` classes of every image in ``inputs`` (files or folders), in input order; each real file
    once (``.skipped`` lists the paths left out as duplicates).

    ``weights`` is weights (a file of any supported format, a URL or a tag) or an exported model (ONNX, a
    torch.export ``.pt2``), told apart by content; ``runtime`` runs it (:func:`xception.inference.open_model`:
    ``"auto"`` runs an export on its own runtime and weights on the fast path on a CPU). ``backend`` is the
    former name of ``runtime`` (``"torch"`` or ``"onnxruntime"``). ``model_name`` names the network of a bare
    state dict (the files of every other format say which network they are for); ``model_options`` are
    config fields for :func:`xception.create_model` (e.g. ``{"in_chans": 1}``). Class names and
    preprocessing are those the file carries."""
    from .data.transforms import eval_transform
    from .inference import open_model

    if top_k < 1:
        raise ConfigError(f"top_k must be ≥ 1, got {top_k}")
    if backend is not None and backend not in BACKENDS:
        raise ConfigError(f"backend must be torch or onnxruntime, got {backend!r}")
    walk = FileWalk()
    paths = list_inputs(inputs, walk=walk)
    if not paths:
        raise DataError("no images to classify: the folders given hold no image files")
    runner = open_model(weights, runtime=backend or runtime, device=device, model_name=model_name,
                        model_options=model_options)
    preprocessing, names = runner.preprocessing, runner.class_names
    k = min(top_k, len(names))
    loader = DataLoader(_Files(paths, eval_transform(preprocessing), preprocessing.channels), batch_size=batch_size,
                        num_workers=workers, collate_fn=_keep_order)
    results: list[Prediction] = [Prediction(str(p)) for p in paths]
    for batch in tqdm(loader, desc="predicting", unit="batch", disable=not progress, leave=False):
        good = [(i, x) for i, x, _ in batch if x is not None]
        for i, _, error in batch:
            if error is not None:
                results[i].error = error
        if not good:
            continue
        images = torch.stack([x for _, x in good]).to(runner.device)
        probs = runner.run(images).softmax(1)
        values, indices = probs.topk(k, dim=1)
        for (i, _), v, idx in zip(good, values.tolist(), indices.tolist(), strict=True):
            results[i].top = [(names[c], p) for c, p in zip(idx, v, strict=True)]
    return Predictions(results, walk.skipped)

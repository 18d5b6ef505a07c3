"""Our own weights format: safetensors tensors plus JSON metadata in the file's header.

The header's ``__metadata__`` holds one key, ``xception``, whose value is the JSON of
:class:`WeightsMeta`: the model name and full config (so the file rebuilds its own network), class names,
preprocessing, where the weights came from, the source file's sha256 and any measured metrics.
Nothing here unpickles: a safetensors file is a JSON header and raw tensor bytes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..fileio import atomic_write, sha256_file
from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing

__all__ = [  # atomic_write and sha256_file are re-exported for the loaders in this package
    "WeightsMeta", "atomic_write", "is_native", "load_native", "read_metadata", "read_weights", "save_weights",
    "sha256_file",
]

FORMAT_VERSION = 1
META_KEY = "xception"


@dataclass
class WeightsMeta:
    """What travels with a set of weights."""

    model: str
    config: XceptionConfig
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    source: str = ""
    sha256: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "source": self.source,
            "sha256": self.sha256,
            "metrics": self.metrics,
        })

    @classmethod
    def from_json(cls, text: str) -> WeightsMeta:
        data = json.loads(text)
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"weights metadata version {version!r} is not supported (expected {FORMAT_VERSION})")
        pre = data.get("preprocessing")
        return cls(
            model=data["model"],
            config=XceptionConfig.from_dict(data["config"]),
            class_names=data.get("class_names"),
            preprocessing=Preprocessing.from_dict(pre) if pre else None,
            source=data.get("source", ""),
            sha256=data.get("sha256", ""),
            metrics=data.get("metrics") or {},
        )


def save_weights(
    model: Xception,
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    source: str | None = None,
    sha256: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> WeightsMeta:
    """Write ``model``'s weights and metadata to ``path`` (safetensors), atomically.

    Metadata not given is taken from what the model carries (``model.weights_meta`` when it was loaded
    from a file, ``model.class_names`` and ``model.preprocessing``).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"our weights format is safetensors: name the file *.safetensors, not {path.name!r}")
    previous: WeightsMeta | None = getattr(model, "weights_meta", None)
    meta = WeightsMeta(
        model=model_name or (previous.model if previous else model.config.arch),
        config=model.config,
        class_names=class_names if class_names is not None else model.class_names,
        preprocessing=preprocessing if preprocessing is not None else model.preprocessing,
        source=source if source is not None else (previous.source if previous else ""),
        sha256=sha256 if sha256 is not None else (previous.sha256 if previous else ""),
        metrics=metrics if metrics is not None else (previous.metrics if previous else {}),
    )
    if meta.class_names is not None and len(meta.class_names) != model.config.num_classes:
        raise ValueError(
            f"{len(meta.class_names)} class names for a model with {model.config.num_classes} classes"
        )
    # safetensors refuses shared or non-contiguous storage: store plain contiguous copies.
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={META_KEY: meta.to_json()}))
    return meta


def is_native(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a safetensors file carrying our metadata."""
    try:
        return read_metadata(path) is not None
    except ValueError:
        return False


def read_metadata(path: str | os.PathLike[str]) -> WeightsMeta | None:
    """The metadata of a safetensors file (None when it has none of ours); ValueError if not safetensors."""
    with open(path, "rb") as f:
        raw = f.read(8)
    if len(raw) < 8:
        raise ValueError(f"{path} is too short to be a safetensors file")
    size = int.from_bytes(raw, "little")
    file_size = os.path.getsize(path)
    if size <= 0 or size > min(file_size - 8, 100 << 20):
        raise ValueError(f"{path} is not a safetensors file (bad header length)")
    with open(path, "rb") as f:
        f.seek(8)
        header_bytes = f.read(size)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not a safetensors file (unreadable header)") from err
    text = (header.get("__metadata__") or {}).get(META_KEY)
    return WeightsMeta.from_json(text) if text else None


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Tensors and metadata of one of our files; a clear ValueError for anything else."""
    meta = read_metadata(path)
    if meta is None:
        raise ValueError(f"{path} is a safetensors file without xception metadata; convert it with "
                         "'xception convert'")
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(f"{path} is damaged or truncated ({err}); download or convert it again") from err
    return tensors, meta


def load_native(path: str | os.PathLike[str], **overrides: Any) -> Xception:
    """Rebuild the network a file describes and load its weights, in eval mode.

    The checks (a different ``num_classes`` starts a new classifier; any other mismatch is an error) are
    those of every format: see :func:`xception.weights.load.load_pretrained`.
    """
    from .load import load_native as load  # the common loader imports this module

    return load(path, **overrides)

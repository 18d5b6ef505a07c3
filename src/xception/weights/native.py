"""Our own weights format: safetensors tensors plus JSON metadata in the file's header.

The header's ``__metadata__`` holds one key, ``xception``, whose value is the JSON of
:class:`~xception.weights.meta.WeightsMeta`: the model name and full config (so the file rebuilds its own
network), class names, preprocessing, where the weights came from, the source file's sha256 and any
measured metrics. Nothing here unpickles: a safetensors file is a JSON header and raw tensor bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import ConfigError, WeightsError
from ..fileio import atomic_write
from ..models import Xception
from ..preprocessing import Preprocessing
from .meta import WeightsMeta

META_KEY = "xception"
INT8_META_KEY = "xception_int8"  # an int8 model of xception.quantize: runs as it is, never read as float weights


def is_int8_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an int8 model of :mod:`xception.quantize` (a safetensors file whose header carries
    the int8 key), from its header alone; a damaged one counts, so that loading it says what is wrong."""
    try:
        with safe_open(str(path), "pt") as f:
            return INT8_META_KEY in (f.metadata() or {})
    except (SafetensorError, OSError):
        return False


def save_weights(
    model: Xception,
    path: str | os.PathLike[str],
    *,
    model_name: str | None = None,
    class_names: list[str] | tuple[str, ...] | None = None,
    preprocessing: Preprocessing | None = None,
    source: str | None = None,
    sha256: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> WeightsMeta:
    """Write ``model``'s weights and metadata to ``path`` (safetensors), atomically.

    The metadata is the model's ``weights_meta`` (what the weights it was loaded from mean), or a bare
    description of its config for a fresh model; the keyword arguments replace single fields of it.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"our weights format is safetensors: name the file *.safetensors, not {path.name!r}")
    base = model.weights_meta or WeightsMeta(model=model.config.arch, config=model.config)
    changes = {"model": model_name, "class_names": class_names, "preprocessing": preprocessing, "source": source,
               "sha256": sha256, "metrics": metrics}
    meta = base.replace(config=model.config, **{k: v for k, v in changes.items() if v is not None})
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
        raise WeightsError(f"{path} is too short to be a safetensors file")
    size = int.from_bytes(raw, "little")
    file_size = os.path.getsize(path)
    if size <= 0 or size > min(file_size - 8, 100 << 20):
        raise WeightsError(f"{path} is not a safetensors file (bad header length)")
    with open(path, "rb") as f:
        f.seek(8)
        header_bytes = f.read(size)
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not a safetensors file (unreadable header)") from err
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__") or {}, dict):
        raise WeightsError(f"{path} is not a safetensors file (its header is not a JSON object of tensors)")
    text = (header.get("__metadata__") or {}).get(META_KEY)
    if not text:
        return None
    try:
        return WeightsMeta.from_json(text)
    except (ValueError, TypeError) as err:  # also ConfigError/WeightsError: say which file, keep the cause
        raise WeightsError(f"{path} carries damaged xception metadata ({err}); convert or export it again") from err


def read_weights(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], WeightsMeta]:
    """Tensors and metadata of one of our files; a clear ValueError for anything else."""
    meta = read_metadata(path)
    if meta is None:
        raise WeightsError(f"{path} is a safetensors file without xception metadata; convert it with "
                           "'xception convert'")
    try:
        tensors = load_file(str(path))
    except SafetensorError as err:
        raise WeightsError(f"{path} is damaged or truncated ({err}); download or convert it again") from err
    return tensors, meta

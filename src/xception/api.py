"""The one-line entry points: build a named model, with or without weights."""

from __future__ import annotations

import os
from typing import Any

from .models import Xception, build_model
from .weights import load_native


def create_model(
    name: str = "xception",
    *,
    weights: str | os.PathLike[str] | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    **overrides: Any,
) -> Xception:
    """Build ``name`` (see :func:`list_models`) with ``overrides`` of its config, optionally with weights.

    With ``weights`` (a file in our safetensors format), the network is rebuilt from the file's config and
    returned in eval mode with its preprocessing and class names attached.
    """
    if weights is None:
        return build_model(name, features_only=features_only, out_indices=out_indices, **overrides)
    model = load_native(weights, **overrides)
    return model.as_features(tuple(out_indices)) if features_only else model

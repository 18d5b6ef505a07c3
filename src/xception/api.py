"""The one-line entry points: build a named model, with or without weights."""

from __future__ import annotations

import logging
import os
from typing import Any

from .models import Xception, build_model
from .preprocessing import Preprocessing
from .weights import WeightsTag, load_pretrained

log = logging.getLogger(__name__)


def create_model(
    name: str | None = None,
    *,
    weights: str | os.PathLike[str] | WeightsTag | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    progress: bool = True,
    **overrides: Any,
) -> Xception:
    """Build ``name`` (see :func:`list_models`; default ``xception``) with ``overrides`` of its config.

    ``weights`` is a local file (Keras 3 ``.keras``/``.weights.h5``, legacy Keras ``.h5``, timm
    ``.pth``/``.safetensors``, or ours), a URL, a file on the Hugging Face Hub (``hf-hub:ORG/NAME``), or a
    tag (:func:`xception.weights.list_weights`; ``"imagenet"`` is the model's default). The file decides the
    network, so ``name`` may be left out (a bare state dict of ours needs it); if given it must agree. The
    model comes back in eval mode; its ``weights_meta`` (read through ``model.preprocessing`` and
    ``model.class_names``) says what the weights mean. A different ``num_classes`` loads the backbone and
    starts a new classifier; another ``in_chans`` adapts RGB weights' first conv (``in_chans=1``: summed over
    R, G, B; N channels: repeated, scaled by 3/N). :func:`xception.weights.load_pretrained` also returns the
    report of the load.
    """
    if weights is None:
        return build_model(name or "xception", features_only=features_only, out_indices=out_indices, **overrides)
    model = load_pretrained(weights, name=name, progress=progress, **overrides).model
    return model.as_features(tuple(out_indices)) if features_only else model


def inference_preprocessing(model: Xception) -> Preprocessing:
    """The preprocessing the model's weights carry; Keras's 299 px, [-1, 1] scaling (with a warning) if none."""
    if model.preprocessing is not None:
        return model.preprocessing
    log.warning("the weights carry no preprocessing: using 299 px, [-1, 1] scaling")
    return Preprocessing.centred(model.config.in_chans)

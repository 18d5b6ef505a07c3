"""Named models: each a record of :mod:`xception.catalog` (its table and the defaults that make it behave
like its source), built here."""

from __future__ import annotations

from typing import Any

from ..catalog import CATALOG, VariantRecord, variant
from .config import XceptionConfig
from .xception import Xception

# The registry is the catalog: one record per name, read here for its table and config defaults.
MODELS: dict[str, VariantRecord] = CATALOG


def list_models() -> list[str]:
    """The names :func:`create_model` accepts."""
    return list(MODELS)


def model_entry(name: str) -> VariantRecord:
    """The record of ``name`` (a :class:`~xception.errors.ConfigError` for an unknown name)."""
    return variant(name)


def model_config(name: str, **overrides: Any) -> XceptionConfig:
    """The validated config ``create_model(name, **overrides)`` would build."""
    entry = model_entry(name)
    return XceptionConfig.from_dict({"arch": entry.arch, **entry.config, **overrides})


def build_model(
    name: str, *, features_only: bool = False, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    **overrides: Any,
) -> Xception:
    """A freshly initialised model. ``features_only=True`` returns a backbone yielding feature maps."""
    model = Xception(model_config(name, **overrides))
    return model.as_features(tuple(out_indices)) if features_only else model

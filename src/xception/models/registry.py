"""Named models: an architecture table plus the defaults that make it behave like its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .config import XceptionConfig
from .xception import Xception


@dataclass(frozen=True)
class ModelEntry:
    """A registered name: which table it builds, with which defaults, and what it is."""

    arch: str
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)

    def config(self, **overrides: Any) -> XceptionConfig:
        return XceptionConfig.from_dict({"arch": self.arch, **self.defaults, **overrides})


# TF 'same' padding and BN eps 1e-3 reproduce Keras; symmetric padding reproduces timm's ports.
_TIMM = {"padding": "symmetric"}
MODELS: dict[str, ModelEntry] = {
    "xception": ModelEntry("xception", "the paper's model, as keras.applications.Xception computes it"),
    "legacy_xception": ModelEntry(
        "xception", "the paper's model as timm/Cadene compute it (symmetric padding, BN eps 1e-5)",
        {**_TIMM, "bn_eps": 1e-5},
    ),
    "xception41": ModelEntry("xception41", "aligned Xception-41 (DeepLabv3+)", _TIMM),
    "xception65": ModelEntry("xception65", "aligned Xception-65 (DeepLabv3+)", _TIMM),
    "xception71": ModelEntry("xception71", "aligned Xception-71 (DeepLabv3+)", _TIMM),
    "xception41p": ModelEntry(
        "xception41p", "aligned Xception-41, pre-activation", {**_TIMM, "bn_eps": 1e-5}
    ),
    "xception65p": ModelEntry("xception65p", "aligned Xception-65, pre-activation", _TIMM),
}


def list_models() -> list[str]:
    """The names :func:`create_model` accepts."""
    return list(MODELS)


def model_entry(name: str) -> ModelEntry:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(MODELS)}")
    return MODELS[name]


def model_config(name: str, **overrides: Any) -> XceptionConfig:
    """The validated config ``create_model(name, **overrides)`` would build."""
    return model_entry(name).config(**overrides)


def build_model(
    name: str, *, features_only: bool = False, out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    **overrides: Any,
) -> Xception:
    """A freshly initialised model. ``features_only=True`` returns a backbone yielding feature maps."""
    model = Xception(model_config(name, **overrides))
    return model.as_features(tuple(out_indices)) if features_only else model

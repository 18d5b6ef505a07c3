"""What a set of weights means, as one frozen value.

A :class:`WeightsMeta` names the network the weights belong to (its full config), what they expect of
their input (:class:`~xception.preprocessing.Preprocessing`), what their outputs mean (class names),
where they came from and what they achieved. The loaders attach it to a model once
(``model.weights_meta``); saving, exporting, evaluating and predicting read it back. Nothing here reads or
writes files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..errors import ConfigError, WeightsError
from ..models.config import XceptionConfig
from ..preprocessing import Preprocessing

FORMAT_VERSION = 1


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


# What each JSON field must hold (a file may be damaged or written by hand): key, check, required.
_JSON_FIELDS: tuple[tuple[str, Any, bool], ...] = (
    ("model", lambda v: isinstance(v, str), True),
    ("config", lambda v: isinstance(v, dict), True),
    ("class_names", _strings, False),
    ("preprocessing", lambda v: isinstance(v, dict), False),
    ("source", lambda v: isinstance(v, str), False),
    ("sha256", lambda v: isinstance(v, str), False),
    ("metrics", lambda v: isinstance(v, dict), False),
)


@dataclass(frozen=True)
class WeightsMeta:
    """What travels with a set of weights (immutable: derive a changed copy with :meth:`replace`)."""

    model: str
    config: XceptionConfig
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    source: str = ""
    sha256: str = ""
    metrics: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(self.class_names))
            if len(self.class_names) != self.config.num_classes:
                raise ConfigError(f"{len(self.class_names)} class names for a model with "
                                  f"{self.config.num_classes} classes")
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    def __reduce__(self) -> tuple[Any, ...]:
        # The read-only metrics view cannot be pickled or deep-copied (deepcopy(model) does both): rebuild
        # the value from plain fields instead.
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return _rebuild, (fields | {"metrics": dict(self.metrics)},)

    def replace(self, **changes: Any) -> WeightsMeta:
        return dataclasses.replace(self, **changes)

    def without_head(self, config: XceptionConfig) -> WeightsMeta:
        """The same weights under a new classifier: class names and measured figures no longer apply."""
        return self.replace(config=config, class_names=None, metrics={})

    def to_json(self) -> str:
        return json.dumps({
            "format_version": FORMAT_VERSION,
            "model": self.model,
            "config": self.config.to_dict(),
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "preprocessing": self.preprocessing.to_dict() if self.preprocessing else None,
            "source": self.source,
            "sha256": self.sha256,
            "metrics": dict(self.metrics),
        })

    @classmethod
    def from_json(cls, text: str) -> WeightsMeta:
        """The metadata a file carries; a :class:`WeightsError` naming the field that is not as written."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise WeightsError(f"weights metadata must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise WeightsError(f"weights metadata version {version!r} is not supported (expected {FORMAT_VERSION})")
        for key, kind, required in _JSON_FIELDS:
            value = data.get(key)
            if (value is None and required) or (value is not None and not kind(value)):
                raise WeightsError(f"weights metadata field {key!r} is missing or malformed: {value!r}")
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


def _rebuild(fields: dict[str, Any]) -> WeightsMeta:
    return WeightsMeta(**fields)

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

from ..models import XceptionConfig
from ..preprocessing import Preprocessing

FORMAT_VERSION = 1


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
                raise ValueError(f"{len(self.class_names)} class names for a model with "
                                 f"{self.config.num_classes} classes")
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

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

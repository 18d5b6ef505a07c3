"""Edge runtimes: ExecuTorch programs (``executorch``, a ``.pte`` on XNNPACK) and LiteRT models (``litert``, a
``.tflite`` on ``ai_edge_litert``'s interpreter), as ``xception export`` writes them.

Each runs its own file as it is, on the CPU, with the class names and preprocessing the file carries
(:mod:`xception.edge`), one traced batch (one image) at a time; option ``threads``: the runtime's threads.
Neither starts from weights: exporting takes a minute and picks a precision, so export the weights first
(``xception export NAME.pte``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..preprocessing import Preprocessing
from .base import OpenRequest, Runner

log = logging.getLogger(__name__)


def _facts(model: Any, source: str) -> dict[str, Any]:
    """What a runner says about an edge file, from its metadata (the file's own shape when it has none)."""
    from ..export import parse_metadata

    meta, pre, config = parse_metadata(model.text, source)
    _, channels, size, _ = model.input_shape
    if pre is None:
        log.warning("%s carries no preprocessing: using %d px, [-1, 1] scaling", source, size)
        pre = Preprocessing.centred(channels, size)
    return {"source": source, "model_name": config.arch if config is not None else Path(source).stem,
            "class_names": meta.get("class_names"), "num_classes": model.num_classes, "config": config,
            "preprocessing": pre, "device": torch.device("cpu")}


def _precision(model: Any, default: str) -> str:
    try:
        return str(json.loads(model.text)["format"]["precision"])
    except (TypeError, ValueError, KeyError):
        return default


class _EdgeRunner(Runner):
    """A file of an edge runtime (``native_kind``), loaded by :func:`xception.edge.load`, run on the CPU."""

    from_weights = False
    option_names = ("threads",)
    kernels: ClassVar[str]

    def __init__(self, *, file: Any, **facts: Any) -> None:
        super().__init__(**facts)
        self.file = file  # xception.edge.pte.PteModel or xception.edge.tflite.TfliteModel

    @classmethod
    def open(cls, request: OpenRequest) -> _EdgeRunner:
        from ..edge import load

        file = load(cls.native_kind, request.source, threads=request.options.get("threads"))
        return cls(file=file, **_facts(file, request.source))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.file(batch)

    def details(self) -> dict[str, Any]:
        return {"precision": _precision(self.file, getattr(self.file, "precision", "float32")),
                "kernels": self.kernels, **self.input_details()}

    def input_details(self) -> dict[str, Any]:
        return {}


class ExecuTorchRunner(_EdgeRunner):
    """An ExecuTorch program on ``executorch.runtime`` (its XNNPACK delegate), on the CPU."""

    name = "executorch"
    native_kind = "pte"
    kernels = "XNNPACK (ExecuTorch)"

    def input_details(self) -> dict[str, Any]:
        return {"input": list(self.file.input_shape)}


class LiteRTRunner(_EdgeRunner):
    """A LiteRT model on ``ai_edge_litert``'s interpreter (its XNNPACK delegate), on the CPU."""

    name = "litert"
    native_kind = "tflite"
    kernels = "LiteRT interpreter (XNNPACK)"

    def input_details(self) -> dict[str, Any]:
        return {"layout": self.file.layout}

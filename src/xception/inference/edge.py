"""Edge runtimes: ExecuTorch programs (``executorch``, a ``.pte`` on XNNPACK) and LiteRT models (``litert``, a
``.tflite`` on ``ai_edge_litert``'s interpreter), as ``xception export`` writes them.

Each runs its own file as it is, on the CPU, with the class names and preprocessing the file carries
(:mod:`xception.edge`), one traced batch (one image) at a time. Neither starts from weights: exporting
takes a minute and picks a precision, so export the weights first (``xception export NAME.pte``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

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


class ExecuTorchRunner(Runner):
    """An ExecuTorch program on ``executorch.runtime`` (its XNNPACK delegate), on the CPU."""

    name = "executorch"
    native_kind = "pte"
    from_weights = False

    def __init__(self, *, program: Any, **facts: Any) -> None:
        super().__init__(**facts)
        self.program = program  # xception.edge.pte.PteModel

    @classmethod
    def open(cls, request: OpenRequest) -> ExecuTorchRunner:
        from ..edge import load

        program = load("pte", request.source)
        return cls(program=program, **_facts(program, request.source))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.program(batch)

    def details(self) -> dict[str, Any]:
        return {"precision": _precision(self.program, "float32"), "kernels": "XNNPACK (ExecuTorch)",
                "input": list(self.program.input_shape)}


class LiteRTRunner(Runner):
    """A LiteRT model on ``ai_edge_litert``'s interpreter (its XNNPACK delegate), on the CPU."""

    name = "litert"
    native_kind = "tflite"
    from_weights = False

    def __init__(self, *, interpreter: Any, **facts: Any) -> None:
        super().__init__(**facts)
        self.interpreter = interpreter  # xception.edge.tflite.TfliteModel

    @classmethod
    def open(cls, request: OpenRequest) -> LiteRTRunner:
        from ..edge import load

        interpreter = load("tflite", request.source)
        return cls(interpreter=interpreter, **_facts(interpreter, request.source))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.interpreter(batch)

    def details(self) -> dict[str, Any]:
        return {"precision": _precision(self.interpreter, self.interpreter.precision),
                "kernels": "LiteRT interpreter (XNNPACK)", "layout": self.interpreter.layout}

"""The int8 runtime: a model written by ``xception quantize``, on the compiled int8 kernels where this CPU
runs them (:mod:`xception.quantize.native`), else on the integer reference of the scheme. Both give the same
codes and logits, bit for bit: the kernels only compute them faster.

The file holds the quantised network itself (int8 weights, int32 biases, scales and zero points), so it runs
only as it is: quantising weights needs calibration images, which opening a file does not have.
"""

from __future__ import annotations

from typing import Any

import torch

from ..preprocessing import Preprocessing
from .base import OpenRequest, Runner


class Int8Runner(Runner):
    """uint8 activations, int8 weights, int32 accumulators, as :mod:`xception.quantize.scheme` defines them."""

    name = "int8"
    native_kind = "int8"
    from_weights = False

    def __init__(self, *, qmodel: torch.nn.Module, **facts: Any) -> None:
        super().__init__(**facts)
        self.qmodel = qmodel  # the reference network, as read from the file
        from ..quantize.native import on_kernels

        self.network, self.kernels = on_kernels(qmodel)

    @classmethod
    def open(cls, request: OpenRequest) -> Int8Runner:
        from ..quantize import load_quantized

        q = load_quantized(request.source)
        preprocessing = q.preprocessing or Preprocessing.centred(q.config.in_chans)
        # Both the kernels and the integer reference run on the CPU (PyTorch has no integer convolutions on CUDA).
        return cls(qmodel=q, source=request.source, model_name=q.model_name, class_names=q.class_names,
                   num_classes=q.num_classes, config=q.config, preprocessing=preprocessing,
                   device=torch.device("cpu"))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.network(batch)

    def details(self) -> dict[str, Any]:
        calibration = self.qmodel.info.get("calibration", {}) if isinstance(self.qmodel.info, dict) else {}
        return {"precision": "int8 (uint8 activations, int8 weights, int32 accumulators)",
                "kernels": self.kernels, "calibration": calibration.get("method")}


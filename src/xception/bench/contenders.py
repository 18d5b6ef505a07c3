"""The contenders, as one table: :data:`CONTENDERS` has one :class:`ContenderSpec` per mode.

A spec says what a mode runs (which network, hence which float32 reference its output must match), in
which precision, what it needs (packages, a kind of device) and how to build it (:mod:`.builders`, and
:mod:`.int8` for the int8 contenders). Adding a contender, a new runtime or a new kernel, is one more entry;
the runner, the skips and the report read everything else from the entry. Our model's contenders open a
file of it through :mod:`xception.inference`, so a runtime added there needs only its entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch

from ..errors import ConfigError
from .base import BuildContext, Contender
from .builders import eager, edge, fast, onnxruntime, openvino, train
from .int8 import fast_int8, ort_int8, ov_int8

# Packages a network needs before anything can be built from it.
NETWORK_PACKAGES = {"ours": (), "timm": ("timm",)}


@dataclass(frozen=True)
class ContenderSpec:
    """One mode: its name, what it is, and how to build it."""

    name: str
    kind: Literal["inference", "training"]
    network: Literal["ours", "timm"]  # whose layers and weights; an inference output must match its float32 eager
    build: Callable[[BuildContext], Contender]
    about: str  # one line for ``xception bench --help``
    precision: str | None = None  # "float32", "bfloat16", …; None: the run's dtype
    packages: tuple[str, ...] = ()
    devices: tuple[str, ...] = ("cpu", "cuda")

    def dtype(self, run_dtype: torch.dtype) -> torch.dtype:
        return getattr(torch, self.precision) if self.precision else run_dtype

    def unmet_requirement(self, device: torch.device) -> str | None:
        """Why this contender cannot run here, or None when it can."""
        for package in (*NETWORK_PACKAGES[self.network], *self.packages):
            try:
                importlib.import_module(package)
            except ImportError:
                return f"{package} is not installed"
        if device.type not in self.devices:
            return f"needs a {' or '.join(d.upper() for d in self.devices)} device (this run is on {device})"
        return None


# -- the table ----------------------------------------------------------------------------------------------

ORT = ("onnxruntime", "onnx", "onnxscript")  # the runtime, then what the export needs
QUANTIZE = ("onnxruntime", "onnx")  # xception.quantize checks its QDQ model on ONNX Runtime
OPENVINO = ("openvino", "onnx", "onnxscript")
EXECUTORCH = ("executorch",)
LITERT = ("litert_torch", "ai_edge_litert")
CPU_ONLY = ("cpu",)
CUDA_ONLY = ("cuda",)

CONTENDERS: tuple[ContenderSpec, ...] = (
    ContenderSpec("eager", "inference", "ours", partial(eager, compiled=False),
                  "our model as users run it (CUDA: autocast, channels_last)"),
    ContenderSpec("compiled", "inference", "ours", partial(eager, compiled=True), "the same, torch.compile'd"),
    ContenderSpec("fast", "inference", "ours", partial(fast, compile=False, graphs=False), "xception.optimize(model)"),
    ContenderSpec("fast-compiled", "inference", "ours", partial(fast, compile=True, graphs=False),
                  "optimize(compile=True): Inductor with freezing"),
    ContenderSpec("fast-graphs", "inference", "ours", partial(fast, compile=False, graphs=True),
                  "optimize(cuda_graphs=True)", devices=CUDA_ONLY),
    ContenderSpec("fast-compiled-graphs", "inference", "ours", partial(fast, compile=True, graphs=True),
                  "optimize(compile=True, cuda_graphs=True)", devices=CUDA_ONLY),
    ContenderSpec("fast-bf16", "inference", "ours", partial(fast, compile=False, graphs=False),
                  "optimize(dtype=torch.bfloat16)", precision="bfloat16"),
    ContenderSpec("timm", "inference", "timm", partial(eager, compiled=False),
                  "timm's legacy_xception, run like eager"),
    ContenderSpec("timm-compiled", "inference", "timm", partial(eager, compiled=True), "the same, torch.compile'd"),
    ContenderSpec("ort-timm", "inference", "timm", onnxruntime, "ONNX Runtime on timm's ONNX export",
                  precision="float32", packages=ORT),
    ContenderSpec("ort-ours", "inference", "ours", onnxruntime, "ONNX Runtime on our ONNX export",
                  precision="float32", packages=ORT),
    ContenderSpec("ov-timm", "inference", "timm", openvino, "OpenVINO (CPU, f32 hint) on timm's ONNX export",
                  precision="float32", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("ov-ours", "inference", "ours", openvino, "OpenVINO (CPU, f32 hint) on our ONNX export",
                  precision="float32", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("ov-timm-bf16", "inference", "timm", openvino, "OpenVINO (CPU, bf16 hint) on timm's ONNX export",
                  precision="bfloat16", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("executorch-xnnpack", "inference", "ours", partial(edge, fmt="pte", int8=False),
                  "ExecuTorch on its XNNPACK delegate, our model (.pte), one image per call", precision="float32",
                  packages=EXECUTORCH, devices=CPU_ONLY),
    ContenderSpec("executorch-int8", "inference", "ours", partial(edge, fmt="pte", int8=True),
                  "the same, int8 (PT2E, XNNPACKQuantizer)", precision="int8", packages=EXECUTORCH,
                  devices=CPU_ONLY),
    ContenderSpec("litert", "inference", "ours", partial(edge, fmt="tflite", int8=False),
                  "LiteRT's interpreter on our model (.tflite, NHWC), one image per call", precision="float32",
                  packages=LITERT, devices=CPU_ONLY),
    ContenderSpec("litert-int8", "inference", "ours", partial(edge, fmt="tflite", int8=True),
                  "the same, int8 (PT2E, LiteRT's PT2EQuantizer)", precision="int8", packages=LITERT,
                  devices=CPU_ONLY),
    ContenderSpec("fast-int8", "inference", "ours", fast_int8,
                  "xception.quantize's int8 file of our model on the int8 runtime", precision="int8",
                  packages=QUANTIZE, devices=CPU_ONLY),
    ContenderSpec("ort-int8", "inference", "ours", ort_int8,
                  "ONNX Runtime on the QDQ model of the same int8 network", precision="int8", packages=QUANTIZE,
                  devices=CPU_ONLY),
    ContenderSpec("ov-int8", "inference", "ours", ov_int8,
                  "OpenVINO int8: NNCF PTQ of our ONNX export on the same images (else the QDQ model)",
                  precision="int8", packages=OPENVINO, devices=CPU_ONLY),
    ContenderSpec("train-eager", "training", "ours", partial(train, compiled=False), "one SGD step of our model"),
    ContenderSpec("train-compiled", "training", "ours", partial(train, compiled=True), "the same, torch.compile'd"),
    ContenderSpec("train-timm", "training", "timm", partial(train, compiled=False), "one SGD step of timm's"),
    ContenderSpec("train-timm-compiled", "training", "timm", partial(train, compiled=True),
                  "the same, torch.compile'd"),
)
SPECS: dict[str, ContenderSpec] = {spec.name: spec for spec in CONTENDERS}
ALL_MODES: tuple[str, ...] = tuple(SPECS)
INFERENCE_MODES: tuple[str, ...] = tuple(s.name for s in CONTENDERS if s.kind == "inference")
TRAINING_MODES: tuple[str, ...] = tuple(s.name for s in CONTENDERS if s.kind == "training")


def specs_for(modes: Sequence[str]) -> list[ContenderSpec]:
    """The table's entries for ``modes``, in order; a :class:`ConfigError` naming the known modes for any other.
    (The config names modes without importing the table, which builds from the config.)"""
    unknown = [m for m in modes if m not in SPECS]
    if unknown:
        raise ConfigError(f"unknown mode(s) {unknown}; known: {', '.join(SPECS)}")
    return [SPECS[m] for m in modes]

"""What answers ``/predict``: a :class:`~xception.inference.Runner` of the inference layer, under the name the
service reports.

Weights are served on the fast path (``xception.optimize``) unless another runtime is asked for; an exported
model (ONNX, a torch.export ``.pt2``) on its own runtime. ``model`` is the plain PyTorch network when there is
one: ``/explain`` (Grad-CAM) needs its gradients, which no other runtime keeps.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import ConfigError
from ..inference import RUNTIME_NAMES, Runner, open_model
from ..models import Xception
from ..preprocessing import Preprocessing

# The service's names for its backends, kept from before runtimes had names of their own: "torch" is
# PyTorch on the fast path. Any runtime name is accepted too.
BACKENDS = ("torch", "onnxruntime")
_BACKEND_RUNTIMES = {"torch": "fast"}
# What /readyz and /predict report as "backend": PyTorch in this process is "torch", whatever its kernels.
_REPORTED = {"fast": "torch", "torch": "torch"}


@dataclass
class Backend:
    """A loaded model ready to serve. ``run(batch)`` → (N, classes) float32 logits on the CPU."""

    runner: Runner
    name: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.name = self.name or _REPORTED.get(self.runner.name, self.runner.name)
        self.details = {**self.runner.details(), **dict(self.details)}

    @property
    def model_name(self) -> str:
        return self.runner.model_name

    @property
    def class_names(self) -> list[str]:
        return self.runner.class_names

    @property
    def preprocessing(self) -> Preprocessing:
        return self.runner.preprocessing

    @property
    def device(self) -> torch.device:
        return self.runner.device

    @property
    def model(self) -> Xception | None:
        return self.runner.model

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        return self.runner.run(batch)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once (the first calls pack weights, pick kernels, allocate)."""
        self.runner.warm_up(batch_sizes)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, **self.runner.describe(), **dict(self.details)}


def runtime_of(backend: str | None) -> str:
    """The runtime a service backend name stands for: ``torch`` → ``fast``; runtime names as they are."""
    name = backend or "auto"
    name = _BACKEND_RUNTIMES.get(name, name)
    if name not in RUNTIME_NAMES:
        raise ConfigError(f"backend must be one of {', '.join(sorted({*BACKENDS, *RUNTIME_NAMES}))}, got {backend!r}")
    return name


def load_backend(
    weights: str | os.PathLike[str], *, backend: str | None = "auto", device: str = "auto",
    model_name: str | None = None, model_options: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None, runtime: str | None = None,
) -> Backend:
    """Load ``weights`` (weights: a file, URL or tag; or an exported model: ONNX, ``.pt2``) for serving.

    ``backend``: ``"auto"`` (weights on the fast path, an export on its own runtime), ``"torch"`` (the fast
    path: CPU, folded BN and fused kernels; CUDA, bf16) or ``"onnxruntime"`` (an ONNX file as it is, or the
    weights exported to ONNX first into ``workdir``, default a temporary folder, checked against PyTorch, the
    plain model kept for Grad-CAM). ``runtime``, when given, names the runtime exactly as
    :data:`xception.inference.RUNTIMES` does (``"torch"`` there is the plain model) and wins over ``backend``.
    """
    chosen = runtime if runtime is not None else runtime_of(backend)
    runner = open_model(weights, runtime=chosen, device=device, model_name=model_name, model_options=model_options,
                        weights_runtime="fast", workdir=workdir)
    return Backend(runner)

"""What answers ``/predict``: the fast PyTorch path (``xception.optimize``) or ONNX Runtime on an export.

A backend turns a preprocessed batch into float32 logits on the CPU and says what its outputs mean (class
names) and what its inputs must be (preprocessing). ``model`` is the plain PyTorch network when there is
one: ``/explain`` (Grad-CAM) needs its gradients, which neither fast path keeps.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..models import Xception
from ..preprocessing import Preprocessing

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime")


@dataclass
class Backend:
    """A loaded model ready to serve. ``run(batch)`` → (N, classes) float32 logits on the CPU."""

    name: str
    model_name: str
    class_names: list[str]
    preprocessing: Preprocessing
    runner: Any
    device: torch.device
    model: Xception | None = None
    details: Mapping[str, Any] | None = None

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        out = self.runner(batch.to(self.device) if self.name == "torch" else batch)
        return out.float().cpu()

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once (the first calls pack weights, pick kernels, allocate)."""
        pre = self.preprocessing
        for n in batch_sizes:
            self.run(torch.zeros(n, pre.channels, pre.input_size, pre.input_size))

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "model": self.model_name, "device": str(self.device),
                "classes": len(self.class_names), "input_size": self.preprocessing.input_size,
                "explain": self.model is not None, **dict(self.details or {})}


def load_backend(
    weights: str | os.PathLike[str], *, backend: str = "torch", device: str = "auto", model_name: str | None = None,
    model_options: Mapping[str, Any] | None = None, workdir: str | os.PathLike[str] | None = None,
) -> Backend:
    """Load ``weights`` (a weights file, URL or tag; or an exported ``.onnx`` file) for serving.

    ``backend="torch"``: ``xception.optimize`` (CPU: folded BN and fused kernels; CUDA: bf16). ``"onnxruntime"``:
    an ``.onnx`` file as it is, or the weights exported to ONNX first (into ``workdir``, default a temporary
    folder; checked against PyTorch), with the plain model kept for Grad-CAM.
    """
    from ..api import create_model, inference_preprocessing
    from ..export import export_model, load_onnx
    from ..fast import optimize
    from ..runtime import resolve_device

    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    dev = resolve_device(device)
    is_onnx = Path(os.fspath(weights)).suffix.lower() == ".onnx"
    if is_onnx:
        if backend != "onnxruntime":
            raise ConfigError(f"{weights} is an ONNX file: serve it with the onnxruntime backend "
                              "(--backend onnxruntime), or give the weights it was exported from")
        onnx = load_onnx(weights, device=dev)
        name = onnx.config.arch if onnx.config is not None else Path(os.fspath(weights)).stem
        return Backend("onnxruntime", name, onnx.names(), onnx.inference_preprocessing(), onnx,
                       torch.device("cpu"), None, {"provider": onnx.provider})

    model = create_model(model_name, weights=weights, **dict(model_options or {}))
    if model.features_only or model.config.num_classes == 0:
        raise ConfigError("serving needs a classifier: these weights have no classification head")
    model = model.to(dev).eval()
    preprocessing = inference_preprocessing(model)
    names = model.class_names or [str(i) for i in range(model.config.num_classes)]
    arch = model.weights_meta.model if model.weights_meta is not None else model.config.arch
    if backend == "torch":
        # optimize() deep-copies the model, and the weights' metadata holds a mapping proxy, which cannot be
        # copied; the fast copy needs none of it.
        meta, model.weights_meta = model.weights_meta, None
        try:
            fast = optimize(model, device=dev)
        finally:
            model.weights_meta = meta
        return Backend("torch", arch, names, preprocessing, fast, dev, model,
                       {"kernels": fast.settings.get("kernels")})
    folder = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="xception-serve-"))
    path = folder / "model.onnx"
    log.info("exporting the model to %s for ONNX Runtime", path)
    # Requests are always preprocessed to the input size: a fixed size makes the simplest graph.
    export_model(model.cpu(), path, input_size=preprocessing.input_size, dynamic_spatial=False)
    model = model.to(dev)
    onnx = load_onnx(path, device=dev)
    return Backend("onnxruntime", arch, names, preprocessing, onnx, torch.device("cpu"), model,
                   {"provider": onnx.provider, "onnx": str(path)})

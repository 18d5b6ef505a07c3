"""PyTorch runtimes: the plain model (``torch``) and the fast path of :func:`xception.optimize` (``fast``).

Both start from weights in any format the weights layer reads, and keep the plain model for Grad-CAM.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError, model_option
from ..models import Xception
from .base import OpenRequest, Runner


def load_classifier(request: OpenRequest) -> Xception:
    """The weights of ``request`` as a plain model in eval mode, on the CPU; refused without a classifier."""
    from ..api import create_model

    model = create_model(request.model_name, weights=request.source, **dict(request.model_options))
    if model.features_only or model.config.num_classes == 0:
        raise ConfigError(f"{request.source} has no classification head to run: load it with its classifier "
                          f"(drop {model_option('num_classes', 0)})")
    return model.eval()


def classifier_facts(model: Xception) -> dict[str, Any]:
    """What a runner says about a model from weights: its name, class names and count, the preprocessing
    they carry and its config."""
    from ..api import inference_preprocessing

    arch = model.weights_meta.model if model.weights_meta is not None else model.config.arch
    return {"model_name": arch, "class_names": model.class_names, "num_classes": model.config.num_classes,
            "preprocessing": inference_preprocessing(model), "config": model.config}


def torch_kernels(device: torch.device) -> str:
    """What PyTorch's eager convolutions run on: oneDNN on a CPU, cuDNN on CUDA."""
    return f"PyTorch ops ({'cuDNN' if device.type == 'cuda' else 'oneDNN'})"


def _dtype_name(module: torch.nn.Module) -> str:
    param = next(module.parameters(), None)
    return str(param.dtype if param is not None else torch.float32).removeprefix("torch.")


class TorchRunner(Runner):
    """The plain PyTorch model, eager, in the weights' own precision."""

    name = "torch"

    @classmethod
    def open(cls, request: OpenRequest) -> TorchRunner:
        model = load_classifier(request).to(request.device)
        return cls(source=request.source, device=request.device, model=model, **classifier_facts(model))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        assert self.model is not None
        return self.model(batch.to(self.device))

    def details(self) -> dict[str, Any]:
        assert self.model is not None
        return {"precision": _dtype_name(self.model), "kernels": torch_kernels(self.device)}


class FastRunner(Runner):
    """:func:`xception.optimize`: folded BatchNorm and fused kernels; float32 on a CPU, bfloat16 on CUDA.
    Its options are :func:`~xception.optimize`'s keyword arguments (``dtype``, ``compile``, ``batch_size``, …)."""

    name = "fast"
    option_names = ("dtype", "channels_last", "compile", "cuda_graphs", "batch_size", "input_size", "kernels",
                    "keep_memory")

    def __init__(self, *, fast: torch.nn.Module, **facts: Any) -> None:
        super().__init__(**facts)
        self.fast = fast

    @classmethod
    def open(cls, request: OpenRequest) -> FastRunner:
        from ..fast import optimize

        model = load_classifier(request).to(request.device)
        # optimize() deep-copies the model, and the weights' metadata holds a mapping proxy, which cannot be
        # copied; the fast copy needs none of it.
        meta, model.weights_meta = model.weights_meta, None
        try:
            fast = optimize(model, device=request.device, **dict(request.options))
        finally:
            model.weights_meta = meta
        return cls(fast=fast, source=request.source, device=request.device, model=model, **classifier_facts(model))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.fast(batch)

    def details(self) -> dict[str, Any]:
        settings = getattr(self.fast, "settings", {})
        return {"precision": settings.get("dtype"), "kernels": settings.get("kernels")}


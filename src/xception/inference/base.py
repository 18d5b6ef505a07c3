"""The one interface every runtime implements: a model opened from a file, ready to classify batches.

A :class:`Runner` knows what its outputs mean (``class_names``) and what its inputs must be
(``preprocessing``); ``run(batch)`` turns a preprocessed batch into float32 logits on the CPU, whatever
runs it. ``forward(batch)`` is the same call without the copy to the CPU (the output stays where the
runtime put it, in its own dtype), for callers that time the runtime itself. ``model`` is the plain PyTorch
network when there is one: Grad-CAM needs its gradients, which no other runtime keeps.

A new runtime is one subclass and one entry in :data:`xception.inference.RUNTIMES`: ``name``, the file
kind it runs as it is (``native_kind``, e.g. ``"onnx"``), whether it can also start from weights
(``from_weights``), the options it takes (``option_names``: threads, precision, …) and ``open``. A benchmark
(``xception bench``) opens its contenders the same way, so a runtime added here can be measured there.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..models import Xception, XceptionConfig
from ..preprocessing import Preprocessing
from .formats import Kind


@dataclass(frozen=True)
class OpenRequest:
    """What :func:`~xception.inference.open_model` was asked, for a runtime's ``open``.

    ``source``: the path, tag or URL as given; ``kind``: what :func:`~xception.inference.sniff` found;
    ``model_name`` and ``model_options``: for weights (a bare state dict needs the name);
    ``workdir``: where a runtime that exports weights first writes the file (default: a temporary folder);
    ``options``: the runtime's own settings (threads, precision, …), of the names its ``option_names`` lists.
    """

    source: str
    kind: Kind
    device: torch.device
    model_name: str | None = None
    model_options: Mapping[str, Any] = field(default_factory=dict)
    workdir: str | os.PathLike[str] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)


class Runner(ABC):
    """A model ready to classify: ``run(batch)`` → (N, classes) float32 logits on the CPU."""

    name: ClassVar[str]  # the runtime, as RUNTIMES and --runtime name it
    native_kind: ClassVar[str | None] = None  # the exported file it runs as it is, if any
    from_weights: ClassVar[bool] = True  # it can start from weights (exporting them first if it must)
    option_names: ClassVar[tuple[str, ...]] = ()  # the runtime options ``open`` reads from ``request.options``

    def __init__(self, *, source: str, model_name: str, class_names: Sequence[str] | None, num_classes: int,
                 preprocessing: Preprocessing, device: torch.device, model: Xception | None = None,
                 config: XceptionConfig | None = None) -> None:
        self.source = source
        self.config = config  # the model's config, when the weights or the export's metadata give it
        self.model_name = model_name
        # Class indices as text when the file names no classes; ``named_classes`` says which it is.
        self.named_classes = bool(class_names)
        self.class_names = [str(n) for n in class_names] if class_names else [str(i) for i in range(num_classes)]
        self.preprocessing = preprocessing
        self.device = device  # where inputs are best placed
        self.model = model

    @classmethod
    @abstractmethod
    def open(cls, request: OpenRequest) -> Runner:
        """Open ``request.source`` (of ``request.kind``, one this runtime accepts) on ``request.device``."""

    @abstractmethod
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The runtime's raw output for ``batch`` (N, C, H, W): logits, on the runtime's device and dtype."""

    def details(self) -> dict[str, Any]:
        """The runtime's own facts for :meth:`describe`: precision and kernels or provider."""
        return {}

    def run(self, batch: torch.Tensor) -> torch.Tensor:
        """(N, classes) float32 logits on the CPU for a preprocessed batch (N, C, H, W)."""
        with torch.inference_mode():
            return self.forward(batch).float().cpu()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.run(batch)

    @property
    def can_explain(self) -> bool:
        return self.model is not None

    def example_batch(self, n: int = 1) -> torch.Tensor:
        """Zeros shaped like a preprocessed batch of ``n`` images, on the device inputs go to."""
        pre = self.preprocessing
        return torch.zeros(n, pre.channels, pre.input_size, pre.input_size, device=self.device)

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once (the first calls pack weights, pick kernels, allocate)."""
        for n in batch_sizes:
            self.run(self.example_batch(n))

    def describe(self) -> dict[str, Any]:
        """What runs: runtime, model, device, precision, kernels or provider, classes, input size, explain."""
        return {"runtime": self.name, "model": self.model_name, "device": str(self.device),
                "classes": len(self.class_names), "input_size": self.preprocessing.input_size,
                "explain": self.can_explain, **self.details()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source!r}, {self.describe()})"

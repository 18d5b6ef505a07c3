"""The networks every contender starts from, and the float32 outputs each contender is checked against.

Every contender copies one of two networks, ``"ours"`` (the config's model) or ``"timm"`` (timm's
``legacy_xception``), built once with seeded weights and BatchNorm statistics calibrated on random images
(so that folding them is not trivial). An inference contender's output is compared with the float32
eager output of its network: ``max_rel_err`` = max |Δ| / max |reference|.

The files the contenders open through the inference layer are made here too, each once: our network's
weights (:meth:`Models.weights_file`), either network's ONNX export (:func:`xception.export.onnx_proto`, with
the ``xception`` metadata), and the int8 files of our network (:meth:`Models.int8_files`), quantised from
the run's calibration images (:meth:`Models.calibration_images`), which every int8 contender calibrates on.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from ..preprocessing import Preprocessing
    from ..quantize import QuantizeResult
    from .config import BenchConfig

TIMM_MODEL = "legacy_xception"
NETWORKS = ("ours", "timm")
CALIBRATION_SEED = 2  # the timed batch is seed 0 and the BatchNorm statistics' images seed 1: none overlap
INT8_METHOD = "minmax"  # the whole observed range, as NNCF's and PT2E's observers take it by default


@dataclass(frozen=True)
class Int8Files:
    """Our network quantised by :func:`xception.quantize`: the int8 file, its QDQ ONNX model, the result."""

    int8: Path
    qdq: Path
    seconds: float
    result: QuantizeResult

    def details(self, qdq: bool = False) -> dict[str, Any]:
        """What the row's model is; ``qdq``: the QDQ model's (always 8-bit activations: ONNX has no 7-bit type)."""
        report = self.result.report
        return {"quantize_s": round(self.seconds, 2),
                "calibration": {"method": report.method, "images": report.calibration["images"]},
                "weight_bits": report.weight_bits, "activation_bits": 8 if qdq else report.activation_bits}


def build_ours(cfg: BenchConfig) -> nn.Module:
    """The config's model, as the library builds it, in eval mode."""
    from ..models import build_model

    return build_model(cfg.model, **cfg.model_options).eval()


def build_timm() -> nn.Module:
    """timm's ``legacy_xception`` (random weights), the network ours is measured against."""
    import timm

    return timm.create_model(TIMM_MODEL, pretrained=False).eval()


def calibrate_batch_norms(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Give every BatchNorm the statistics of ``x``'s activations, as training would (one pass).

    Freshly initialised BatchNorms are identities (mean 0, variance 1), which makes folding them trivial
    and lets activations drift in scale layer after layer; real statistics make the output checks mean
    what they would on a trained network.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average: one pass sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    return model.eval()


def relative_error(output: Any, reference: torch.Tensor) -> float:
    """max |output − reference| / max |reference| (outputs may be tensors, or a runtime's arrays)."""
    if isinstance(output, (list, tuple)):
        output = output[0]
    elif isinstance(output, Mapping):  # OpenVINO's results, keyed by output port
        output = next(iter(output.values()))
    out = torch.as_tensor(output).detach().float().cpu()
    return ((out - reference).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def flops_per_image(cfg: BenchConfig) -> int:
    """2 × multiply-adds of one forward pass (convs and the classifier), from the cost accounting."""
    from ..analysis import model_cost

    return 2 * model_cost(build_ours(cfg), cfg.input_size).macs


class Models:
    """The shared networks of one run: built once, handed out as fresh copies; their references and
    ONNX exports are computed on first use and kept."""

    def __init__(self, cfg: BenchConfig, workdir: Path) -> None:
        self.cfg = cfg
        self.workdir = workdir
        self._built: dict[str, nn.Module] = {}
        self._reference: dict[str, torch.Tensor] = {}
        self._onnx: dict[str, tuple[Path, float]] = {}
        self._weights: Path | None = None
        self._int8: Int8Files | None = None

    def get(self, which: str) -> nn.Module:
        """A fresh copy of ``"ours"`` or ``"timm"``."""
        if which not in self._built:
            torch.manual_seed(0)
            model = build_ours(self.cfg) if which == "ours" else build_timm()
            size = self.cfg.input_size
            calib = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
            self._built[which] = calibrate_batch_norms(model, calib)
        return copy.deepcopy(self._built[which])

    def reference(self, which: str, x: torch.Tensor) -> torch.Tensor:
        """The float32 eager output of ``which`` on ``x`` (computed once, in chunks, on x's device)."""
        if which not in self._reference:
            model = self.get(which).to(x.device)
            with torch.inference_mode():
                out = torch.cat([model(chunk).float() for chunk in x.split(64)])
            self._reference[which] = out.cpu()
            del model
        return self._reference[which]

    def preprocessing(self) -> Preprocessing:
        """What the files say the inputs are: [-1, 1] scaling at the run's image size (the inputs are random)."""
        from ..preprocessing import Preprocessing

        return Preprocessing.centred(3, self.cfg.input_size)

    def weights_file(self) -> Path:
        """Our network's weights, in our safetensors format (its config and preprocessing inside), made once."""
        if self._weights is None:
            from ..weights import save_weights

            path = self.workdir / "ours.safetensors"
            save_weights(self.get("ours"), path, model_name=self.cfg.model, preprocessing=self.preprocessing())
            self._weights = path
        return self._weights

    def onnx_file(self, which: str) -> tuple[Path, float]:
        """(``which`` exported to ONNX, float32, dynamic batch, with the ``xception`` metadata; seconds the
        export took), made once."""
        if which not in self._onnx:
            import onnx

            from ..export import METADATA_KEY, metadata_json, onnx_proto

            size = self.cfg.input_size
            start = time.perf_counter()
            if which == "ours":  # the model the weights file gives: its metadata is the file's
                from ..api import create_model

                model = create_model(weights=self.weights_file())
                metadata = metadata_json(model)
            else:
                model, metadata = self.get(which), json.dumps({"preprocessing": self.preprocessing().to_dict()})
            # torch.export wants an example batch of at least 2 for a dynamic batch dimension.
            proto = onnx_proto(model.float().cpu().eval(), torch.zeros(2, 3, size, size))
            entry = proto.metadata_props.add()
            entry.key, entry.value = METADATA_KEY, metadata
            path = self.workdir / f"{which}.onnx"
            onnx.save(proto, str(path))
            self._onnx[which] = path, time.perf_counter() - start
        return self._onnx[which]

    def calibration_images(self) -> torch.Tensor:
        """The images every int8 contender is calibrated on: ``cfg.calibration_images`` random images of the
        run's size, the same every run (never the timed batch)."""
        n, size = self.cfg.calibration_images, self.cfg.input_size
        return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(CALIBRATION_SEED))

    def int8_files(self) -> Int8Files:
        """Our network's weights quantised by :func:`xception.quantize` on the calibration images (their float32
        top-1 stands in for the labels its held-out check needs): the int8 file and the QDQ ONNX model, once."""
        if self._int8 is None:
            from ..quantize import quantize

            images = self.calibration_images()
            with torch.inference_mode():
                labels = self.get("ours")(images).argmax(1)
            out, onnx = self.workdir / "ours.int8.safetensors", self.workdir / "ours.int8.onnx"
            start = time.perf_counter()
            common = {"held_out": (images, labels), "images": len(images), "methods": [INT8_METHOD],
                      "weight_bits": self.cfg.weight_bits}
            seven = self.cfg.activation_bits != 8
            result = quantize(self.weights_file(), images, out=out, onnx=None if seven else onnx,
                              activation_bits=self.cfg.activation_bits, **common)
            if seven:  # the ONNX contenders' QDQ model: the same calibration with 8-bit activations
                quantize(self.weights_file(), images, onnx=onnx, **common)
            self._int8 = Int8Files(out, onnx, time.perf_counter() - start, result)
        return self._int8

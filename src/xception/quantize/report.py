"""How far an int8 model is from float32 on held-out labelled images, per calibration method and for the file.

Figures per model: top-1 against the labels, the share of images whose top-1 is float32's, the number of
predictions that changed, and the largest logit difference, absolute and relative to the largest float32
logit (in magnitude) over the same images.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..errors import DataError
from ..fileio import atomic_write
from ..tables import format_table, plural


@dataclass(frozen=True)
class Agreement:
    """One model's logits against reference logits (float32's, or the int8 reference's for the ONNX file)."""

    method: str  # the calibration method (or what else is compared)
    images: int
    top1: float  # against the labels, %
    agreement: float  # images with the reference's top-1, %
    changed: int  # images whose top-1 differs from the reference's
    max_logit_diff: float
    max_logit_diff_rel: float  # max |Δ| / max |reference logit|
    mean_logit_diff: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Tally:
    """Accumulates one model's logits against the reference's, batch by batch."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.images = self.correct = self.same = 0
        self.max_diff = self.peak = self.diff_sum = 0.0
        self.values = 0

    def add(self, reference: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor | None) -> None:
        reference, logits = reference.float(), logits.float()
        if reference.shape != logits.shape:
            raise RuntimeError(f"{self.name}: logits shaped {tuple(logits.shape)}, not {tuple(reference.shape)}")
        top = logits.argmax(1)
        if labels is not None:
            if int(labels.max()) >= logits.shape[1]:
                raise DataError(f"held-out labels reach class {int(labels.max())}, and the model has "
                                f"{logits.shape[1]} classes: give images of the model's own classes")
            self.correct += int((top == labels).sum())
        self.same += int((top == reference.argmax(1)).sum())
        diff = (logits - reference).abs()
        self.max_diff = max(self.max_diff, float(diff.max()))
        self.peak = max(self.peak, float(reference.abs().max()))
        self.diff_sum += float(diff.double().sum())
        self.values += diff.numel()
        self.images += len(logits)

    def result(self) -> Agreement:
        n = max(self.images, 1)
        return Agreement(
            method=self.name, images=self.images, top1=100.0 * self.correct / n, agreement=100.0 * self.same / n,
            changed=self.images - self.same, max_logit_diff=self.max_diff,
            max_logit_diff_rel=self.max_diff / self.peak if self.peak > 0 else 0.0,
            mean_logit_diff=self.diff_sum / max(self.values, 1),
        )


def best(results: list[Agreement]) -> Agreement:
    """The method whose predictions agree best with float32; ties go to the smaller mean logit difference,
    then to the earlier method."""
    return min(results, key=lambda r: (-r.agreement, r.mean_logit_diff))


@dataclass
class QuantizeReport:
    """What :func:`xception.quantize` did and measured; ``to_dict()`` is the JSON report."""

    model: str
    weights: str
    calibration: dict[str, Any]
    held_out: dict[str, Any]
    fp32_top1: float
    method: str
    methods: list[Agreement]
    onnx: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    weight_bits: int = 8
    activation_bits: int = 8

    @property
    def chosen(self) -> Agreement:
        return next(r for r in self.methods if r.method == self.method)

    def summary(self) -> dict[str, Any]:
        """The chosen method's figures: what the int8 file's header records."""
        c = self.chosen
        return {"method": self.method, "held_out_images": c.images, "fp32_top1": self.fp32_top1, "int8_top1": c.top1,
                "agreement": c.agreement, "changed": c.changed, "max_logit_diff_rel": c.max_logit_diff_rel}

    def to_dict(self) -> dict[str, Any]:
        c = self.chosen
        return {
            "model": self.model, "weights": self.weights, "calibration": self.calibration, "held_out": self.held_out,
            "fp32_top1": self.fp32_top1, "int8_top1": c.top1, "changed": c.changed, "agreement": c.agreement,
            "max_logit_diff": c.max_logit_diff, "max_logit_diff_rel": c.max_logit_diff_rel, "method": self.method,
            "methods": [r.to_dict() for r in self.methods], "onnx": self.onnx, "files": self.files,
            "weight_bits": self.weight_bits, "activation_bits": self.activation_bits,
        }

    def format(self) -> str:
        c = self.chosen
        rows = [[r.method + (" (chosen)" if r.method == self.method else ""), f"{r.top1:.2f} %", f"{r.agreement:.2f} %",
                 r.changed, f"{100 * r.max_logit_diff_rel:.2f} %"] for r in self.methods]
        lines = [
            f"int8 {self.model} ({self.weight_bits}-bit weights, {self.activation_bits}-bit activations): calibrated "
            f"on {self.calibration['description']}, checked on "
            f"{plural(c.images, 'held-out image')} ({self.held_out['description']})",
            format_table(rows, ["calibration", "top-1", "same top-1 as fp32", "changed", "max |Δlogit| / max |logit|"]),
            f"fp32 top-1 {self.fp32_top1:.2f} %, int8 top-1 {c.top1:.2f} % ({self.method}, the best agreement with "
            f"fp32): {plural(c.changed, 'prediction')} changed, largest logit difference {c.max_logit_diff:.4g} "
            f"({100 * c.max_logit_diff_rel:.2f} % of the largest logit)",
        ]
        if self.onnx is not None:
            lines += _onnx_lines(self.onnx)
        if self.files:
            lines.append("wrote " + ", ".join(self.files.values()))
        return "\n".join(lines)


_ONNX_MODES = {"int8_kernels": "its int8 kernels", "qdq_in_float": "Q/DQ computed as written (optimisations off)"}


def _onnx_lines(onnx: dict[str, Any]) -> list[str]:
    lines = []
    for mode, run in onnx["runs"].items():
        tolerance = onnx["tolerance_rel"][mode]
        verdict = "within" if run["within_tolerance"] else "OUTSIDE"
        lines.append(
            f"ONNX Runtime, {_ONNX_MODES.get(mode, mode)}: top-1 {run['top1']:.2f} %, same top-1 as the int8 "
            f"reference on {run['agreement_with_reference']:.2f} % ({plural(run['changed_vs_reference'], 'image')} "
            f"differ), largest logit difference {100 * run['max_logit_diff_rel_vs_reference']:.2f} % of the largest "
            f"logit: {verdict} the tolerance ({100 * tolerance:.0f} %, ≥ {onnx['min_agreement']:.0f} % same top-1)")
    return lines


def write_report(report: QuantizeReport, path: str | os.PathLike[str]) -> None:
    """The JSON report, written atomically."""
    text = json.dumps(report.to_dict(), indent=2, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))

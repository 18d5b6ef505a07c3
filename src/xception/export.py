"""Export a model for serving: ONNX (any runtime) or a ``torch.export`` program (``.pt2``).

Both are traced with ``torch.export`` at the model's input size with a dynamic batch dimension. The ONNX
file carries the weights' metadata (class names, preprocessing) in its ``metadata_props`` under the key
``xception``, so a serving process needs nothing else. :func:`verify_onnx` runs the exported graph with
onnxruntime and reports the largest difference from PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .fileio import atomic_write
from .models import Xception

ExportFormat = Literal["onnx", "pt2"]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[int, int, int, int]
    max_abs_diff: float | None = None  # onnxruntime against PyTorch, when verified

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "format": self.format, "input_shape": list(self.input_shape),
                "max_abs_diff": self.max_abs_diff}


def example_input(model: Xception, input_size: int | None = None, batch: int = 2) -> torch.Tensor:
    """A random batch shaped like the model's inputs (size from its preprocessing, else 299 or the minimum)."""
    if input_size is None:
        if model.preprocessing is not None:
            input_size = model.preprocessing.input_size
        else:
            input_size = 299 if model.config.stem == "standard" else max(model.config.min_input_size, 28)
    x = torch.randn(batch, model.config.in_chans, input_size, input_size, generator=torch.Generator().manual_seed(0))
    model.check_input(x)
    return x


def metadata_json(model: Xception) -> str:
    return json.dumps({
        "model": model.config.to_dict(),
        "class_names": model.class_names,
        "preprocessing": model.preprocessing.to_dict() if model.preprocessing else None,
    })


def _dynamic_batch() -> tuple[dict[int, Any], ...]:
    """The one input's first dimension (the batch) left free: 1 to 4096."""
    return ({0: torch.export.Dim("batch", min=1, max=4096)},)


def _require(module: str, extra: str = "export") -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ValueError(f"exporting needs the '{module}' package: pip install 'xception[{extra}]'") from err


def export_model(
    model: Xception, path: str | os.PathLike[str], *, format: ExportFormat | None = None,
    input_size: int | None = None, verify: bool = True,
) -> ExportResult:
    """Write ``model`` (eval mode, dynamic batch) to ``path`` as ONNX or a torch.export program."""
    path = Path(path)
    fmt = format or {".onnx": "onnx", ".pt2": "pt2"}.get(path.suffix)
    if fmt not in ("onnx", "pt2"):
        raise ValueError(f"cannot tell the export format from {path.name!r}: use a .onnx or .pt2 name, or --format")
    if model.features_only:
        raise ValueError("export a classifier or a num_classes=0 model, not a features_only backbone")
    model = model.eval()
    x = example_input(model, input_size)
    if fmt == "pt2":
        program = torch.export.export(model, (x,), dynamic_shapes=_dynamic_batch())
        atomic_write(path, lambda tmp: torch.export.save(program, tmp))
        return ExportResult(path, fmt, tuple(x.shape))

    proto = onnx_proto(model, x)
    import onnx

    entry = proto.metadata_props.add()
    entry.key, entry.value = "xception", metadata_json(model)
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
    diff = verify_onnx(model, path, x) if verify else None
    return ExportResult(path, fmt, tuple(x.shape), diff)


def onnx_proto(model: nn.Module, x: torch.Tensor) -> Any:
    """``model`` traced on ``x`` by ``torch.export`` as an ONNX ``ModelProto`` (dynamic batch, input
    ``images``, output ``outputs``), without metadata: any module, not only ours (the benchmark exports
    timm's network with it too)."""
    _require("onnx")
    _require("onnxscript")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every step
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=_dynamic_batch(),
                                    input_names=["images"], output_names=["outputs"], verbose=False)
    return program.model_proto


def verify_onnx(model: Xception, path: str | os.PathLike[str], x: torch.Tensor) -> float | None:
    """Largest |onnxruntime − PyTorch| on ``x`` (None when onnxruntime is not installed)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    with torch.no_grad():
        want = model(x)
    return float((got - want).abs().max())

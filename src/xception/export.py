"""Export a model for serving: ONNX (any runtime) or a ``torch.export`` program (``.pt2``), and run ONNX files.

Both formats are traced by ``torch.export`` with a dynamic batch and, where the model allows it, a dynamic
height and width: one file takes any batch of any image size from ``min_size`` up. The graph's input is
``images`` (N, C, H, W) and its output ``logits`` (N, classes). The ONNX file carries the weights' metadata
(class names, preprocessing, the model config and the input's dynamic axes) in its ``metadata_props``
under the key ``xception``, and a ``.pt2`` file the same JSON as its extra file ``xception.json``, so a
serving process needs nothing else.

At export time the file is run at two batch sizes and two image sizes (ONNX Runtime for ``.onnx``, the
loaded program for ``.pt2``) and compared with PyTorch; a file that disagrees is not written.
:class:`OnnxModel` (:func:`load_onnx`) runs an exported file with ONNX Runtime, for the inference layer
(:mod:`xception.inference`), which also loads ``.pt2`` files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError, MissingPathError, WeightsError, hint, model_option
from .fileio import atomic_write
from .layers import TFSamePad2d
from .models import Xception, XceptionConfig
from .preprocessing import Preprocessing

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "pt2"]
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
METADATA_KEY = "xception"
PROGRAM_METADATA = "xception.json"  # the extra file of a .pt2 archive that holds it
MAX_BATCH = 4096
MAX_SIZE = 4096


@dataclass(frozen=True)
class ExportResult:
    """What was written: the traced shape, the axes left free, and how far the file is from PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int, int, int, int]
    max_abs_diff: float | None = None  # the file against PyTorch over checked_shapes, when verified
    dynamic_spatial: bool = False  # height and width are free (from min_size up), not only the batch
    min_size: int | None = None
    checked_shapes: tuple[tuple[int, ...], ...] = ()
    note: str = ""  # why the spatial size is fixed, when it is

    def to_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "format": self.format, "input_shape": list(self.input_shape),
                "max_abs_diff": self.max_abs_diff, "dynamic_batch": True, "dynamic_spatial": self.dynamic_spatial,
                "min_size": self.min_size, "checked_shapes": [list(s) for s in self.checked_shapes],
                "input": INPUT_NAME, "output": OUTPUT_NAME, "note": self.note}


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


def min_dynamic_size(config: XceptionConfig) -> int:
    """The smallest side a dynamic-size export accepts: the model's own minimum, and a last feature map of at
    least 2×2 (``torch.export`` treats dimensions of size 1 as a special case it cannot keep symbolic)."""
    return max(config.min_input_size, config.effective_output_stride + 1)


def metadata_json(model: Xception, *, dynamic_spatial: bool = False, min_size: int | None = None) -> str:
    return json.dumps({
        "model": model.config.to_dict(),
        "class_names": model.class_names,
        "preprocessing": model.preprocessing.to_dict() if model.preprocessing else None,
        "input": {"name": INPUT_NAME, "layout": "NCHW",
                  "dynamic": ["batch", "height", "width"] if dynamic_spatial else ["batch"], "min_size": min_size},
        "output": {"name": OUTPUT_NAME, "meaning": "logits (apply a softmax for probabilities)"},
    })


class TracedSamePad2d(nn.Module):
    """TF 'same' padding written without a branch, so that ``torch.export`` keeps it symbolic.

    :class:`~xception.layers.TFSamePad2d` tests whether any padding is needed and takes a ``max``; both
    depend on the input size, so a trace with a free height and width stops there. For a window at least
    as wide as its stride (every padded window here), the total padding is ``((size − 1) // stride) ·
    stride + span − size`` — never negative, the same numbers — and the padded size is then
    ``((size − 1) // stride) · stride + span``, in which the tracer can see that the window's output,
    ``(size − 1) // stride + 1``, equals that of a residual shortcut's strided 1×1 conv.
    """

    def __init__(self, pad: TFSamePad2d) -> None:
        super().__init__()
        self.kernel, self.stride, self.dilation, self.value = pad.kernel, pad.stride, pad.dilation, pad.value
        self.span = (pad.kernel - 1) * pad.dilation + 1

    def _total(self, size: Any) -> Any:
        return ((size - 1) // self.stride) * self.stride + self.span - size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        th, tw = self._total(x.shape[-2]), self._total(x.shape[-1])
        return F.pad(x, (tw // 2, tw - tw // 2, th // 2, th - th // 2), value=self.value)


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) whose TF-'same' pads trace symbolically; ``model`` is untouched."""
    # The weights' metadata is a frozen value (holding a mapping proxy, which deepcopy refuses): share it.
    meta = getattr(model, "weights_meta", None)
    copied = copy.deepcopy(model, memo={id(meta): meta} if meta is not None else None).eval()
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, TFSamePad2d) and (child.kernel - 1) * child.dilation + 1 >= child.stride:
                setattr(parent, name, TracedSamePad2d(child))
    return copied


def _dynamic_shapes(min_size: int | None) -> tuple[dict[int, Any], ...]:
    """The batch free (1 to 4096), and height and width too (min_size to 4096) when min_size is given."""
    axes: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}
    if min_size is not None:
        axes[2] = torch.export.Dim("height", min=min_size, max=MAX_SIZE)
        axes[3] = torch.export.Dim("width", min=min_size, max=MAX_SIZE)
    return (axes,)


def trace(
    model: nn.Module, x: torch.Tensor, *, min_size: int | None = None
) -> tuple[torch.export.ExportedProgram, str]:
    """``torch.export`` of ``model`` on ``x`` with a free batch and, given ``min_size``, a free height and
    width. Returns the program and, when the spatial size had to be fixed, why (else "")."""
    if min_size is not None:
        try:
            return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(min_size)), ""
        except Exception as err:  # any tracing failure falls back to the fixed size
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            note = (f"spatial size fixed at {x.shape[-2]}×{x.shape[-1]}: the model does not trace with a free "
                    f"size ({reason})")
            log.warning(note)
            return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(None)), note
    return torch.export.export(model, (x,), dynamic_shapes=_dynamic_shapes(None)), ""


def _require(module: str, extra: str = "export") -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise ConfigError(f"exporting needs the '{module}' package: pip install 'xception[{extra}]'") from err


def check_shapes(x: torch.Tensor, min_size: int | None) -> list[tuple[int, int, int, int]]:
    """The shapes an export is checked at: batches 1 and 3; with a free size, also an image one pixel taller
    (the other parity: TF pads change with it) and three pixels wider than the traced one."""
    _, c, h, w = x.shape
    if min_size is None:
        return [(1, c, h, w), (3, c, h, w)]
    return [(1, c, h, w), (3, c, h + 1, w + 3)]


def _compare(
    model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], shapes: Sequence[tuple[int, ...]]
) -> tuple[float, float]:
    """(largest |run − model|, largest |model|) over random inputs of ``shapes``."""
    generator = torch.Generator().manual_seed(1)
    diff = scale = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=generator)
        with torch.no_grad():
            want, got = model(x).float(), run(x).float()
        if got.shape != want.shape:
            raise RuntimeError(f"the exported graph returns shape {tuple(got.shape)} for input {shape}, PyTorch "
                               f"{tuple(want.shape)}")
        diff = max(diff, float((got - want).abs().max()))
        scale = max(scale, float(want.abs().max()))
    return diff, scale


def _check(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], shapes: Sequence[tuple[int, ...]],
           what: str) -> float:
    diff, scale = _compare(model, run, shapes)
    # float32 through ~40 layers: differences of a few 1e-6 relative are rounding; 1e-4 is a wrong graph.
    if diff > 1e-4 * max(1.0, scale):
        raise RuntimeError(f"{what} differs from PyTorch by {diff:.3g} (largest logit {scale:.3g}) at shapes "
                           f"{list(shapes)}; the file was not written. Export with a fixed size "
                           f"({hint('dynamic_spatial=False', '--fixed-size')}) or report the model options")
    return diff


def export_model(
    model: Xception, path: str | os.PathLike[str], *, format: ExportFormat | None = None,
    input_size: int | None = None, verify: bool = True, dynamic_spatial: bool = True,
) -> ExportResult:
    """Write ``model`` (eval mode) to ``path`` as ONNX or a torch.export program: any batch size and, where
    the model allows it and ``dynamic_spatial`` is on, any image size from ``min_dynamic_size`` up. With
    ``verify`` the file is checked against PyTorch (2 batch sizes × 2 image sizes) before it is written."""
    path = Path(path)
    fmt = format or {".onnx": "onnx", ".pt2": "pt2"}.get(path.suffix)
    if fmt not in ("onnx", "pt2"):
        raise ConfigError(f"cannot tell the export format from {path.name!r}: use a .onnx or .pt2 name, or "
                          + hint('format="onnx"', "--format onnx"))
    if model.features_only:
        raise ConfigError(f"export a classifier or a {model_option('num_classes', 0)} model, not a features_only "
                          "backbone")
    model = model.eval()
    x = example_input(model, input_size)
    min_size = min_dynamic_size(model.config) if dynamic_spatial else None
    if min_size is not None and min(x.shape[-2:]) < min_size:
        raise ConfigError(f"a model that takes any image size from {min_size} px up is traced at that size or "
                          f"larger, not {x.shape[-1]}; give a larger input size or a fixed size "
                          f"({hint('dynamic_spatial=False', '--fixed-size')})")
    program, note = trace(exportable(model), x, min_size=min_size)
    if note:
        min_size = None
    shapes = check_shapes(x, min_size)
    result = {"path": path, "format": fmt, "input_shape": tuple(x.shape), "dynamic_spatial": min_size is not None,
              "min_size": min_size, "note": note}

    metadata = metadata_json(model, dynamic_spatial=min_size is not None, min_size=min_size)
    if fmt == "pt2":
        diff = _check(model, program.module(), shapes, "the torch.export program") if verify else None
        buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not the temporary file
        torch.export.save(program, buffer, extra_files={PROGRAM_METADATA: metadata})
        atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
        return ExportResult(**result, max_abs_diff=diff, checked_shapes=tuple(shapes) if verify else ())

    proto = _to_onnx(program)
    import onnx

    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata
    outcome: dict[str, float | None] = {"diff": None}

    def write(tmp: Path) -> None:
        onnx.save(proto, str(tmp))
        if verify:  # checked before the rename: a wrong graph never takes the file's name
            outcome["diff"] = verify_onnx(model, tmp, x, shapes)

    atomic_write(path, write)
    checked = tuple(shapes) if outcome["diff"] is not None else ()
    return ExportResult(**result, max_abs_diff=outcome["diff"], checked_shapes=checked)


def _to_onnx(program: torch.export.ExportedProgram) -> Any:
    _require("onnx")
    _require("onnxscript")
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates every step
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=[INPUT_NAME],
                                         output_names=[OUTPUT_NAME], verbose=False)
    return onnx_program.model_proto


def onnx_proto(model: nn.Module, x: torch.Tensor, *, min_size: int | None = None) -> Any:
    """``model`` traced on ``x`` by ``torch.export`` as an ONNX ``ModelProto`` (dynamic batch, and dynamic
    height and width from ``min_size`` up when given; input ``images``, output ``logits``), without
    metadata: any module, not only ours (the benchmark exports timm's network with it too)."""
    _require("onnx")
    _require("onnxscript")
    program, _ = trace(exportable(model), x, min_size=min_size)
    return _to_onnx(program)


def verify_onnx(
    model: Xception, path: str | os.PathLike[str], x: torch.Tensor,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> float | None:
    """Largest |onnxruntime − PyTorch| on random inputs of ``shapes`` (default: ``x``'s); a RuntimeError
    if they disagree beyond rounding; None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: images.numpy()})[0])

    return _check(model, run, shapes or [tuple(x.shape)], "ONNX Runtime's output")


# -- running an exported file ------------------------------------------------------------------------------


@dataclass
class OnnxModel:
    """An exported ``.onnx`` file run by ONNX Runtime, with what its metadata says.

    ``model(images)`` takes a float batch (N, C, H, W) — a tensor on any device, or an array — and returns
    the logits as a CPU float32 tensor. ``class_names``, ``preprocessing`` and ``config`` come from the
    file's ``xception`` metadata (None when it was written by something else).
    """

    path: Path
    session: Any
    provider: str
    class_names: tuple[str, ...] | None = None
    preprocessing: Preprocessing | None = None
    config: XceptionConfig | None = None
    input_name: str = INPUT_NAME
    output_name: str = OUTPUT_NAME
    in_chans: int = 3
    num_classes: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)

    def __call__(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            images = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run([self.output_name], {self.input_name: images})[0])

    def inference_preprocessing(self) -> Preprocessing:
        """The preprocessing in the file's metadata; Keras's 299 px, [-1, 1] scaling (with a warning) if none."""
        if self.preprocessing is not None:
            return self.preprocessing
        log.warning("%s carries no preprocessing: using 299 px, [-1, 1] scaling", self.path.name)
        return Preprocessing.centred(self.in_chans)

    def names(self) -> list[str]:
        """Class names, or the class indices as text when the file has none."""
        return list(self.class_names) if self.class_names else [str(i) for i in range(self.num_classes)]


def parse_metadata(
    text: str | None, path: str | os.PathLike[str]
) -> tuple[dict[str, Any], Preprocessing | None, XceptionConfig | None]:
    """An export's ``xception`` metadata (ONNX ``metadata_props`` or a ``.pt2`` extra file): the JSON, its
    preprocessing and model config (each None when absent, e.g. for a file written by something else)."""
    try:
        meta = json.loads(text) if text else {}
        pre = meta.get("preprocessing")
        preprocessing = Preprocessing.from_dict(pre) if pre else None
        config = XceptionConfig.from_dict(meta["model"]) if meta.get("model") else None
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise WeightsError(f"{path} has unreadable xception metadata ({err}); export it again") from None
    return meta, preprocessing, config


def load_onnx(path: str | os.PathLike[str], *, device: str | torch.device = "cpu", threads: int | None = None,
              arena: bool = True) -> OnnxModel:
    """Open an exported ``.onnx`` file with ONNX Runtime (its CUDA provider for a CUDA device, when present),
    every graph optimisation on; ``threads``: intra-op threads (default: ONNX Runtime's), ``arena``: False for a
    session without a CPU memory arena (its working memory is freed after each call)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path} does not exist; export a model with 'xception export {path.name}'")
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ConfigError("running ONNX files needs onnxruntime: pip install 'xception[export]'") from err
    providers = ["CPUExecutionProvider"]
    if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.enable_cpu_mem_arena = arena
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ONNX Runtime raises its own types for unreadable files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise WeightsError(f"{path} is not an ONNX model ONNX Runtime can run ({first}); export one with "
                           "'xception export'") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise WeightsError(f"{path} does not take one batch of images (N, C, H, W): its inputs are "
                           f"{[(i.name, i.shape) for i in inputs]}")
    meta, preprocessing, config = parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
    names = meta.get("class_names")
    out_dim = outputs[0].shape[1] if len(outputs[0].shape) == 2 else None
    num_classes = out_dim if isinstance(out_dim, int) else (len(names) if names else 0)
    in_chans = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else 3
    return OnnxModel(
        path=path, session=session, provider=session.get_providers()[0],
        class_names=tuple(names) if names else None, preprocessing=preprocessing, config=config,
        input_name=inputs[0].name, output_name=outputs[0].name, in_chans=in_chans, num_classes=num_classes,
        metadata=meta,
    )

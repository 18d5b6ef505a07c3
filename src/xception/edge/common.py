"""What the ExecuTorch and LiteRT exports share: the formats, the packages, the model as the toolchains take it,
the metadata, PT2E calibration, and the checks against PyTorch.

Both exports are traced at one image per call (batch 1, the traced image size): what a phone runs. The
model is copied in eval mode with its BatchNorms folded into the convolutions first (exact up to
rounding), so that PT2E quantisation sees plain conv → ReLU graphs.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..errors import ConfigError, DataError, hint, model_option
from ..models import Xception
from ..preprocessing import Preprocessing

EdgeFormat = Literal["pte", "tflite"]
EDGE_FORMATS: dict[str, str] = {"pte": "ExecuTorch (XNNPACK)", "tflite": "LiteRT"}
SUFFIXES: dict[str, str] = {".pte": "pte", ".tflite": "tflite"}
PRECISIONS: tuple[str, ...] = ("fp32", "int8")
LAYOUTS: tuple[str, ...] = ("nhwc", "nchw")
# The ExecuTorch program's constant method, and the LiteRT model's metadata entry, that hold the JSON.
METADATA_NAME = "xception_metadata"
# float32 through ~40 layers on another runtime: a few 1e-6 of the largest logit is rounding; 1e-4 a wrong graph.
FP32_TOLERANCE = 1e-4
# What each format needs, to write it and to run it (module → its name on PyPI).
EXPORT_PACKAGES: dict[str, tuple[str, ...]] = {"pte": ("executorch",), "tflite": ("litert_torch", "ai_edge_litert")}
RUN_PACKAGES: dict[str, tuple[str, ...]] = {"pte": ("executorch",), "tflite": ("ai_edge_litert",)}
PIP_NAMES = {"executorch": "executorch", "litert_torch": "litert-torch", "ai_edge_litert": "ai-edge-litert"}

log = logging.getLogger(__name__)


def require(fmt: str, *, run: bool = False) -> None:
    """A one-line :class:`ConfigError` naming the package to install when ``fmt``'s toolchain is missing."""
    for module in (RUN_PACKAGES if run else EXPORT_PACKAGES)[fmt]:
        try:
            with native_output_hidden():  # what the packages log as they load
                importlib.import_module(module)
        except ImportError:
            what = "running" if run else "exporting to"
            raise ConfigError(f"{what} {EDGE_FORMATS[fmt]} needs the '{PIP_NAMES[module]}' package: "
                              "pip install 'xception[edge]'") from None


def edge_format(path: str | os.PathLike[str], format: str | None) -> EdgeFormat | None:
    """``"pte"`` or ``"tflite"`` from ``format`` or the file's suffix; None for any other format."""
    fmt = format or SUFFIXES.get(Path(path).suffix.lower())
    return fmt if fmt in EDGE_FORMATS else None  # type: ignore[return-value]


def check_options(fmt: str, precision: str, layout: str) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if fmt == "pte" and layout != "nchw":
        raise ConfigError(f"an ExecuTorch program takes NCHW input as the PyTorch model does: drop "
                          f"{hint('layout=' + repr(layout), '--layout ' + layout)}")


def edge_module(model: Xception) -> nn.Module:
    """A copy of ``model`` in eval mode as the toolchains take it: TF 'same' pads written without a branch,
    BatchNorms folded into the convolutions. Refuses what neither toolchain takes, in one line."""
    from ..export import exportable
    from ..fast.fold import fold_xception

    if model.features_only:
        raise ConfigError("ExecuTorch and LiteRT exports take one output, the logits: export a classifier or a "
                          f"{model_option('num_classes', 0)} model, not a features_only backbone")
    module = exportable(model)
    fold_xception(module)
    return module


def describe_model(model: Xception) -> str:
    """The model's name, with its dilation when it has one (what a toolchain is most likely to refuse)."""
    config = model.config
    options = [model_option("output_stride", config.output_stride)] if config.output_stride not in (None, 32) else []
    return config.arch + (f" ({', '.join(options)})" if options else "")


def toolchain_error(fmt: str, model: Xception, err: BaseException) -> ConfigError:
    """A conversion the toolchain refused, said in one line with what to do instead."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    reason = (lines[0] if lines else type(err).__name__)[:200]
    instead = hint("xception.export.export_model(model, 'model.onnx')", "xception export model.onnx")
    return ConfigError(f"{EDGE_FORMATS[fmt]} cannot convert {describe_model(model)} ({type(err).__name__}: "
                       f"{reason}); export it to ONNX instead ({instead})")


def metadata_text(model: Xception, pre: Preprocessing, *, fmt: str, precision: str, layout: str,
                  shape: tuple[int, ...], quantization: dict[str, Any] | None = None) -> str:
    """The JSON the file carries: the ONNX export's (model config, class names) with the preprocessing that
    makes images of the traced size, this file's input (layout, fixed shape, type), precision and
    quantisation."""
    from ..export import INPUT_NAME, metadata_json

    meta = json.loads(metadata_json(model))
    meta["preprocessing"] = pre.to_dict()
    meta["input"] = {"name": INPUT_NAME, "layout": layout.upper(), "shape": list(shape), "dynamic": [],
                     "dtype": "int8" if precision == "int8" and fmt == "tflite" else "float32"}
    meta["format"] = {"kind": fmt, "runtime": EDGE_FORMATS[fmt], "precision": "int8" if precision == "int8"
                      else "float32"}
    if quantization is not None:
        meta["quantization"] = quantization
    return json.dumps(meta)


def nhwc(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).contiguous()


def in_traced_batches(images: Any, step: int, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``run`` over an NCHW float batch of any size, ``step`` images (the traced batch) at a time, the last
    ones padded with zeros; float32 logits on the CPU."""
    images = torch.as_tensor(images).detach().to("cpu", torch.float32)
    outputs = []
    for i in range(0, len(images), step):
        chunk = images[i:i + step]
        short = step - len(chunk)
        if short:
            chunk = torch.cat([chunk, chunk.new_zeros(short, *chunk.shape[1:])])
        out = run(chunk.contiguous()).float()
        outputs.append(out[:len(out) - short])
    return torch.cat(outputs)


def pt2e_quantize(module: nn.Module, example: torch.Tensor, quantizer: Any, images: Iterable[torch.Tensor], *,
                  to_input: Callable[[torch.Tensor], torch.Tensor] = lambda x: x, fold: bool = True) -> nn.Module:
    """PT2E post-training static quantisation: ``module`` traced on ``example``, observers placed by
    ``quantizer``, calibrated on ``images`` (NCHW batches, fed one image at a time as traced; ``to_input``
    turns each into the traced layout), then converted to quantise/dequantise pairs."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    seen = 0
    with torch.no_grad():
        for batch in images:
            for image in batch.split(example.shape[0]):
                if len(image) == example.shape[0]:
                    prepared(to_input(image.float()))
                    seen += len(image)
    if not seen:
        raise DataError("no calibration image could be read: give a folder of images the model will see")
    log.info("calibrated on %d images", seen)
    converted = convert_pt2e(prepared, fold_quantize=fold)
    for sub in converted.modules():  # exported modules start in training mode; LiteRT warns about it
        sub.training = False
    return converted


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The toolchains' progress bars, warnings and native log lines hidden for the duration; what they wrote is
    logged at debug level when the conversion fails (which raises as usual)."""
    before = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        with warnings.catch_warnings(), native_output_hidden():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)
        if before is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = before


@contextlib.contextmanager
def native_output_hidden() -> Iterator[None]:
    """File descriptors 1 and 2 (where C++ code logs) sent to a temporary file for the duration."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    failed = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            for fd, saved_fd in zip((1, 2), saved, strict=True):
                os.dup2(saved_fd, fd)
                os.close(saved_fd)
            if failed:
                sink.seek(0)
                log.debug("the toolchain wrote:\n%s", sink.read()[-4000:].decode(errors="replace"))


# -- checks against PyTorch ---------------------------------------------------------------------------------


def check_fp32(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], what: str,
               *, images: int = 4) -> tuple[float, float]:
    """(largest |run − model|, that over the largest logit) on ``images`` random inputs of ``shape``; a
    one-line :class:`ConfigError` when it exceeds :data:`FP32_TOLERANCE` of the largest logit."""
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(images, *shape[1:], generator=generator)
    with torch.no_grad():
        want = model(x).float()
    got = run(x).float()
    if got.shape != want.shape:
        raise ConfigError(f"{what} returns logits shaped {tuple(got.shape)}, PyTorch {tuple(want.shape)}; the "
                          "file was not written: export it to ONNX instead")
    diff, scale = float((got - want).abs().max()), float(want.abs().max())
    if diff > FP32_TOLERANCE * scale:
        raise ConfigError(f"{what} differs from PyTorch by {diff:.3g} (largest logit {scale:.3g}, tolerance "
                          f"{FP32_TOLERANCE:g} of it) on {images} random images; the file was not written: export "
                          "it to ONNX instead, or report the model options")
    return diff, diff / scale if scale > 0 else 0.0


@dataclass(frozen=True)
class Int8Check:
    """An int8 file against float32 PyTorch on labelled held-out images."""

    held_out: str
    images: int
    fp32_top1: float  # %
    top1: float  # %
    agreement: float  # % of images with float32's top-1
    changed: int
    max_logit_diff_rel: float  # max |Δ| / max |float32 logit|

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def format(self) -> str:
        return (f"int8 top-1 {self.top1:.2f} % vs float32 {self.fp32_top1:.2f} % on {self.images} held-out images "
                f"({self.held_out}); same top-1 as float32 on {self.agreement:.2f} % ({self.changed} changed), "
                f"largest logit difference {self.max_logit_diff_rel:.3g} of the largest logit")


def check_int8(model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], held: Any) -> Int8Check:
    """``run`` (the int8 file on its runtime) and float32 ``model`` on the held-out ImageSet ``held``."""
    from ..quantize.report import Tally

    fp32, int8 = Tally("fp32"), Tally("int8")
    with torch.inference_mode():
        for x, y in held.batches():
            reference = model(x.float()).float()
            fp32.add(reference, reference, y)
            int8.add(reference, run(x.float()), y)
    if not fp32.images:
        raise DataError(f"no held-out image of {held.description} could be read")
    a, f = int8.result(), fp32.result()
    return Int8Check(held.description, a.images, f.top1, a.top1, a.agreement, a.changed, a.max_logit_diff_rel)


@dataclass(frozen=True)
class EdgeExportResult:
    """What was written: format, precision, input, size on disk, and how far the file is from PyTorch."""

    path: Path
    format: str
    precision: str
    layout: str
    input_shape: tuple[int, ...]
    size_bytes: int
    max_abs_diff: float | None = None  # float32 files: against PyTorch on random images
    max_rel_diff: float | None = None  # the same over the largest logit
    int8: Int8Check | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(path=str(self.path), input_shape=list(self.input_shape), runtime=EDGE_FORMATS[self.format],
                   int8=self.int8.to_dict() if self.int8 else None)
        return out

"""``export_edge()``: a model to an ExecuTorch ``.pte`` or a LiteRT ``.tflite`` file, float32 or int8, run by
its own runtime and checked against PyTorch before the file is written."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, XceptionError, hint
from ..fileio import atomic_write
from ..models import Xception
from ..preprocessing import Preprocessing
from . import pte, tflite
from .common import (
    EDGE_FORMATS,
    EdgeExportResult,
    check_fp32,
    check_int8,
    check_options,
    edge_format,
    edge_module,
    metadata_text,
    require,
    toolchain_error,
)

log = logging.getLogger(__name__)
QUANTIZATION = ("PT2E post-training static: weights int8 per output channel (symmetric), activations int8 per "
                "tensor (min/max of the calibration images)")


def calibration_sets(model: Xception, pre: Preprocessing, calibration: Any, held_out: Any, *, images: int,
                     held_out_images: int | None, batch_size: int, workers: int | None, seed: int,
                     data_dir: str | os.PathLike[str] | None) -> tuple[Any, Any]:
    """The calibration and labelled held-out images (:class:`xception.quantize.data.ImageSet`), read as
    ``xception quantize`` reads them: the same sources, defaults and held-out split."""
    from ..quantize.data import Reading, calibration_and_held_out

    reading = Reading(pre, batch_size, workers, data_dir, seed)
    return calibration_and_held_out(calibration, held_out, classes=model.class_names, images=images,
                                    held_out_images=held_out_images, reading=reading)


def _input(model: Xception, input_size: int | None, *, warn: bool = True) -> tuple[torch.Tensor, Preprocessing]:
    """One example image at the traced size, and the preprocessing that makes images of that size (the
    weights', else [-1, 1] scaling, said in the log when ``warn``)."""
    from ..export import example_input

    x = example_input(model, input_size, batch=1)
    size = int(x.shape[-1])
    if model.preprocessing is None:
        if warn:
            log.warning("the weights carry no preprocessing: the file says %d px, [-1, 1] scaling", size)
        return x, Preprocessing.centred(model.config.in_chans, size)
    pre = model.preprocessing
    return x, pre if pre.input_size == size else pre.replace(input_size=size)


def convert(model: Xception, fmt: str, x: torch.Tensor, text: str, *, layout: str,
            calibration: Iterable[torch.Tensor] | None = None) -> bytes:
    """The file's bytes: ``model`` traced on ``x`` by ``fmt``'s toolchain (int8 with ``calibration``), the
    metadata JSON ``text`` inside. What the toolchain cannot convert is a one-line ConfigError."""
    module = edge_module(model)
    try:
        if fmt == "pte":
            return pte.lower(module, x, text, calibration)
        return tflite.with_metadata(tflite.convert(module, x, layout, calibration), text)
    except XceptionError:
        raise
    except Exception as err:  # the toolchains raise many types; each is one line with what to do instead
        raise toolchain_error(fmt, model, err) from err


def load(fmt: str, content: bytes | str | os.PathLike[str], *, threads: int | None = None
         ) -> pte.PteModel | tflite.TfliteModel:
    """The file (or its bytes) on its own runtime: ``model(images)`` → float32 logits."""
    require(fmt, run=True)
    if fmt == "pte":
        if threads:
            pte.set_threads(threads)
        return pte.load_pte(content if isinstance(content, bytes) else Path(content))
    return tflite.load_tflite(content, threads=threads)


def edge_bytes(model: Xception, fmt: str, *, precision: str = "fp32", layout: str | None = None,
               input_size: int | None = None, calibration: torch.Tensor | None = None) -> bytes:
    """``model`` converted in memory to a ``fmt`` file's bytes, unchecked (the benchmark writes them, opens the
    file through :mod:`xception.inference` and checks its output): int8 calibrated on the preprocessed
    ``calibration`` batch."""
    layout = layout or ("nhwc" if fmt == "tflite" else "nchw")
    check_options(fmt, precision, layout)
    require(fmt)
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 needs calibration images")
    x, pre = _input(model.eval(), input_size, warn=False)
    text = metadata_text(model, pre, fmt=fmt, precision=precision, layout=layout, shape=_file_shape(x, layout))
    return convert(model, fmt, x, text, layout=layout, calibration=[calibration] if precision == "int8" else None)


def _file_shape(x: torch.Tensor, layout: str) -> tuple[int, ...]:
    n, c, h, w = x.shape
    return (n, h, w, c) if layout == "nhwc" else (n, c, h, w)


def export_edge(
    model: Xception, path: str | os.PathLike[str], *, format: str | None = None, precision: str = "fp32",
    layout: str | None = None, input_size: int | None = None, calibration: Any = None, held_out: Any = None,
    images: int = 512, held_out_images: int | None = 1000, batch_size: int = 64, workers: int | None = None,
    seed: int = 0, data_dir: str | os.PathLike[str] | None = None, verify: bool = True,
) -> EdgeExportResult:
    """Write ``model`` (eval mode) to ``path``: an ExecuTorch program (``.pte``, XNNPACK) or a LiteRT model
    (``.tflite``, ``layout`` ``"nhwc"`` by default or ``"nchw"``), one image per call at the traced size, class
    names and preprocessing inside. Before it is written the file runs on its own runtime: float32 must be
    within 1e-4 of the largest PyTorch logit on random images (``verify``); int8 (``precision="int8"``,
    calibrated on ``calibration`` images with the options of :func:`xception.quantize`) is measured
    against float32 on labelled ``held_out`` images, and the result says how it agrees."""
    path = Path(path)
    fmt = edge_format(path, format)
    if fmt is None:
        raise ConfigError(f"cannot tell the edge format from {path.name!r}: use a .pte or .tflite name, or "
                          + hint('format="tflite"', "--format tflite"))
    layout = layout or ("nhwc" if fmt == "tflite" else "nchw")
    check_options(fmt, precision, layout)
    require(fmt)
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 needs calibration images: give "
                          + hint("calibration=FOLDER", "--calibration DIR (and --held-out DIR)"))
    model = model.eval()
    edge_module(model)  # refuses a features_only backbone before any image is read
    x, pre = _input(model, input_size)
    sets = None
    if precision == "int8":
        if fmt == "tflite":  # litert-torch runs JAX threads, which a forked image reader would not survive
            workers = 0
        sets = calibration_sets(model, pre, calibration, held_out, images=images, held_out_images=held_out_images,
                                batch_size=batch_size, workers=workers, seed=seed, data_dir=data_dir)
    quantization = {"scheme": QUANTIZATION, "calibration": sets[0].description} if sets else None
    text = metadata_text(model, pre, fmt=fmt, precision=precision, layout=layout, shape=_file_shape(x, layout),
                         quantization=quantization)
    log.info("converting to %s", EDGE_FORMATS[fmt])
    content = convert(model, fmt, x, text, layout=layout, calibration=sets[0].images() if sets else None)
    if sets:
        quantization = {**quantization, "images": sets[0].size, "unreadable_skipped": sets[0].skipped}
    return _verify_and_write(model, path, fmt, content, precision=precision, layout=layout, x=x,
                             held=sets[1] if sets else None, verify=verify, calibration=quantization or {})


def _verify_and_write(model: Xception, path: Path, fmt: str, content: bytes, *, precision: str, layout: str,
                      x: torch.Tensor, held: Any, verify: bool, calibration: dict[str, Any]) -> EdgeExportResult:
    """The file on its own runtime against PyTorch, then written (never when the check fails)."""
    runtime = load(fmt, content)
    what = f"{EDGE_FORMATS[fmt]}'s output"
    diff = rel = int8 = None
    if precision == "fp32" and verify:
        diff, rel = check_fp32(model, runtime, tuple(x.shape), what)
    elif precision == "int8":
        log.info("checking the int8 file against float32 on %s", held.description)
        int8 = check_int8(model, runtime, held)
    atomic_write(path, lambda tmp: tmp.write_bytes(content))
    return EdgeExportResult(path=path, format=fmt, precision=precision, layout=layout.upper(),
                            input_shape=_file_shape(x, layout), size_bytes=path.stat().st_size, max_abs_diff=diff,
                            max_rel_diff=rel, int8=int8, calibration=calibration)

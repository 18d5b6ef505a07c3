"""``quantize()``: a float Xception in, an int8 one out, with the calibration method chosen by measurement."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..fast.fused import FusedXception
from ..models import Xception
from .calibrate import METHODS, Histogram, check_method, observe, ranges
from .data import Calibration, HeldOut, ImageSet, Reading, calibration_and_held_out
from .fileformat import is_quantized, save_quantized
from .native import fastest_bits, on_kernels
from .reference import QuantizedXception, check_quantizable, float_program
from .report import Agreement, QuantizeReport, Tally, best, write_report
from .scheme import ACTIVATION_BITS, WEIGHT_BITS, code_max

log = logging.getLogger(__name__)

# The QDQ file on ONNX Runtime against the int8 reference: largest logit difference over the largest reference
# logit, and the share of images with the reference's top-1. "qdq_in_float": graph optimisations off, ONNX
# Runtime computes the Q/DQ pairs and float ops as written, and only rounding differs from the reference (a
# code off by one now and then, carried through the network): 4.1 % and 100 % measured on 10,000 Fashion-MNIST
# images. "int8_kernels": ONNX Runtime as deployed, Q/DQ fused into its integer kernels; on CPUs without VNNI
# its u8×s8 GEMM adds pairs of products in int16 with saturation, which the reference never does: 12.4 % and
# 99.0 % measured on an AVX2 CPU. The bounds are about twice the measured differences.
ONNX_TOLERANCE: dict[str, float] = {"qdq_in_float": 0.08, "int8_kernels": 0.25}
ONNX_MIN_AGREEMENT = 97.0


@dataclass
class QuantizeResult:
    """The int8 network and what was measured (``report.to_dict()`` is the JSON report)."""

    model: QuantizedXception
    report: QuantizeReport


@dataclass
class _Logits:
    """Held-out logits kept per batch, so that the ONNX check reads the images once more and nothing else."""

    fp32: list[torch.Tensor]
    int8: dict[str, list[torch.Tensor]]
    size: tuple[int, int] = (0, 0)  # the images' height and width, which the ONNX graph is built for


def _float_model(model: Xception | str | os.PathLike[str]) -> tuple[Xception, str]:
    """The float32 model on the CPU in eval mode (a copy: the caller's model is untouched) and its source."""
    if isinstance(model, Xception):
        meta, model.weights_meta = model.weights_meta, None
        try:
            plain = copy.deepcopy(model)
        finally:
            model.weights_meta = meta
        plain.weights_meta = meta
        source = meta.source if meta is not None else ""
        return plain.float().cpu().eval(), source
    if not isinstance(model, str | os.PathLike):
        check_quantizable(model)  # says what it takes
    if is_quantized(model):
        raise ConfigError(f"{model} is already an int8 model; quantise the float weights it came from")
    from ..api import create_model  # (never xception.inference: a runner of int8 files will import this package)

    return create_model(weights=model).float().cpu().eval(), str(model)


def _candidates(program: FusedXception, names: list[str], calib: ImageSet, methods: Sequence[str],
                weight_bits: int, activation_bits: int) -> dict[str, QuantizedXception]:
    """One int8 network per calibration method, from one set of histograms."""
    log.info("calibrating on %s", calib.description)
    stats: dict[str, Histogram] = observe(program, names, calib.images)
    built = {}
    for method in methods:
        built[method] = QuantizedXception.build(program, names, ranges(stats, method, code_max(activation_bits)),
                                                weight_bits, activation_bits)
    return built


def _compare(model: Xception, candidates: dict[str, QuantizedXception], held: ImageSet
             ) -> tuple[list[Agreement], float, _Logits]:
    """Every candidate against float32 on the held-out images; float32's own top-1."""
    log.info("checking %s calibration methods on %s", len(candidates), held.description)
    fp32 = Tally("fp32")
    tallies = {m: Tally(m) for m in candidates}
    kept = _Logits([], {m: [] for m in candidates})
    networks = {m: on_kernels(q)[0] for m, q in candidates.items()}  # the same logits, faster
    with torch.inference_mode():
        for x, y in held.batches():
            kept.size = (x.shape[-2], x.shape[-1])
            ref = model(x)
            fp32.add(ref, ref, y)
            kept.fp32.append(ref)
            for method, q in networks.items():
                logits = q(x)
                tallies[method].add(ref, logits, y)
                kept.int8[method].append(logits)
    if not fp32.images:
        raise ConfigError(f"no held-out image of {held.description} could be read")
    return [t.result() for t in tallies.values()], fp32.result().top1, kept


def _onnx_sessions(path: Path) -> dict[str, Any]:
    """ONNX Runtime on the file twice: as deployed, and with graph optimisations off (Q/DQ as written)."""
    import onnxruntime

    sessions = {}
    for mode, level in (("int8_kernels", onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL),
                        ("qdq_in_float", onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = level
        sessions[mode] = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return sessions


def _check_onnx(path: Path, held: ImageSet, reference: list[torch.Tensor], fp32: list[torch.Tensor]
                ) -> dict[str, Any]:
    """The QDQ file on ONNX Runtime against the int8 reference and float32, on the same images."""
    import onnxruntime

    from ..export import INPUT_NAME, OUTPUT_NAME

    sessions = _onnx_sessions(path)
    tallies = {mode: (Tally(f"{mode}-vs-int8"), Tally(f"{mode}-vs-fp32")) for mode in sessions}
    for i, (x, y) in enumerate(held.batches()):
        for mode, session in sessions.items():
            logits = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.float().numpy()})[0])
            tallies[mode][0].add(reference[i], logits, y)
            tallies[mode][1].add(fp32[i], logits, y)
    runs = {}
    for mode, (vs_reference, vs_fp32) in tallies.items():
        r, f = vs_reference.result(), vs_fp32.result()
        runs[mode] = {"top1": r.top1, "agreement_with_reference": r.agreement, "changed_vs_reference": r.changed,
                      "max_logit_diff_rel_vs_reference": r.max_logit_diff_rel, "agreement_with_fp32": f.agreement,
                      "max_logit_diff_rel_vs_fp32": f.max_logit_diff_rel,
                      "within_tolerance": r.max_logit_diff_rel <= ONNX_TOLERANCE[mode]
                      and r.agreement >= ONNX_MIN_AGREEMENT}
    return {"path": str(path), "runtime": f"onnxruntime {onnxruntime.__version__} (CPU)", "images": r.images,
            "runs": runs, "tolerance_rel": dict(ONNX_TOLERANCE), "min_agreement": ONNX_MIN_AGREEMENT,
            "within_tolerance": all(run["within_tolerance"] for run in runs.values())}


def quantize(
    model: Xception | str | os.PathLike[str],
    calibration: Calibration,
    *,
    held_out: HeldOut = None,
    images: int = 512,
    held_out_images: int | None = 1000,
    methods: Sequence[str] = METHODS,
    out: str | os.PathLike[str] | None = None,
    onnx: str | os.PathLike[str] | None = None,
    report: str | os.PathLike[str] | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    weight_bits: int | str = "auto",
    activation_bits: int | str = "auto",
) -> QuantizeResult:
    """Post-training static int8 quantisation of a float Xception (a model, or weights to load).

    BatchNorm is folded first; weights become int8 per output channel, activations uint8 per tensor with
    ranges from ``calibration`` images (a folder, ``"fashion-mnist"``: its training split, or a float tensor
    preprocessed as the model expects; ``images`` of them at most). Each of ``methods`` is tried, and the one
    whose predictions agree best with float32 on the labelled ``held_out`` images (a folder of class
    sub-folders, ``"fashion-mnist-test"``, or (images, labels) tensors; ``held_out_images`` of them, None: all)
    is kept. ``out`` writes the int8 file (``*.safetensors``), ``onnx`` a QDQ ONNX model checked on ONNX
    Runtime, and ``report`` the JSON report (default: beside ``out``, ``NAME.report.json``). ``weight_bits=7``
    quantises weights to [−63, 63]: AVX2 CPUs without VNNI then multiply them exactly at about 1.4× the speed
    (the report measures what it costs in agreement). ``activation_bits=7`` keeps every activation within codes
    0 … 127 (FBGEMM's reduced range): with 7-bit weights as well, AVX2 CPUs add two ``vpmaddubsw`` results before
    widening them, about 1.3× faster again; ONNX has no such type, so there is no ``onnx`` file then. ``"auto"``
    (the default for both): what this CPU runs fastest (:func:`resolve_bits`); the report says what was used.
    """
    weight_bits, activation_bits = _check_settings(methods, out, onnx, weight_bits, activation_bits)
    float_model, source = _float_model(model)
    program, names = float_program(float_model)  # refuses what cannot be quantised before any image is read
    from ..api import inference_preprocessing

    reading = Reading(inference_preprocessing(float_model), batch_size, workers, data_dir, seed)
    calib, held = calibration_and_held_out(calibration, held_out, classes=float_model.class_names, images=images,
                                           held_out_images=held_out_images, reading=reading)
    candidates = _candidates(program, names, calib, list(dict.fromkeys(methods)), weight_bits, activation_bits)
    results, fp32_top1, kept = _compare(float_model, candidates, held)
    chosen = best(results)
    result = QuantizeReport(
        model=float_model.weights_meta.model if float_model.weights_meta else float_model.config.arch,
        weights=source, calibration={"description": calib.description, "images": calib.size,
                                     "skipped": calib.skipped},
        held_out={"description": held.description, "images": held.size, "skipped": held.skipped},
        fp32_top1=fp32_top1, method=chosen.method, methods=results, weight_bits=weight_bits,
        activation_bits=activation_bits,
    )
    qmodel = _describe(candidates[chosen.method], float_model, result)
    _write(qmodel, result, held, kept, out=out, onnx=onnx, report=report, source=source)
    return QuantizeResult(qmodel, result)


def resolve_bits(weight_bits: int | str, activation_bits: int | str, *, onnx: bool = False) -> tuple[int, int]:
    """The (weight, activation) bits a quantisation uses: 8 and 7 as given, each ``"auto"`` what this CPU's int8
    kernels run fastest (:func:`.native.fastest_bits`: 7-bit on AVX2 without VNNI, else 8; activations 8 for an
    ONNX export). 7-bit activations speed up only 7-bit weights, so beside 8-bit weights ``"auto"`` is 8."""
    for name, value, allowed in (("weight_bits", weight_bits, WEIGHT_BITS),
                                 ("activation_bits", activation_bits, ACTIVATION_BITS)):
        if value != "auto" and value not in allowed:
            raise ConfigError(f"{name} must be 8, 7 or 'auto', got {value!r}")
    fast_weights, fast_activations = fastest_bits(onnx=onnx)
    weights = fast_weights if weight_bits == "auto" else int(weight_bits)
    if activation_bits != "auto":
        return weights, int(activation_bits)
    return weights, fast_activations if weights == 7 else 8


def _check_settings(methods: Sequence[str], out: str | os.PathLike[str] | None, onnx: str | os.PathLike[str] | None,
                    weight_bits: int | str, activation_bits: int | str) -> tuple[int, int]:
    """Refuse what :func:`quantize` cannot do before any image is read; the bits it uses."""
    weight_bits, activation_bits = resolve_bits(weight_bits, activation_bits, onnx=onnx is not None)
    if activation_bits != 8 and onnx is not None:
        raise ConfigError("ONNX's QDQ format has no 7-bit activations (its QuantizeLinear saturates at 255): "
                          "export an ONNX model from a quantisation with activation_bits=8")
    if not methods:
        raise ConfigError("give at least one calibration method")
    if out is not None and Path(out).suffix != ".safetensors":
        raise ConfigError(f"the int8 format is safetensors: name the file *.safetensors, not {Path(out).name!r}")
    for method in methods:
        check_method(method)
    return weight_bits, activation_bits


def _describe(qmodel: QuantizedXception, float_model: Xception, result: QuantizeReport) -> QuantizedXception:
    from ..api import inference_preprocessing

    qmodel.model_name = result.model
    qmodel.class_names = float_model.class_names
    qmodel.preprocessing = inference_preprocessing(float_model)
    qmodel.info = {"calibration": {"method": result.method, "images": result.calibration["images"],
                                   "source": result.calibration["description"]},
                   "weight_bits": result.weight_bits,
                   "metrics": result.summary()}
    return qmodel


def _write(qmodel: QuantizedXception, result: QuantizeReport, held: ImageSet, kept: _Logits, *,
           out: str | os.PathLike[str] | None, onnx: str | os.PathLike[str] | None,
           report: str | os.PathLike[str] | None, source: str) -> None:
    """The int8 file, the ONNX file (checked on ONNX Runtime) and the JSON report, as asked."""
    if out is not None:
        result.files["int8"] = str(save_quantized(qmodel, out, source=source))
    if onnx is not None:
        from .qdq import write_qdq

        path = write_qdq(qmodel, onnx, kept.size)
        result.files["onnx"] = str(path)
        result.onnx = _check_onnx(path, held, kept.int8[result.method], kept.fp32)
    if report is None and out is not None:
        report = Path(out).with_suffix(".report.json")
    if report is not None:
        result.files["report"] = str(report)
        write_report(result, report)

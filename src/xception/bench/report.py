"""The report of a run: the JSON document (settings, environment, results, anchor, ratios), the table
``xception bench`` prints, and writing the JSON to a file.

Ratios are only taken between contenders of the same precision: a bfloat16 contender is compared with
bfloat16 ones (``ov-timm-bf16``), an int8 one with int8 ones (``ort-int8``, ``ov-int8``), never with a float32
one as if they computed the same thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..runtime import cpu_name
from ..tables import format_table, plural
from .models import TIMM_MODEL

if TYPE_CHECKING:
    from .config import BenchConfig
    from .stats import Result

SCHEMA = "xception-bench/1"
# What each kind of contender is compared with (when it ran, at the same precision).
BASELINES = {
    "inference": ("timm", "timm-compiled", "ort-timm", "ov-timm", "ov-timm-bf16", "ort-int8", "ov-int8", "eager"),
    "training": ("train-timm", "train-timm-compiled", "train-eager"),
}
# Table columns: (header, ratio keys for an inference row, for a training row); a cell shows the first
# key its row has. Only one of ov-timm / ov-timm-bf16 / ov-int8 (ort-timm / ort-int8) can match a row's precision.
RATIO_COLUMNS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("vs timm", ("vs_timm",), ("vs_train_timm",)),
    ("vs timm-c", ("vs_timm_compiled",), ("vs_train_timm_compiled",)),
    ("vs ort-timm", ("vs_ort_timm", "vs_ort_int8"), ()),
    ("vs ov-timm", ("vs_ov_timm", "vs_ov_timm_bf16", "vs_ov_int8"), ()),
    ("of GEMM", ("of_gemm",), ()),
)
PACKAGES = ("timm", "onnxruntime", "openvino", "triton")
# The per-turn ratios the table's footer shows: against the other runtimes (the JSON has every baseline).
PAIRED_SHOWN = ("ort_timm", "ov_timm", "ov_timm_bf16", "ort_int8", "ov_int8")


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, recorded with every run."""
    env: dict[str, Any] = {
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for package in PACKAGES:
        try:
            env[package] = __import__(package).__version__
        except Exception:
            env[package] = None
    try:  # read from its metadata: importing NNCF takes seconds
        env["nncf"] = metadata.version("nncf")
    except metadata.PackageNotFoundError:
        env["nncf"] = None
    if device.type == "cuda":
        env.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    with contextlib.suppress(OSError):
        env["load_average"] = [round(v, 2) for v in os.getloadavg()]
    return env


def make_report(cfg: BenchConfig, results: list[Result], env: dict[str, Any], *, keep_memory: bool,
                flops: int) -> dict[str, Any]:
    """The JSON report of a resolved ``cfg``'s run: settings, environment, every result, the anchor and
    the ratios between them."""
    by_name = {r.name: r for r in results if r.status == "ok"}
    anchors = _anchors(by_name.get("gemm"), flops)
    ratios = {r.name: _ratios(r, by_name, anchors) for r in results
              if r.status == "ok" and r.kind != "anchor" and r.images_per_s}
    paired = {name: row for name, row in ((r.name, _paired_ratios(r, by_name)) for r in results
                                          if r.status == "ok" and r.kind != "anchor") if row}
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {
            "model": cfg.model, "model_options": cfg.model_options, "device": cfg.device, "dtype": cfg.dtype,
            "batch_size": cfg.batch_size, "train_batch_size": cfg.train_batch_size, "input_size": cfg.input_size,
            "modes": list(cfg.modes or ()), "repeats": cfg.repeats, "warmup": cfg.warmup,
            "threads": torch.get_num_threads(), "keep_memory": keep_memory, "flops_per_image": flops,
            "same_network_as_timm": cfg.same_network_as_timm, "check_outputs": cfg.check_outputs,
            "calibration_images": cfg.calibration_images, "weight_bits": cfg.weight_bits,
            "activation_bits": cfg.activation_bits,
        },
        "environment": env,
        "results": [r.to_dict() for r in results],
        "anchors": anchors,
        "ratios": ratios,
        "paired_ratios": paired,
    }


def _anchors(gemm: Result | None, flops: int) -> dict[str, Any]:
    if gemm is None or not gemm.median_ms:
        return {}
    gflops = gemm.details["flops_per_call"] / (gemm.median_ms / 1e3) / 1e9
    return {"gemm": {"gflops": gflops, "images_per_s_at_gemm_rate": gflops * 1e9 / flops,
                     "dtype": gemm.details["dtype"], "size": gemm.details["size"]}}


def _ratios(r: Result, by_name: dict[str, Result], anchors: dict[str, Any]) -> dict[str, float]:
    """``r``'s throughput over each baseline's of the same precision, and over the GEMM rate (same dtype)."""
    ips = r.images_per_s or 0.0
    row = {key: ips / other.images_per_s for key, other in _baselines(r, by_name) if other.images_per_s}
    gemm = anchors.get("gemm")
    if r.kind == "inference" and gemm is not None and gemm["dtype"] == r.precision:
        row["of_gemm"] = ips / gemm["images_per_s_at_gemm_rate"]
    return row


def _paired_ratios(r: Result, by_name: dict[str, Result]) -> dict[str, float]:
    """``r``'s throughput over each same-precision baseline's, turn by turn, the median of those ratios: the two
    calls of a turn ran back to back, so a host whose speed drifts between turns moves both alike (the ratio of
    medians can pair a fast minute of one with a slow minute of the other)."""
    row: dict[str, float] = {}
    for key, other in _baselines(r, by_name):
        if not r.times_ms or len(other.times_ms) != len(r.times_ms):
            continue
        per_turn = [(r.batch_size / mine) / (other.batch_size / theirs)
                    for mine, theirs in zip(r.times_ms, other.times_ms, strict=True) if mine > 0 and theirs > 0]
        if per_turn:
            row[key] = statistics.median(per_turn)
    return row


def _baselines(r: Result, by_name: dict[str, Result]) -> Iterator[tuple[str, Result]]:
    """(ratio key, result) of each baseline of ``r``'s kind that ran at ``r``'s precision, ``r`` itself excluded."""
    for ref in BASELINES[r.kind]:
        other = by_name.get(ref)
        if other is not None and ref != r.name and other.precision == r.precision:
            yield f"vs_{ref.replace('-', '_')}", other


def write_report(report: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write the JSON report atomically (never a half-written file)."""
    from ..fileio import atomic_write

    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))


def format_report(report: dict[str, Any]) -> str:
    """The table ``xception bench`` prints: one row per contender, ratios against the baselines."""
    s = report["settings"]
    shown = [r for r in report["results"] if r["kind"] != "anchor"]
    headers = ["mode", "precision", "img/s", "p50 ms", "p90 ms", "p99 ms", "peak MiB",
               *(header for header, _, _ in RATIO_COLUMNS), "max err", "setup s", "kernels"]
    rows = [_row(r, report["ratios"].get(r["name"], {}), len(headers)) for r in shown]
    env = report.get("environment", {})
    where = env.get("gpu") or env.get("cpu") or "unknown CPU"
    lines = [f"{s['model']} · {s['device']} · {s['dtype']} · batch {s['batch_size']} (train {s['train_batch_size']}) · "
             f"{s['input_size']} px · {s['repeats']} repeats in turns, medians · {plural(s['threads'], 'thread')}",
             f"on {where}" + (f" (host CPU: {env['cpu']})" if env.get("gpu") and env.get("cpu") else ""),
             format_table(rows, headers, right=range(2, len(headers) - 1))]
    gemm = report["anchors"].get("gemm")
    if gemm:
        lines.append(f"anchor: {gemm['size']}² {gemm['dtype']} matmul at {gemm['gflops']:,.1f} GFLOP/s "
                     f"= {gemm['images_per_s_at_gemm_rate']:,.2f} img/s at {s['flops_per_image'] / 1e9:.2f} "
                     "GFLOP/image")
    lines.append("training rows: 'vs timm' columns compare with train-timm / train-timm-compiled; max err: "
                 "max |Δ| / max |logit| against the float32 eager model")
    paired = [f"{name} {key.removeprefix('vs_').replace('_', '-')} {value:.2f}×"
              for name, row in report.get("paired_ratios", {}).items() for key, value in row.items()
              if key.removeprefix("vs_") in PAIRED_SHOWN]
    if paired:
        lines.append("turn by turn (median of the per-turn ratios, steadier on a drifting host): " + ", ".join(paired))
    reduced = [r["name"] for r in shown if r.get("precision", "float32") != "float32"]
    if reduced:
        lines.append(f"reduced precision: {', '.join(reduced)}; ratios are only taken between rows of the same "
                     "precision ('vs ov-timm' of a bfloat16 row: against ov-timm-bf16; 'vs ort-timm' and "
                     "'vs ov-timm' of an int8 row: against ort-int8 and ov-int8)")
    if not s.get("same_network_as_timm", True) and any(r.get("network") == "timm" for r in shown):
        lines.append(f"note: {s['model']} with {s['model_options']} is not timm's {TIMM_MODEL}: "
                     "ratios against timm compare different networks")
    return "\n".join(lines)


def _row(r: dict[str, Any], ratio: dict[str, float], width: int) -> tuple[str, ...]:
    """One table row: a result's figures, or its status and reason."""
    if r["status"] != "ok":
        return (r["name"], r.get("precision", ""), r["status"], r["reason"][:60], *([""] * (width - 4)))
    lat, mem = r["latency_ms"], r["peak_memory_bytes"]
    ratio_cells = []
    for _, inference_keys, training_keys in RATIO_COLUMNS:
        key = next((k for k in (inference_keys if r["kind"] == "inference" else training_keys) if k in ratio), None)
        ratio_cells.append(f"{ratio[key]:.2f}×" if key else "")
    return (
        r["name"], r.get("precision", ""), f"{r['images_per_s']:,.1f}", f"{lat['p50']:,.1f}", f"{lat['p90']:,.1f}",
        f"{lat['p99']:,.1f}", f"{mem / 2**20:,.0f}" if mem is not None else "-", *ratio_cells,
        f"{r['details']['max_rel_err']:.0e}" if "max_rel_err" in r["details"] else "", f"{r['setup_s']:.0f}",
        r["details"].get("kernels", ""),
    )

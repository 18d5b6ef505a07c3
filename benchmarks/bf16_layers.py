"""Where the bfloat16 time goes, per layer: the fast path's layers against OpenVINO's bf16 profile.

The paper's network with random weights and real BatchNorm statistics (as ``int8_layers.py``), at 299 px
(``--input-size``), one thread, CPU time, on CPUs where oneDNN runs bf16 natively (AVX512-BF16 or AMX). Ours:
``xception.optimize(model, dtype=torch.bfloat16)``, each layer's call timed, with its kind and, for the native
kernels, its rate in multiply-adds per second. ``--route onednn`` profiles the oneDNN route where the native bf16
kernels would run (depthwise conv, 1×1 conv as a oneDNN matmul, plain conv, native max-pool); there, for every 1×1
conv, also the other route oneDNN offers, its convolution primitive with the same weight, on the same input, so
that the faster of the two shows per layer.
OpenVINO (bf16 precision hint) on the network's ONNX export: its per-node profile (``PERF_COUNT``), summed by
kernel. Passes are repeated in turns; per layer the minimum (the pass least disturbed by other processes), the
totals the mean of whole passes (ours less the other route's calls).

    PYTHONPATH=src python benchmarks/bf16_layers.py [--batch 8] [--input-size 299] [--repeats 3] \\
        [--route auto|onednn] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import xception
from int8_layers import paper_network, profiled, stage
from xception import fast as fast_module
from xception.bench import environment
from xception.export import onnx_proto
from xception.fast.fused import FusedConv, mkldnn_bf16_available
from xception.fast.native import NativeConv, NativeMaxPool

Contender = tuple[Callable[[], float], Callable[[float], dict[str, Any]]]


def kind(module: torch.nn.Module) -> str:
    if isinstance(module, NativeMaxPool):
        return "max-pool (native)"
    if isinstance(module, NativeConv):
        return {0: "1x1 (native)", 1: "separable (native)", 2: "conv (native)"}[module.kind]
    if module.depthwise:
        return "depthwise (oneDNN conv)"
    if module._matrix is not None:
        return "1x1 (oneDNN matmul)"
    return "conv (oneDNN)"


def as_conv(module: FusedConv) -> Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """The same 1×1 conv on oneDNN's convolution primitive (the route ``FusedConv`` takes in float32)."""
    packed = torch.ops.mkldnn._reorder_convolution_weight(module.weight, [0, 0], list(module.stride), [1, 1], 1, None)
    args = ([0, 0], list(module.stride), [1, 1], 1)
    relu = "relu" if module.relu_out else "none"

    def run(x: torch.Tensor, add: torch.Tensor | None) -> torch.Tensor:
        if module.relu_in:
            x = torch.relu(x)
        if add is None:
            return torch.ops.mkldnn._convolution_pointwise(x, packed, module.bias, *args, relu, [None], "")
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, add.contiguous(memory_format=torch.channels_last), packed, module.bias, *args, "add", 1.0,
            "relu" if module.relu_out else None, [None], None)

    return run


def ours(model: torch.nn.Module, x: torch.Tensor, route: str) -> Contender:
    preferred = fast_module.native_bf16_preferred
    if route == "onednn":
        fast_module.native_bf16_preferred = lambda: False  # type: ignore[assignment]
    try:
        fast = xception.optimize(model, dtype=torch.bfloat16, replay=False)  # layer by layer: the hooks run
    finally:
        fast_module.native_bf16_preferred = preferred
    layers: dict[str, dict[str, Any]] = {}

    def timed(name: str, module: torch.nn.Module) -> None:
        forward = module.forward
        other = as_conv(module) if isinstance(module, FusedConv) and module._matrix is not None else None

        def run(*args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            out = forward(*args, **kwargs)
            entry = layers.setdefault(name, {"passes": [], "conv_passes": []})
            entry["passes"].append((time.process_time() - start) * 1000)
            if other is not None:  # the conv primitive on the same input, outside the pass's own time
                start = time.process_time()
                other(args[0], kwargs.get("add", args[1] if len(args) > 1 else None))
                entry["conv_passes"].append((time.process_time() - start) * 1000)
            n, c, h, w = out.shape
            macs = n * h * w * c * (getattr(module, "k_dim", 0) or 0)
            if getattr(module, "dw_weight", None) is not None:
                macs += n * h * w * module.dw_weight.numel()
            entry.update(kind=kind(module), out=[n, h, w, c], macs=macs)
            return out

        module.forward = run

    for name, module in fast.named_modules():
        if isinstance(module, (FusedConv, NativeConv, NativeMaxPool)):
            timed(name.removeprefix("program."), module)
    with torch.inference_mode():
        fast(x)  # warm-up
    layers.clear()

    def run() -> float:
        start = time.process_time()
        with torch.inference_mode():
            fast(x)
        seconds = time.process_time() - start
        conv_ms = sum(e["conv_passes"][-1] for e in layers.values() if e["conv_passes"])
        return seconds - conv_ms / 1000  # the pass alone, without the other route's calls

    def report(total_ms: float) -> dict[str, Any]:
        for entry in layers.values():
            passes, conv = entry.pop("passes"), entry.pop("conv_passes")
            entry["min_ms"] = round(min(passes), 2)
            if entry["macs"]:
                entry["gmac_s"] = round(entry["macs"] / entry["min_ms"] / 1e6, 1)
            if conv:
                entry["conv_min_ms"] = round(min(conv), 2)
        return {"kernels": fast.settings["kernels"], "total_ms": round(total_ms, 1), "layers": layers}

    return run, report


def openvino(path: Path, x: torch.Tensor, repeats: int) -> Contender:
    import openvino as ov

    core = ov.Core()
    return profiled(core, core.read_model(str(path)), x, repeats, {"INFERENCE_PRECISION_HINT": "bf16"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--route", choices=("auto", "onednn"), default="auto",
                        help="auto: what optimize() chooses here; onednn: oneDNN's convs and matmuls")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    import onnx

    if not mkldnn_bf16_available():
        print("oneDNN runs no bf16 kernels on this CPU (it needs AVX512-BF16 or AMX)", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    size = args.input_size
    model, _, x = paper_network(args.batch, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paper.onnx"
        onnx.save(onnx_proto(model, torch.zeros(2, *x.shape[1:])), str(path))
        contenders = {"ours": ours(model, x, args.route), "openvino": openvino(path, x, args.repeats)}
        totals: dict[str, float] = {name: 0.0 for name in contenders}
        for _ in range(args.repeats):
            for name, (run, _) in contenders.items():
                totals[name] += run() * 1000 / args.repeats
        report = {name: contenders[name][1](totals[name]) for name in contenders}
    report["environment"] = environment(torch.device("cpu"))
    report["batch"], report["input_size"] = args.batch, size
    ours_ms, ov_ms = report["ours"]["total_ms"], report["openvino"]["total_ms"]
    print(f"{report['environment']['cpu']} · batch {args.batch} · {size} px · 1 thread · bf16 · CPU ms per pass")
    print(f"ours ({report['ours']['kernels']}): {ours_ms} ms; OpenVINO bf16: {ov_ms} ms ({ov_ms / ours_ms:.2f}×)")
    by_kind: dict[str, float] = {}
    by_stage: dict[str, float] = {}
    best = 0.0
    print(f"{'min ms':>8} {'as conv':>8} {'GMAC/s':>7}  {'output':<20} {'kind':<24} layer")
    for name, entry in report["ours"]["layers"].items():
        by_kind[entry["kind"]] = by_kind.get(entry["kind"], 0.0) + entry["min_ms"]
        by_stage[stage(name)] = by_stage.get(stage(name), 0.0) + entry["min_ms"]
        conv = entry.get("conv_min_ms")
        best += min(entry["min_ms"], conv) if conv is not None else entry["min_ms"]
        rate = entry.get("gmac_s")
        print(f"{entry['min_ms']:8.2f} {'' if conv is None else f'{conv:8.2f}':>8} {'' if rate is None else rate:>7}  "
              f"{tuple(entry['out'])!s:<20} "
              f"{entry['kind']:<24} {name}")
    layers_ms = sum(by_kind.values())
    print("ours by kind: " + ", ".join(f"{k} {v:.1f}" for k, v in by_kind.items()))
    print("ours by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in by_stage.items()))
    print(f"the layers' minima sum to {layers_ms:.1f} ms; with the faster route per 1x1 conv, {best:.1f}")
    print("OpenVINO by kernel: " + ", ".join(f"{k} {v}" for k, v in report["openvino"]["by_kernel"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

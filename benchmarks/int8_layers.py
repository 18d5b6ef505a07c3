"""Where the int8 time goes, per layer: the native int8 kernels against OpenVINO's NNCF int8, in one run.

The paper's network with random weights and real BatchNorm statistics, quantised from the same random
calibration images both ways (``xception.quantize`` with ``--weight-bits``, NNCF's post-training quantisation
of the float32 ONNX export), at 299 px (``--input-size``), one thread. Ours: CPU time of each kernel call
(``time.process_time``, so another process on the machine inflates it less than wall time) in the replayed
pass the bench times (:mod:`xception.fast.replay`: no Python between the calls), and its rate in multiply-adds
per second; the input's codes are timed apart. OpenVINO: its own per-node profile (``PERF_COUNT``), summed by
kernel. Both passes are repeated and averaged, in turns; the totals are CPU time of whole passes.

    PYTHONPATH=src python benchmarks/int8_layers.py [--batch 8] [--input-size 299] [--repeats 3] \\
        [--weight-bits 7] [--activation-bits 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import xception
from xception.bench import environment
from xception.quantize import load_quantized, native, quantize


def timed_call(call: Callable[..., int], entry: dict[str, Any], repeats: int) -> Callable[..., int]:
    """``call``, its CPU time added to ``entry["ms"]`` (averaged over ``repeats`` passes)."""

    def timed(*args: Any) -> int:
        start = time.process_time()
        status = call(*args)
        entry["ms"] += (time.process_time() - start) * 1000 / repeats
        return status

    return timed


def float_model(calibration: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=1000)
    model.train()
    with torch.no_grad():  # BatchNorm statistics of real activations, not the identity
        for _ in range(2):
            model(calibration[:4])
    return model.eval()


def paper_network(batch: int, size: int) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """``float_model`` on 8 random calibration images, and a random input batch: the same draws in every script
    that takes them in this order."""
    torch.manual_seed(1)
    calibration = torch.randn(8, 3, size, size)
    model = float_model(calibration)
    return model, calibration, torch.randn(batch, 3, size, size)


def native_int8(model: torch.nn.Module, calibration: torch.Tensor, weight_bits: int = 8,
                activation_bits: int = 8) -> torch.nn.Module:
    """``model`` quantised on ``calibration`` (min/max) and run on the native int8 kernels, replayed as the bench
    runs it."""
    labels = torch.zeros(len(calibration), dtype=torch.long)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paper.int8.safetensors"
        quantize(model, calibration, held_out=(calibration, labels), methods=["minmax"], weight_bits=weight_bits,
                 activation_bits=activation_bits, out=path)
        return native.NativeQuantizedXception(load_quantized(path))


def quantized_paper_network(batch: int, size: int = 299, weight_bits: int = 8) -> tuple[torch.nn.Module, torch.Tensor]:
    """:func:`paper_network` on the native int8 kernels (:func:`native_int8`), and its input batch."""
    model, calibration, x = paper_network(batch, size)
    return native_int8(model, calibration, weight_bits), x


def ours(model: torch.nn.Module, calibration: torch.Tensor, x: torch.Tensor, bits: int, repeats: int,
         activation_bits: int = 8) -> tuple[Callable[[], float], Callable[[float], dict[str, Any]]]:
    """One pass of the native int8 network (CPU seconds), and the per-layer report of all passes."""
    network = native_int8(model, calibration, bits, activation_bits)
    layers: dict[str, dict[str, Any]] = {}
    order: list[str] = []  # the layers in the order of their kernel calls

    def described(name: str, module: torch.nn.Module) -> Callable[..., Any]:
        forward = module.forward

        def run(*args: Any, **kwargs: Any) -> Any:
            out = forward(*args, **kwargs)
            codes = out.q if hasattr(out, "q") else out
            pixels = codes.shape[0] * codes.shape[1] * codes.shape[2]
            macs = pixels * codes.shape[3] * (getattr(module, "k_dim", 0) or 0)
            if getattr(module, "dw_weight", None) is not None:
                macs += pixels * module.dw_weight.numel()
            layers[name] = {"ms": 0.0, "kind": type(module).__name__, "k": getattr(module, "k_dim", 0),
                            "out": list(codes.shape), "macs": macs}
            order.append(name)
            return out

        module.forward = run
        return forward

    # The recorded pass names the calls; later passes replay them, each call timed (CPU time, one thread).
    hooked = {name: (module, described(name, module)) for name, module in network.named_modules()
              if isinstance(module, (native.NativeQConv, native.NativeQMaxPool, native.NativeQGlobalPool))}
    network(x)
    for module, forward in hooked.values():
        module.forward = forward
    assert network.replay is not None
    plan = next(iter(network.replay._plans.values()))
    if plan is None or len(plan.steps) != len(order):
        raise RuntimeError("the int8 pass did not replay: no per-call times")
    for name, step in zip(order, plan.steps, strict=True):
        step.call = timed_call(step.call, layers[name], repeats)
    # Outside the replayed calls: the input's codes.
    layers["input"] = {"ms": 0.0, "kind": "input", "k": 0, "out": [], "macs": 0}
    network.replay.prepare = timed_call(network.replay.prepare, layers["input"], repeats)
    network(x)  # warm-up
    for entry in layers.values():
        entry["ms"] = 0.0

    def run() -> float:
        start = time.process_time()
        network(x)
        return time.process_time() - start

    def report(total_ms: float) -> dict[str, Any]:
        for entry in layers.values():
            entry["gmac_s"] = round(entry["macs"] / entry["ms"] / 1e6, 1) if entry["macs"] else None
            entry["ms"] = round(entry["ms"], 2)
        return {"kernels": network.kernels(), "total_ms": round(total_ms, 1), "layers": layers}

    return run, report


def openvino(model: torch.nn.Module, calibration: torch.Tensor, x: torch.Tensor, repeats: int,
             folder: Path) -> tuple[Callable[[], float], Callable[[float], dict[str, Any]]]:
    """One pass of NNCF's int8 model on OpenVINO (CPU seconds), and its per-node profile of all passes,
    summed by kernel."""
    import onnx
    import openvino as ov

    from xception.export import onnx_proto
    from xception.inference.openvino import nncf_int8

    path = folder / "paper.onnx"
    onnx.save(onnx_proto(model, torch.zeros(2, *x.shape[1:])), str(path))
    core = ov.Core()
    ov_model = nncf_int8(core.read_model(str(path)), calibration)
    return profiled(core, ov_model, x, repeats, {})


def profiled(core: Any, ov_model: Any, x: torch.Tensor, repeats: int,
             config: dict[str, Any]) -> tuple[Callable[[], float], Callable[[float], dict[str, Any]]]:
    """``ov_model`` compiled for one thread and batch ``len(x)`` with its per-node profile on: one pass (CPU
    seconds), and the profile of all passes, summed by kernel and by node."""
    import openvino as ov

    shape = ov_model.inputs[0].partial_shape
    shape[0] = x.shape[0]
    ov_model.reshape(shape)
    compiled = core.compile_model(ov_model, "CPU", {"PERF_COUNT": "YES", "INFERENCE_NUM_THREADS": 1,
                                                    "PERFORMANCE_HINT": "LATENCY", **config})
    request = compiled.create_infer_request()
    array = x.numpy()
    request.infer({0: array})
    kernels: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()

    def run() -> float:
        start = time.process_time()
        request.infer({0: array})
        seconds = time.process_time() - start
        for node in request.profiling_info:
            if node.status == node.Status.EXECUTED:
                ms = node.real_time.total_seconds() * 1000 / repeats
                kernels[f"{node.node_type} {node.exec_type}"] += ms
                nodes[f"{node.node_name} ({node.node_type}, {node.exec_type})"] += ms
        return seconds

    def report(total_ms: float) -> dict[str, Any]:
        return {"openvino": ov.get_version(), "total_ms": round(total_ms, 1),
                "by_kernel": {k: round(v, 2) for k, v in kernels.most_common()},
                "slowest_nodes": {k: round(v, 2) for k, v in nodes.most_common(40)}}

    return run, report


def stage(name: str) -> str:
    """The network's part a layer belongs to: stem, entry (blocks 0–2), middle (3–10), exit (11–12), head (the
    global pool and the classifier), input."""
    if name.startswith("blocks."):
        block = int(name.split(".")[1])
        return "entry flow" if block < 3 else "middle flow" if block < 11 else "exit flow"
    return "head" if name == "pool" else name.split(".")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--weight-bits", type=int, default=7, choices=(7, 8))
    parser.add_argument("--activation-bits", type=int, default=8, choices=(7, 8), help="ours only: OpenVINO's stay 8")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if not native.available():
        print("no compiled int8 kernels for this CPU", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    torch.manual_seed(1)
    size = args.input_size
    calibration, x = torch.randn(8, 3, size, size), torch.randn(args.batch, 3, size, size)
    model = float_model(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        contenders = {"ours": ours(model, calibration, x, args.weight_bits, args.repeats, args.activation_bits),
                      "openvino": openvino(model, calibration, x, args.repeats, Path(tmp))}
        totals = {name: 0.0 for name in contenders}
        for _ in range(args.repeats):  # in turns: the host's speed drifts from minute to minute
            for name, (run, _) in contenders.items():
                totals[name] += run() * 1000 / args.repeats
    ours_report = contenders["ours"][1](totals["ours"])
    ov_report = contenders["openvino"][1](totals["openvino"])
    stages: dict[str, float] = collections.defaultdict(float)
    for name, entry in ours_report["layers"].items():
        stages[stage(name)] += entry["ms"]
    report = {"environment": environment(torch.device("cpu")), "batch": args.batch, "input_size": size,
              "repeats": args.repeats,
              "weight_bits": args.weight_bits, "activation_bits": args.activation_bits, "ours": ours_report,
              "ours_by_stage_ms": {k: round(v, 1) for k, v in stages.items()}, "openvino_nncf": ov_report}
    print(f"{report['environment']['cpu']} · batch {args.batch} · {size} px · 1 thread · CPU ms per pass")
    print(f"ours ({ours_report['kernels']}): {ours_report['total_ms']} ms; "
          f"OpenVINO NNCF int8: {ov_report['total_ms']} ms ({ov_report['total_ms'] / ours_report['total_ms']:.2f}×)")
    print("ours by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in report["ours_by_stage_ms"].items()))
    print(f"{'ms':>8} {'GMAC/s':>7} {'K':>5}  {'output':<20} layer")
    for name, entry in ours_report["layers"].items():
        rate = f"{entry['gmac_s']:.1f}" if entry["gmac_s"] else "-"
        print(f"{entry['ms']:8.2f} {rate:>7} {entry['k']:5d}  {tuple(entry['out'])!s:<20} {name}")
    print("OpenVINO by kernel: " + ", ".join(f"{k} {v:.1f}" for k, v in ov_report["by_kernel"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the float32 time goes, per layer: the fast path's native kernels against ONNX Runtime and OpenVINO.

The paper's network with random weights and real BatchNorm statistics (as ``int8_layers.py``), at 299 px
(``--input-size``), on one thread (``--threads``). Ours: ``xception.optimize`` with the native kernels, the
time of each kernel call and its rate in multiply-adds per second. ONNX Runtime: its node profiler on the same
network's ONNX export, summed by operator. OpenVINO (f32 precision hint): its per-node profile
(``PERF_COUNT``), summed by kernel. Passes are repeated in turns; per layer the mean and the minimum (the pass
least disturbed by other processes), the totals the mean of whole passes. With one thread the times are CPU
time (another process inflates it less than wall time), with more wall time.

    PYTHONPATH=src python benchmarks/fp32_layers.py [--batch 8] [--input-size 299] [--repeats 3] [--threads 1] \\
        [--ours-only] [--json out.json]

``--ours-only`` times our passes back to back, without the peers' passes between them (whose worker threads
may still spin on the cores when our next pass starts).
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
from int8_layers import float_model, profiled, stage
from xception.bench import environment
from xception.export import onnx_proto
from xception.fast import native

Contender = tuple[Callable[[], float], Callable[[float], dict[str, Any]]]
clock = time.process_time  # CPU time with one thread (another process inflates it less); wall time with more


def ours(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> Contender:
    """One pass of the fast path (CPU seconds), and the per-layer report of all passes."""
    fast = xception.optimize(model, kernels="native", replay=False)  # layer by layer: the timing hooks run
    layers: dict[str, dict[str, Any]] = {}

    def timed(name: str, module: torch.nn.Module) -> None:
        forward = module.forward

        def run(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            out = forward(*args, **kwargs)
            entry = layers.setdefault(name, {"passes": []})
            entry["passes"].append((clock() - start) * 1000)
            n, c, h, w = out.shape
            macs = n * h * w * c * (getattr(module, "k_dim", 0) or 0)
            if getattr(module, "dw_weight", None) is not None:
                macs += n * h * w * module.dw_weight.numel()
            entry.update(kind=type(module).__name__, k=getattr(module, "k_dim", 0), out=[n, h, w, c], macs=macs)
            return out

        module.forward = run

    for name, module in fast.named_modules():
        if isinstance(module, (native.NativeConv, native.NativeMaxPool)):
            timed(name.removeprefix("program."), module)
    with torch.inference_mode():
        fast(x)  # warm-up
    layers.clear()

    def run() -> float:
        start = clock()
        with torch.inference_mode():
            fast(x)
        return clock() - start

    def report(total_ms: float) -> dict[str, Any]:
        for entry in layers.values():
            passes = entry.pop("passes")
            entry["ms"], entry["min_ms"] = round(sum(passes) / len(passes), 2), round(min(passes), 2)
            entry["gmac_s"] = round(entry["macs"] / entry["min_ms"] / 1e6, 1) if entry["macs"] else None
        return {"kernels": native.isa(), "total_ms": round(total_ms, 1), "layers": layers}

    return run, report


def onnxruntime(path: Path, x: torch.Tensor, repeats: int, folder: Path, threads: int) -> Contender:
    """One pass on ONNX Runtime (CPU seconds), and its node profile of all passes, summed by operator and
    by node in order (the profiler's own warm-up pass left out)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.enable_profiling = True
    options.profile_file_prefix = str(folder / "ort")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name, array = session.get_inputs()[0].name, x.numpy()
    session.run(None, {name: array})
    passes = 0

    def run() -> float:
        nonlocal passes
        start = clock()
        session.run(None, {name: array})
        passes += 1
        return clock() - start

    def report(total_ms: float) -> dict[str, Any]:
        events = json.loads(Path(session.end_profiling()).read_text())
        nodes = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        per_pass = len(nodes) // (passes + 1)
        ops: collections.Counter[str] = collections.Counter()
        by_node: dict[str, list[float]] = collections.defaultdict(list)
        for event in nodes[per_pass:]:  # the first pass was the warm-up
            ops[event["args"]["op_name"]] += event["dur"] / 1000 / passes
            node = f"{event['name'].removesuffix('_kernel_time')} ({event['args']['op_name']})"
            by_node[node].append(event["dur"] / 1000)
        return {"onnxruntime": ort.__version__, "total_ms": round(total_ms, 1),
                "by_operator": {k: round(v, 2) for k, v in ops.most_common()},
                "nodes": {k: [round(sum(v) / len(v), 2), round(min(v), 2)] for k, v in by_node.items()}}

    return run, report


def openvino(path: Path, x: torch.Tensor, repeats: int, threads: int) -> Contender:
    import openvino as ov

    core = ov.Core()
    return profiled(core, core.read_model(str(path)), x, repeats,
                    {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="for all three; above 1 the times are wall time")
    parser.add_argument("--ours-only", action="store_true", help="our passes alone, no peers between them")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    import onnx

    if not native.available():
        print("no compiled float32 kernels for this CPU", file=sys.stderr)
        return 1
    global clock
    torch.set_num_threads(args.threads)
    if args.threads > 1:
        clock = time.perf_counter
    torch.manual_seed(1)
    size = args.input_size
    calibration, x = torch.randn(8, 3, size, size), torch.randn(args.batch, 3, size, size)
    model = float_model(calibration)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paper.onnx"
        onnx.save(onnx_proto(model, torch.zeros(2, *x.shape[1:])), str(path))
        contenders = {"ours": ours(model, x, args.repeats)}
        if not args.ours_only:
            contenders.update(onnxruntime=onnxruntime(path, x, args.repeats, Path(tmp), args.threads),
                              openvino=openvino(path, x, args.repeats, args.threads))
        totals = {name: 0.0 for name in contenders}
        for _ in range(args.repeats):  # in turns: the host's speed drifts from minute to minute
            for name, (run, _) in contenders.items():
                totals[name] += run() * 1000 / args.repeats
        reports = {name: report(totals[name]) for name, (_, report) in contenders.items()}
    stages: dict[str, float] = collections.defaultdict(float)
    for name, entry in reports["ours"]["layers"].items():
        stages[stage(name)] += entry["ms"]
    report = {"environment": environment(torch.device("cpu")), "batch": args.batch, "input_size": size,
              "threads": args.threads, "clock": "cpu" if args.threads == 1 else "wall",
              "repeats": args.repeats, "ours": reports["ours"],
              "ours_by_stage_ms": {k: round(v, 1) for k, v in stages.items()},
              "onnxruntime": reports.get("onnxruntime"), "openvino_f32": reports.get("openvino")}
    total = reports["ours"]["total_ms"]
    print(f"{report['environment']['cpu']} · batch {args.batch} · {size} px · {args.threads} thread(s) · "
          f"{report['clock']} ms per pass")
    peers = "".join(f"; {label} {reports[key]['total_ms']} ms ({reports[key]['total_ms'] / total:.2f}×)"
                    for key, label in (("onnxruntime", "ONNX Runtime"), ("openvino", "OpenVINO f32")) if key in reports)
    print(f"ours ({reports['ours']['kernels']}): {total} ms{peers}")
    print("ours by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in report["ours_by_stage_ms"].items()))
    print(f"{'ms':>8} {'min ms':>8} {'GMAC/s':>7} {'K':>5}  {'output':<20} layer")
    for name, entry in reports["ours"]["layers"].items():
        rate = f"{entry['gmac_s']:.1f}" if entry["gmac_s"] else "-"
        print(f"{entry['ms']:8.2f} {entry['min_ms']:8.2f} {rate:>7} {entry['k']:5d}  "
              f"{tuple(entry['out'])!s:<20} {name}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.ours_only:
        return 0
    print("ONNX Runtime by operator: "
          + ", ".join(f"{k} {v:.1f}" for k, v in reports["onnxruntime"]["by_operator"].items()))
    print("ONNX Runtime nodes in order (mean, min ms): "
          + ", ".join(f"{k} {v[0]:.1f} {v[1]:.1f}" for k, v in reports["onnxruntime"]["nodes"].items()))
    print("OpenVINO by kernel: " + ", ".join(f"{k} {v:.1f}" for k, v in reports["openvino"]["by_kernel"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

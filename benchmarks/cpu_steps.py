"""The CPU optimisation ladder: what each step of ``xception.optimize`` is worth, measured in one run.

Every rung is timed in turns with the others (and with onnxruntime on timm's export and the GEMM
anchor), so the ratios between rungs are trustworthy on a noisy, shared machine. Run twice to see the
allocator's share: once as is, once with ``--keep-memory`` (process-wide, so it cannot be toggled
within one run).

    PYTHONPATH=src python benchmarks/cpu_steps.py --repeats 9 [--keep-memory] [--compile] [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from xception.bench import (
    TIMM_MODEL,
    BenchConfig,
    environment,
    flops_per_image,
    gemm_flops_runner,
    time_in_turns,
)
from xception.export import onnx_proto
from xception.fast import FusedXception, fold_xception, keep_freed_memory, optimize
from xception.models import build_model
from xception.runtime import time_call


def rungs(model: torch.nn.Module, x: torch.Tensor, compile: bool) -> dict[str, Callable[[], Any]]:
    """Name → one forward pass, from the plain model to the full fast path."""
    cl = x.contiguous(memory_format=torch.channels_last)
    folded = copy.deepcopy(model)
    fold_xception(folded)

    def fused(backend: str, channels_last: bool = True) -> torch.nn.Module:
        program = FusedXception(copy.deepcopy(folded))
        if channels_last:
            program = program.to(memory_format=torch.channels_last)
        return program.set_backend(backend)

    plain_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    fused_torch, fused_mkldnn, fused_mkldnn_nchw = fused("torch"), fused("mkldnn"), fused("mkldnn", False)
    out: dict[str, Callable[[], Any]] = {
        "1 plain NCHW": lambda: model(x),
        "2 plain channels_last": lambda: plain_cl(cl),
        "3 + BN folded (NCHW)": lambda: folded(x),
        "4 + BN folded, channels_last": lambda: folded_cl(cl),
        "5 + ReLU/add fused (torch ops)": lambda: fused_torch(cl),
        "6 + oneDNN packed, post-ops (fast)": lambda: fused_mkldnn(cl),
        "6b fast, but NCHW": lambda: fused_mkldnn_nchw(x),
    }
    if compile:
        # Two different forwards, so that neither compile can reuse the other's cached graph: dynamo keys
        # its cache on the code object, and an unfrozen graph's guards also accept a second instance.
        for name, make in (("7 torch.compile(plain, channels_last)", lambda: torch.compile(plain_cl)),
                           ("8 optimize(compile=True): + freezing", lambda: optimize(model, compile=True))):
            start = time.perf_counter()
            fn = make()
            fn(cl)
            print(f"{name}: compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr)
            out[name] = lambda fn=fn: fn(cl)
    return out


def onnxruntime_rung(x: torch.Tensor, threads: int | None) -> Callable[[], Any] | None:
    """ONNX Runtime on timm's ONNX export (the library's exporter), or None without onnxruntime or timm."""
    try:
        import onnx
        import onnxruntime as ort
        import timm
    except ImportError as err:
        print(f"no onnxruntime rung: {err}", file=sys.stderr)
        return None
    path = Path("/tmp/xception-cpu-steps-timm.onnx")
    onnx.save(onnx_proto(timm.create_model(TIMM_MODEL).eval(), torch.zeros(2, *x.shape[1:])), str(path))
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x.numpy()}
    return lambda: sess.run(None, feed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--keep-memory", action="store_true", help="keep freed memory for reuse (process-wide)")
    parser.add_argument("--compile", action="store_true", help="add the torch.compile rungs (minutes on 2 cores)")
    parser.add_argument("--json", metavar="FILE", help="write the raw timings here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_memory else False

    torch.manual_seed(0)
    model = build_model("legacy_xception").eval()
    x = torch.randn(args.batch_size, 3, args.input_size, args.input_size)
    ort_run = onnxruntime_rung(x, args.threads)
    cpu = torch.device("cpu")
    with torch.inference_mode():
        runs = rungs(model, x, args.compile)
        if ort_run is not None:
            runs["onnxruntime on timm's export"] = ort_run
        gemm, gemm_flops, _ = gemm_flops_runner(cpu)
        runs["GEMM 2048² (anchor)"] = gemm
        for run in runs.values():  # warm-up
            run()
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times = time_in_turns(runs, args.repeats, lambda fn: time_call(fn, cpu),
                              lambda m: print(m, file=sys.stderr, flush=True))
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before

    flops = flops_per_image(BenchConfig(input_size=args.input_size))
    gemm_ms = statistics.median(times.pop("GEMM 2048² (anchor)"))
    gemm_rate = gemm_flops / (gemm_ms / 1e3)
    at_gemm = gemm_rate / flops
    base = statistics.median(times["1 plain NCHW"])
    ort_ms = statistics.median(times.get("onnxruntime on timm's export", [float("nan")]))
    print(f"batch {args.batch_size}, {args.input_size} px, {torch.get_num_threads()} threads, keep_memory={kept}, "
          f"{args.repeats} repeats in turns; page faults during timing: {faults:,}")
    print(f"{'rung':40s} {'median ms':>10s} {'img/s':>7s} {'vs plain':>9s} {'vs ort':>7s} {'of GEMM':>8s}")
    for name, t in times.items():
        med = statistics.median(t)
        ips = args.batch_size / (med / 1e3)
        print(f"{name:40s} {med:10.0f} {ips:7.2f} {base / med:8.2f}× {ort_ms / med:6.2f}× {ips / at_gemm:7.2f}×")
    print(f"GEMM anchor: {gemm_rate / 1e9:.1f} GFLOP/s = {at_gemm:.2f} img/s at {flops / 1e9:.2f} GFLOP/image")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "settings": vars(args) | {"keep_memory": kept, "threads": torch.get_num_threads()},
            "environment": environment(torch.device("cpu")), "times_ms": times, "gemm_ms": gemm_ms,
            "gemm_gflops": gemm_rate / 1e9, "flops_per_image": flops, "page_faults": faults,
        }, indent=2))


if __name__ == "__main__":
    main()

"""``xception bench``: throughput, latency and peak memory of every mode, against timm and ONNX Runtime."""

from __future__ import annotations

import argparse
import sys

from ._common import add_model_options, print_json


def register(sub: argparse._SubParsersAction) -> None:
    from ..bench import ALL_MODES, DEFAULT_MODES

    p = sub.add_parser(
        "bench",
        help="measure inference/training speed and memory against timm, ONNX Runtime and a GEMM anchor",
        description="Benchmark our model in each mode (eager, compiled, the fast path of xception.optimize)\n"
        "beside timm's legacy_xception and ONNX Runtime on either's ONNX export, all in one process on the\n"
        "same input. Contenders are timed in turns (repeat 1 of each, then repeat 2, ...) so that machine\n"
        "noise hits them alike; figures are medians, latency percentiles are per batch, warm-up is excluded.\n"
        "A 2048² matmul (float32 on CPU, bfloat16 on GPU) runs in the same turns as an anchor; every output\n"
        "is checked against the float32 eager model (max err).",
        epilog="modes: " + ", ".join(ALL_MODES) + "\n"
        f"defaults: cpu {','.join(DEFAULT_MODES['cpu'])}; cuda {','.join(DEFAULT_MODES['cuda'])}\n\n"
        "examples:\n"
        "  xception bench                                   # CPU, batch 8, 299 px\n"
        "  xception bench --modes eager,fast,compiled,fast-compiled,timm,ort-timm,ort-ours --repeats 15\n"
        "  xception bench --device cuda --batch-size 256 --json --out gpu.json\n"
        "  xception bench --device cuda --modes train-eager,train-timm --train-batch-size 128\n"
        "  xception bench --model xception41 --input-size 224 -o width=0.5\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="legacy_xception",
                   help="our model to measure (default: legacy_xception, the same network as timm's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch (default: 8 on CPU, 256 on CUDA)")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="training-step batch (default: 128 on CUDA, else the inference batch)")
    p.add_argument("--input-size", type=int, default=299, help="image side in pixels (default: 299)")
    p.add_argument("--modes", default=None, help="comma-separated modes (default: the device's set, see below)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per mode, taken in turns (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per mode first (default: 2)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 CPU, bfloat16 CUDA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and ONNX Runtime alike")
    p.add_argument("--no-keep-memory", action="store_true",
                   help="leave glibc's allocator alone (by default freed memory is kept for reuse on CPU, "
                   "for every contender alike; see xception.fast.memory)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of the table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, format_report, parse_device, run_benchmark, write_report

    cuda = parse_device(args.device).type == "cuda"
    cfg = BenchConfig(
        model=args.model, device=args.device, batch_size=args.batch_size or (256 if cuda else 8),
        train_batch_size=args.train_batch_size or (128 if cuda else None), input_size=args.input_size,
        modes=[m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None,
        repeats=args.repeats, warmup=args.warmup, dtype=args.dtype, threads=args.threads,
        keep_memory=not args.no_keep_memory, measure_memory=not args.no_memory,
        model_options=dict(args.options),
    ).validate()

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    report = run_benchmark(cfg, progress=progress)
    if args.out:
        write_report(report, args.out)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
        if args.out:
            print(f"report: {args.out}")
    return 0

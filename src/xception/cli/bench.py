"""``xception bench``: throughput, latency and peak memory of every mode, against timm, ONNX Runtime and
OpenVINO."""

from __future__ import annotations

import argparse
import sys

from ._common import add_model_options, bits, print_json

MODES_PLACEHOLDER = "{modes}"


class _HelpWithModes(argparse.RawDescriptionHelpFormatter):
    """Fills in the list of modes only when the help is printed: the list is the benchmark's table of
    contenders, and importing it (and torch) at registration would slow down every command's start."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if MODES_PLACEHOLDER in text:
            text = text.replace(MODES_PLACEHOLDER, _modes_help())
        return super()._fill_text(text, width, indent)


def _modes_help() -> str:
    from ..bench import CONTENDERS, DEFAULT_MODES

    width = max(len(spec.name) for spec in CONTENDERS)
    lines = [f"  {spec.name:{width}s}  {spec.about}" for spec in CONTENDERS]
    defaults = "; ".join(f"{device} {','.join(modes)}" for device, modes in DEFAULT_MODES.items())
    return "modes:\n" + "\n".join(lines) + f"\ndefaults: {defaults}"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure inference/training speed and memory against timm, ONNX Runtime, OpenVINO and a GEMM anchor",
        description="Benchmark our model in each mode (eager, compiled, the fast path of xception.optimize)\n"
        "beside timm's legacy_xception, and ONNX Runtime and OpenVINO on either's ONNX export, all in one\n"
        "process on the same input. Contenders are timed in turns (repeat 1 of each, then repeat 2, ...) so\n"
        "that machine noise hits them alike; figures are medians, latency percentiles are per batch, warm-up\n"
        "is excluded. A 2048² matmul (float32 on CPU, bfloat16 on GPU) runs in the same turns as an anchor;\n"
        "every output is checked against the float32 eager model (max err). Ratios are only taken between\n"
        "contenders of the same precision. Our model's contenders open its files (weights, ONNX, int8)\n"
        "through the inference layer; the int8 ones are all calibrated on the same images.",
        epilog=f"{MODES_PLACEHOLDER}\n\n"
        "examples:\n"
        "  xception bench                                        # CPU, batch 8, 299 px\n"
        "  xception bench --modes eager,fast,compiled,fast-compiled,timm,ort-timm,ort-ours --repeats 15\n"
        "  xception bench --modes fast,ort-timm,ov-timm,fast-bf16,ov-timm-bf16 --threads 2\n"
        "  xception bench --modes fast,fast-int8,ort-int8,ov-int8 --calibration-images 32   # int8 vs int8\n"
        "  xception bench --device cuda --json --out gpu.json    # GPU, batch 256\n"
        "  xception bench --device cuda --modes train-eager,train-timm   # training batch 128\n"
        "  xception bench --model xception41 --input-size 224 --set model.width=0.5\n",
        formatter_class=_HelpWithModes,
    )
    p.add_argument("--model", default="legacy_xception",
                   help="our model to measure (default: legacy_xception, the same network as timm's)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--batch-size", type=int, default=None, help="inference batch (default: 8 on CPU, 256 on CUDA)")
    p.add_argument("--train-batch-size", type=int, default=None,
                   help="training-step batch (default: 128 on CUDA, else the inference batch)")
    p.add_argument("--input-size", type=int, default=299, help="image side in pixels (default: 299)")
    p.add_argument("--modes", default=None, help="comma-separated modes (default: the device's set, see below)")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per mode, taken in turns (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per mode first (default: 2)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: float32 CPU, bfloat16 CUDA)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch, ONNX Runtime and OpenVINO alike")
    p.add_argument("--no-keep-memory", action="store_true",
                   help="leave glibc's allocator alone (by default freed memory is kept for reuse on CPU, "
                   "for every contender alike; see xception.fast.memory)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    p.add_argument("--calibration-images", type=int, default=16, metavar="N",
                   help="random images every int8 contender is calibrated on, the same for all (default: 16)")
    p.add_argument("--weight-bits", type=bits, choices=("auto", 8, 7), default="auto",
                   help="the int8 contenders' weights: 8 or 7 bits, or auto (default: what this CPU runs fastest; "
                   "see xception quantize --help)")
    p.add_argument("--activation-bits", type=bits, choices=("auto", 8, 7), default="auto",
                   help="fast-int8's activations: 8 or 7 bits, or auto (default; see xception quantize --help); the "
                   "ONNX contenders keep 8, which ONNX's QDQ format is limited to")
    p.add_argument("--json", action="store_true", help="print the full report as JSON instead of the table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON report to FILE")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..bench import BenchConfig, format_report, run_benchmark, write_report

    cfg = BenchConfig(
        model=args.model, device=args.device, batch_size=args.batch_size, train_batch_size=args.train_batch_size,
        input_size=args.input_size,
        modes=[m.strip() for m in args.modes.split(",") if m.strip()] if args.modes else None,
        repeats=args.repeats, warmup=args.warmup, dtype=args.dtype, threads=args.threads,
        keep_memory=not args.no_keep_memory, measure_memory=not args.no_memory,
        model_options=dict(args.options), calibration_images=args.calibration_images,
        weight_bits=args.weight_bits, activation_bits=args.activation_bits,
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

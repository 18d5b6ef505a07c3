"""The fast path with and without replaying its kernel calls (``optimize(replay=...)``), in turns.

The paper's network (random weights, real BatchNorm statistics, as ``fp32_layers.py``) at 299 px on the native
float32 kernels, or with ``--int8`` quantised (``xception.quantize``, min/max on 8 random images, the widths this
CPU runs fastest) on the int8 kernels: one copy replays each shape's recorded calls (the default), the other runs
layer by layer through Python. Both copies are called in turns, pass after pass; the report gives per copy the
minimum and the median of the passes (wall ms), the time spent inside the kernels in the layer-by-layer passes
(the rest is what replaying can save), and checks that both give the same bits. With ``--int8`` it also times
the input's quantisation both ways: the reference's PyTorch ops then a copy to NHWC, and the one kernel call.

    PYTHONPATH=src python benchmarks/replay_ab.py [--int8] [--batch 1] [--threads 2] [--repeats 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import xception
from int8_layers import paper_network
from xception.bench import environment
from xception.fast import native
from xception.quantize import load_quantized, quantize
from xception.quantize import native as int8_kernels


def float_copies(model: torch.nn.Module) -> tuple[dict[str, Callable[..., Any]], tuple[str, ...], str]:
    """The float32 fast path replayed and layer by layer, the kernel entry points, their ISA."""
    return ({"replay": xception.optimize(model, kernels="native"),
             "layer by layer": xception.optimize(model, kernels="native", replay=False)},
            ("xc_conv_forward", "xc_pool_forward"), native.isa())


def int8_copies(model: torch.nn.Module, calibration: torch.Tensor
                ) -> tuple[dict[str, Callable[..., Any]], tuple[str, ...], str]:
    """The int8 network replayed and layer by layer, the kernel entry points, their ISA and widths."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "paper.int8.safetensors"
        labels = torch.zeros(len(calibration), dtype=torch.long)
        result = quantize(model, calibration, held_out=(calibration, labels), methods=["minmax"], out=path)
        reference = load_quantized(path)
    bits = f"{result.report.weight_bits}-bit weights, {result.report.activation_bits}-bit activations"
    return ({"replay": int8_kernels.NativeQuantizedXception(reference),
             "layer by layer": int8_kernels.NativeQuantizedXception(reference, replay=False)},
            ("xc_qconv_forward", "xc_qpool_forward", "xc_quantize_input"), f"int8 {int8_kernels.isa()}, {bits}")


def input_quantisation(network: Any, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median ms of the input's quantisation: PyTorch ops then a copy to NHWC, and the kernel call."""
    reference = network.reference
    ways = {"pytorch_ops_then_nhwc_copy": lambda: reference.quantize_input(x).q.permute(0, 2, 3, 1).contiguous(),
            "kernel": lambda: network.input_codes(x)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--int8", action="store_true", help="the int8 network instead of the float32 one")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    if not (int8_kernels.available() if args.int8 else native.available()):
        print(f"no compiled {'int8' if args.int8 else 'float32'} kernels for this CPU", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)
    size = args.input_size
    model, calibration, x = paper_network(args.batch, size)
    copies, entry_points, kernels_used = int8_copies(model, calibration) if args.int8 else float_copies(model)
    with torch.no_grad():
        outputs = {name: fast(x) for name, fast in copies.items()}  # the first pass records the calls
    same = torch.equal(*outputs.values())

    times: dict[str, list[float]] = {name: [] for name in copies}
    for _ in range(args.repeats):
        for name, fast in copies.items():
            start = time.perf_counter()
            with torch.no_grad():
                fast(x)
            times[name].append((time.perf_counter() - start) * 1000)

    # Then the layer-by-layer copy alone, its kernel calls timed: the rest of its pass is what replaying saves.
    lib = native._library()
    in_kernels = [0.0]
    originals = {name: getattr(lib, name) for name in entry_points}
    for name, call in originals.items():
        def timed(*a: object, call: Any = call) -> Any:
            start = time.perf_counter()
            status = call(*a)
            in_kernels[0] += time.perf_counter() - start
            return status

        setattr(lib, name, timed)
    kernel_ms: list[float] = []
    try:
        for _ in range(max(args.repeats // 3, 3)):
            in_kernels[0] = 0.0
            with torch.no_grad():
                copies["layer by layer"](x)
            kernel_ms.append(in_kernels[0] * 1000)
    finally:
        for name, call in originals.items():
            setattr(lib, name, call)

    rows = {name: {"min_ms": round(min(t), 2), "median_ms": round(statistics.median(t), 2)}
            for name, t in times.items()}
    rows["layer by layer"]["alone_in_kernels_median_ms"] = round(statistics.median(kernel_ms), 2)
    report = {"environment": environment(torch.device("cpu")), "kernels": kernels_used, "batch": args.batch,
              "input_size": size, "threads": args.threads, "repeats": args.repeats, "same_bits": same,
              "passes": rows, "times_ms": {k: [round(v, 2) for v in t] for k, t in times.items()}}
    if args.int8:
        report["input_quantisation_ms"] = input_quantisation(copies["replay"], x, args.repeats)
    print(f"{report['environment']['cpu']} · {kernels_used} · batch {args.batch} · {size} px · "
          f"{args.threads} thread(s) · wall ms, {args.repeats} passes in turns · same bits: {same}")
    for name, row in rows.items():
        kernels = row.get("alone_in_kernels_median_ms")
        extra = f"  (alone, passes spend {kernels:.1f} in the kernels)" if kernels is not None else ""
        print(f"{name:>15}: min {row['min_ms']:8.1f}  median {row['median_ms']:8.1f}{extra}")
    ratio = rows["layer by layer"]["median_ms"] / rows["replay"]["median_ms"]
    print(f"replay: {ratio:.3f}× the layer-by-layer speed (medians)")
    if args.int8:
        quantisation = report["input_quantisation_ms"]
        print(f"the input's quantisation (median ms): PyTorch ops then an NHWC copy "
              f"{quantisation['pytorch_ops_then_nhwc_copy']:.2f}, the kernel {quantisation['kernel']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

"""A/B of builds of the native kernel library: the same network, each build's kernels called in turns.

Each variant is the library compiled with its own preprocessor flags (``--variant NAME=FLAGS``; the name
``base`` with no flags is the code as it is; ``NAME=@REV`` the kernels as git revision REV has them), loaded
side by side in this process, and the float32 fast path of the paper's network (random weights, real BatchNorm
statistics, as ``fp32_layers.py``) runs its layers on one variant after the other, pass after pass, on one
thread (``--threads``: more), each with the weights packed by its own build (so that builds may lay B out
differently, e.g. ``-DXC_KC=N``): on a noisy host only differences within one such run mean anything; ``--int8``
times the int8 network (quantised as ``xception quantize`` does by default) instead, ``--bf16`` the bfloat16 one
on the native bf16 kernels (AVX-512 BF16). Every variant's logits
are checked against the first's. Reports per layer and per stage the minimum and the median of the passes
(ms, wall time).

    PYTHONPATH=src python benchmarks/kernel_ab.py --variant base= --variant all=-DXC_GROUP=0 [--variant old=@HEAD] \\
        [--int8 | --bf16] [--isa avx2] [--batch 8] [--input-size 299] [--repeats 10] [--threads 1] [--json out.json]

The flags the kernels read: ``XC_GROUP`` (how many NR-column panels of B pass each MR-row slice of A before the
next slice comes; 0: all of them), ``XC_L2`` (the KB of A and of C's group columns a pixel block may take),
``XC_TASKS`` (the fewest tasks per thread a GEMM is split into), ``XC_KC`` (the depth of B's panels),
``XC_AHEAD`` (0: no fetching of the next block; 2: k×k patches too), ``XC_AHEAD_OUT`` (how the next block's
output lines are fetched: 1 for reading, 2 for writing, 0 not at all), ``XC_WINDOWS`` (0: k×k convs copy their
patches; 2: strided 1×1 convs read their input in place too), ``XC_SEGS`` (0: a window read in place takes one
tile call per window row), ``XC_SPIN`` (the pauses an idle worker spins
before it sleeps) and, for int8, ``XC_QROWS`` (0: an int8 patch row copied pixel by pixel), ``XC_QDW_QUADS``
(0: the VNNI build's depthwise step in float32, not on byte quads), ``XC_QREGS`` (0: every tile's sums stored
and finished by the general epilogue, not from the registers), ``XC_QEVEN`` (0: tiles of MR rows and a short
last one), ``XC_QGATHER`` (0: the first conv's windows copied row by row) and ``XC_QL2`` (the KB of an int8
block's A and C).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import xception
from int8_layers import paper_network, stage
from xception.bench import environment
from xception.fast import native
from xception.hardware import KERNEL_ISAS
from xception.quantize import load_quantized, quantize
from xception.quantize import native as int8_kernels

ROOT = Path(__file__).resolve().parents[1]


def build(name: str, flags: str, folder: Path) -> Path:
    """The kernel library compiled with ``flags`` (``CPPFLAGS``), in ``folder``/``name``; flags that start with
    ``@REV`` build the kernels' sources as git revision REV has them (then any flags after a space)."""
    out = folder / name
    tree = ROOT
    if flags.startswith("@"):
        rev, _, flags = flags[1:].partition(" ")
        tree = out / "tree"
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", rev, "setup.py", "src/xception/fast/csrc"], cwd=ROOT,
                                 capture_output=True)
        if archive.returncode:
            raise SystemExit(f"git archive {rev} failed: {archive.stderr.decode(errors='replace').strip()}")
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    proc = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--build-temp", str(out / "tmp"),
                           "--build-lib", str(out / "lib")], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "CPPFLAGS": flags})
    found = sorted((out / "lib").rglob("_cpu*.so"))
    if proc.returncode or not found:
        raise SystemExit(f"building {name} ({flags or 'no flags'}) failed:\n{proc.stderr[-2000:]}")
    return found[0]


def use(lib: ctypes.CDLL) -> None:
    """Make the fast path's kernel calls (float32 and int8) go to ``lib`` from now on."""
    native.load_kernels = lambda: lib
    native._library.cache_clear()
    int8_kernels._library.cache_clear()
    native._library()
    int8_kernels._library()


def network(model: torch.nn.Module, calibration: torch.Tensor, int8: bool, folder: Path,
            bf16: bool = False) -> torch.nn.Module:
    """The float32 (``bf16``: bfloat16) fast path of ``model`` or, with ``int8``, its int8 network (the widths this
    CPU runs fastest, min/max on ``calibration``), all layer by layer so that the timing hooks run."""
    if not int8:
        dtype = torch.bfloat16 if bf16 else torch.float32
        return xception.optimize(model, dtype=dtype, kernels="native", replay=False)
    path = folder / "paper.int8.safetensors"
    labels = torch.zeros(len(calibration), dtype=torch.long)
    quantize(model, calibration, held_out=(calibration, labels), methods=["minmax"], out=path)
    return int8_kernels.NativeQuantizedXception(load_quantized(path), replay=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", required=True, metavar="NAME=FLAGS",
                        help="a build to compare: its name and its preprocessor flags, or @REV: the kernels of "
                        "git revision REV (repeatable, two or more)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--input-size", type=int, default=299)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="kernel threads (default 1; with more, each build's pool spins about 0.3 ms after a "
                        "layer, far less than a pass, so the builds' passes in turns do not overlap)")
    parser.add_argument("--int8", action="store_true", help="the int8 network (quantised as xception quantize "
                        "does by default) instead of the float32 one")
    parser.add_argument("--bf16", action="store_true", help="the bfloat16 network on the native bf16 kernels")
    parser.add_argument("--isa", choices=KERNEL_ISAS[1:], help="run every build's kernels for this instruction set "
                        "(a lower one than the CPU's best: as XCEPTION_CPU_ISA does)")
    parser.add_argument("--json", type=Path, help="write the report here")
    args = parser.parse_args(argv)
    variants = dict(v.split("=", 1) if "=" in v else (v, "") for v in args.variant)
    if len(variants) < 2:
        parser.error("give two or more --variant NAME=FLAGS, with distinct names")
    if args.int8 and args.bf16:
        parser.error("--int8 or --bf16, not both")
    if not native.available():
        print("no compiled kernels for this CPU", file=sys.stderr)
        return 1
    torch.set_num_threads(args.threads)  # each build's pool takes its size from here
    size = args.input_size
    model, calibration, x = paper_network(args.batch, size)
    with tempfile.TemporaryDirectory() as tmp:
        libs = {}
        for name, flags in variants.items():
            print(f"building {name} ({flags or 'no flags'})", flush=True)
            libs[name] = ctypes.CDLL(str(build(name, flags, Path(tmp))))
            if args.isa:
                libs[name].xc_select_isa(KERNEL_ISAS.index(args.isa))
        layers = (int8_kernels.NativeQConv, int8_kernels.NativeQMaxPool) if args.int8 else \
            (native.NativeConv, native.NativeMaxPool)
        times: dict[str, float] = {}
        nets = {}
        for variant, lib in libs.items():  # each build packs its own weights: the layout may differ between builds
            use(lib)
            nets[variant] = fast = network(model, calibration, args.int8, Path(tmp) / variant, args.bf16)
            for name, module in fast.named_modules():
                if isinstance(module, layers):
                    forward = module.forward

                    def timed(*a: Any, forward: Any = forward, name: str = name.removeprefix("program."),
                              **k: Any) -> Any:
                        start = time.perf_counter()
                        out = forward(*a, **k)
                        times[name] = (time.perf_counter() - start) * 1000
                        return out

                    module.forward = timed
        print(f"timing {len(libs)} builds, {args.repeats} passes each after a warm-up", flush=True)
        passes: dict[str, list[dict[str, float]]] = {name: [] for name in libs}
        logits: dict[str, torch.Tensor] = {}
        with torch.inference_mode():
            for turn in range(args.repeats + 1):  # the first turn warms up
                for name, lib in libs.items():
                    use(lib)
                    time.sleep(0.05)  # the last build's idle workers stop spinning before this one's pass
                    times.clear()
                    start = time.perf_counter()
                    logits[name] = nets[name](x)
                    if turn:
                        passes[name].append({**times, "total": (time.perf_counter() - start) * 1000})
    first = next(iter(logits.values()))
    scale = first.abs().max().item()
    report: dict[str, Any] = {"environment": environment(torch.device("cpu")), "isa": args.isa, "batch": args.batch,
                              "input_size": size, "repeats": args.repeats, "threads": args.threads, "int8": args.int8,
                              "bf16": args.bf16, "variants": variants, "results": {}}
    for name, runs in passes.items():
        layers = {layer: [run[layer] for run in runs] for layer in runs[0]}
        stages: dict[str, list[float]] = {}
        for layer, values in layers.items():
            if layer != "total":
                sums = stages.setdefault(stage(layer), [0.0] * len(values))
                for i, value in enumerate(values):
                    sums[i] += value
        summary = {key: {"min": round(min(v), 2), "median": round(statistics.median(v), 2)}
                   for key, v in {**layers, **stages}.items()}
        report["results"][name] = {"max_err": (logits[name] - first).abs().max().item() / scale, **summary}
    names = list(libs)
    print(f"{report['environment']['cpu']} · batch {args.batch} · {size} px · {args.threads} thread(s) · ms, "
          f"min / median of {args.repeats} passes in turns")
    print(f"{'':24}" + "".join(f"{n:>20}" for n in names))
    for key in report["results"][names[0]]:
        if key == "max_err":
            continue
        cells = (report["results"][n][key] for n in names)
        print(f"{key:24}" + "".join(f"{cell['min']:>11.2f} / {cell['median']:<6.1f}" for cell in cells))
    print("max err vs " + names[0] + ": " + ", ".join(f"{n} {report['results'][n]['max_err']:.1e}" for n in names[1:]))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check: is every fast path correct on this GPU, and how do its speed and memory compare with timm?

Run through ``benchmarks/gpu_check.sh`` (``PYTHONPATH=src``, results under ``$OUT``, default ./bench-out).
Sections run as separate processes with their own time limits, so that a crash (a kernel fault) or a
slow compile in one cannot take the others with it; the whole check stays within ``--budget`` seconds:

1. correctness   every fast path (PyTorch kernels, Triton kernels, per-layer auto choice, CUDA graphs,
                 fp16, float32) against the float32 eager model, TF32 off, on four model families.
2. inference     bf16, batch 256: our eager / fast / fast + CUDA graphs against timm eager.
3. training      bf16 autocast, batch 128, one SGD step: ours against timm, with peak memory.
4. compiled      bf16, batch 256: timm compiled against our fast path compiled (± CUDA graphs).

Each section writes ``<section>.json``; the summary table is printed last and saved as ``summary.md``.
``--device cpu --tiny`` runs the same code on a CPU with a tiny model, to check the script itself.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# The repository's own sources, whatever else is installed (gpu_check.sh also sets PYTHONPATH=src).
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

SECTIONS = ("correctness", "inference", "training", "compiled")
# Share of the budget each section may use at most (the last section run gets what is left).
SHARES = {"correctness": 0.3, "inference": 0.15, "training": 0.13}
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2, "float16": 1e-2}
AUTOCAST_MARGIN = 1.5  # a bf16 fast path may drift up to 1.5× as far as bf16 autocast of the plain model


def section_correctness(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import xception
    from xception.bench import calibrate_batch_norms, environment, relative_error

    device = torch.device(args.device)
    torch.backends.cudnn.allow_tf32 = False  # a true float32 reference
    torch.backends.cuda.matmul.allow_tf32 = False
    cuda = device.type == "cuda"
    size, batch = (71, 2) if args.tiny else (299, 8)
    opts = {"width": 0.125, "middle_repeats": 1} if args.tiny else {}
    families = ["legacy_xception", "xception"] if args.tiny else ["legacy_xception", "xception", "xception41",
                                                                   "xception41p"]
    variants: list[tuple[str, dict[str, Any]]] = [
        ("torch kernels, bf16", {"kernels": "torch", "dtype": torch.bfloat16}),
        ("auto kernels, bf16", {"kernels": "auto", "dtype": torch.bfloat16}),
    ]
    if cuda:
        variants += [
            ("triton kernels, bf16", {"kernels": "triton", "dtype": torch.bfloat16}),
            ("triton kernels, float32", {"kernels": "triton", "dtype": torch.float32}),
            ("cudnn fused kernels, float32", {"kernels": "cudnn", "dtype": torch.float32}),
            ("experimental kernels, bf16", {"kernels": "experimental", "dtype": torch.bfloat16}),
            ("auto kernels, bf16, CUDA graphs", {"kernels": "auto", "dtype": torch.bfloat16, "cuda_graphs": True}),
        ]
    checks, choices = [], {}
    gen = torch.Generator().manual_seed(0)
    for family in families:
        torch.manual_seed(0)
        model = xception.create_model(family, **opts).eval()
        calibrate_batch_norms(model, torch.randn(2, 3, size, size, generator=gen))
        x = torch.randn(batch, 3, size, size, generator=gen).to(device)
        with torch.inference_mode():
            reference = model.to(device)(x).float().cpu()
            # How far bf16 alone moves the plain model (autocast, as users run it): the deeper aligned
            # families drift further than a fixed tolerance allows, whatever the kernels.
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                autocast_err = relative_error(model(x), reference) if cuda else 0.0
        model.cpu()
        # The aligned families get the default path and plain PyTorch kernels, to stay within the budget.
        paper = family in ("legacy_xception", "xception")
        for label, kw in (v for v in variants if paper or v[0] in ("auto kernels, bf16", "torch kernels, bf16")):
            start = time.perf_counter()
            try:
                fast = xception.optimize(model, device=device, batch_size=batch, input_size=size, **kw)
                err = relative_error(fast(x), reference)
                tol = TOLERANCE[str(kw["dtype"]).removeprefix("torch.")]
                if kw["dtype"] == torch.bfloat16:  # no worse than bf16 autocast of the plain model, with a margin
                    tol = max(tol, AUTOCAST_MARGIN * autocast_err)
                status = "PASS" if err <= tol else "FAIL"
                if fast.kernel_choices:
                    choices[f"{family}, {label}"] = fast.kernel_choices
                kernels = fast.settings["kernels"]
            except Exception as e:  # reported as a failure of this variant; the others still run
                err, tol, status, kernels = None, None, f"ERROR {type(e).__name__}: {e}", None
            checks.append({"model": family, "variant": label, "max_rel_err": err, "tolerance": tol,
                           "bf16_autocast_err": autocast_err,
                           "status": status, "kernels": kernels, "seconds": round(time.perf_counter() - start, 1)})
            print(f"  {family:16s} {label:34s} {status:5s} err {err if err is None else f'{err:.1e}'}", flush=True)
            report = {"environment": environment(device), "batch_size": batch, "input_size": size, "checks": checks,
                      "kernel_choices": choices}
            _save(args, "correctness", report)  # so far: a section stopped at its time limit keeps its checks
    return report


def _bench(args: argparse.Namespace, modes: tuple[str, ...], batch: int, repeats: int, **kw: Any) -> dict[str, Any]:
    from xception.bench import BenchConfig, format_report, run_benchmark

    opts = {"width": 0.125, "middle_repeats": 1} if args.tiny else {}
    cfg = BenchConfig(model="legacy_xception", device=args.device, batch_size=batch,
                      input_size=71 if args.tiny else 299, modes=modes, repeats=repeats,
                      warmup=1 if args.tiny else 3, model_options=opts, **kw)
    report = run_benchmark(cfg, progress=lambda m: print(f"  {m}", flush=True))
    print(format_report(report), flush=True)
    return report


def section_inference(args: argparse.Namespace) -> dict[str, Any]:
    modes = ("eager", "fast", "fast-graphs", "timm")
    return _bench(args, modes, 4 if args.tiny else 256, 10)


def section_training(args: argparse.Namespace) -> dict[str, Any]:
    modes = ("train-eager", "train-timm")
    return _bench(args, modes, 4 if args.tiny else 128, 5, train_batch_size=4 if args.tiny else 128)


def section_compiled(args: argparse.Namespace) -> dict[str, Any]:
    # CUDA graphs on top of compile bought nothing for timm at batch 256 (PERF_NOTES): opt-in (--all).
    modes = ("timm", "fast", "fast-graphs", "timm-compiled", "fast-compiled")
    if args.all:
        modes += ("fast-compiled-graphs",)
    return _bench(args, modes, 4 if args.tiny else 256, 10, measure_memory=False)


# -- the driver -------------------------------------------------------------------------------------------


def _save(args: argparse.Namespace, section: str, report: dict[str, Any]) -> None:
    path = Path(args.out) / f"{section}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)


def run_section(name: str, args: argparse.Namespace, out: Path, timeout: float) -> dict[str, Any] | None:
    """Run one section in its own process, within ``timeout`` seconds; its JSON, or None."""
    print(f"== {name} (at most {timeout:.0f} s)", flush=True)
    cmd = [sys.executable, __file__, "--section", name, "--device", args.device, "--out", str(out)]
    cmd += ["--tiny"] if args.tiny else []
    cmd += ["--all"] if args.all else []
    start = time.perf_counter()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, timeout=max(timeout, 10), check=False, env=env)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    path = out / f"{name}.json"
    print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    report["finished"] = code == 0  # False: what a section saved before it stopped
    return report


def _result(report: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    for r in (report or {}).get("results", []):
        if r["name"] == name and r["status"] == "ok":
            return r
    return None


def summary(sections: dict[str, dict[str, Any] | None], budget_used: float) -> str:
    """The short table printed last: correctness tally, then every mode with its same-run ratios."""
    lines = ["# GPU check summary", ""]
    corr = sections.get("correctness")
    if corr:
        env = corr["environment"]
        lines.append(f"device: {env.get('gpu', env['device'])}; torch {env['torch']}, CUDA {env.get('cuda')}, "
                     f"cuDNN {env.get('cudnn')}, triton {env['triton']}, timm {env['timm']}")
        passed = sum(c["status"] == "PASS" for c in corr["checks"])
        if not corr.get("finished", True):
            lines.append("correctness: the section stopped at its time limit; the checks it finished:")
        lines.append(f"correctness: {passed}/{len(corr['checks'])} fast-path checks pass "
                     f"(max |Δ| / max |logit| vs float32 eager, TF32 off: fp32 ≤ {TOLERANCE['float32']}; "
                     f"bf16 ≤ {TOLERANCE['bfloat16']} or ≤ {AUTOCAST_MARGIN}× the plain model's bf16-autocast error)")
        autocast = {c["model"]: c.get("bf16_autocast_err") for c in corr["checks"]}
        lines.append("  plain model under bf16 autocast: " + ", ".join(
            f"{m} {e:.1e}" for m, e in autocast.items() if e is not None))
        for c in corr["checks"]:
            if c["status"] != "PASS":
                lines.append(f"  {c['status']}: {c['model']} / {c['variant']} (err {c['max_rel_err']})")
        for key, table in corr.get("kernel_choices", {}).items():
            wins = sum(v["backend"] == "triton" for v in table.values())
            torch_ms = sum(v.get("torch_ms", 0.0) for v in table.values())
            best_ms = sum(min(v.get("torch_ms", 1e9), v.get("triton_ms", 1e9)) for v in table.values())
            lines.append(f"  depthwise kernels ({key}): Triton faster on {wins}/{len(table)} layers; "
                         f"cuDNN {torch_ms:.2f} ms → chosen {best_ms:.2f} ms per batch of {corr['batch_size']}")
    elif "correctness" in sections:
        lines.append("correctness: section did not finish")
    lines += ["", "| section | mode | img/s | vs timm (same run) | vs timm compiled | peak MiB | max err |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for name in ("inference", "training", "compiled"):
        if name not in sections:
            continue  # not asked for
        report = sections[name]
        if report is None:
            lines.append(f"| {name} | (did not finish) | | | | | |")
            continue
        for r in report["results"]:
            if r["kind"] == "anchor":
                continue
            if r["status"] != "ok":
                lines.append(f"| {name} | {r['name']} | {r['status']}: {r['reason'][:50]} | | | | |")
                continue
            ratio = report["ratios"].get(r["name"], {})
            vs_timm = ratio.get("vs_timm", ratio.get("vs_train_timm"))
            vs_comp = ratio.get("vs_timm_compiled")
            mem = r["peak_memory_bytes"]
            err = r["details"].get("max_rel_err")
            cells = [f"{r['images_per_s']:,.0f}", "" if vs_timm is None else f"{vs_timm:.2f}×",
                     "" if vs_comp is None else f"{vs_comp:.2f}×", "" if mem is None else f"{mem / 2**20:,.0f}",
                     "" if err is None else f"{err:.1e}"]
            lines.append(f"| {name} | {r['name']} | " + " | ".join(cells) + " |")
        gemm = report["anchors"].get("gemm")
        if gemm:
            rate = f"{gemm['gflops'] / 1e3:,.0f} TFLOP/s" if gemm["gflops"] >= 1e3 else f"{gemm['gflops']:,.0f} GFLOP/s"
            lines.append(f"| {name} | GEMM anchor {gemm['size']}² {gemm['dtype']} | {rate} | | | | |")
    comp, train = sections.get("compiled"), sections.get("training")
    lines.append("")
    if comp:
        best = max((r for r in comp["results"] if r["status"] == "ok" and r["name"].startswith("fast")),
                   key=lambda r: r["images_per_s"], default=None)
        if best:
            ratio = comp["ratios"][best["name"]].get("vs_timm_compiled")
            lines.append(f"target, inference ≥ 2.0× timm compiled: best fast mode {best['name']} at "
                         f"{'n/a' if ratio is None else f'{ratio:.2f}×'}")
    if train:
        ours, timm = _result(train, "train-eager"), _result(train, "train-timm")
        if ours and timm:
            mib = [(r["peak_memory_bytes"] or 0) / 2**20 for r in (ours, timm)]
            lines.append(f"target, training ≥ 1.5× timm with peak memory ≤ timm's: "
                         f"{ours['images_per_s'] / timm['images_per_s']:.2f}×, peak {mib[0]:,.0f} vs {mib[1]:,.0f} MiB")
    lines.append(f"wall time: {budget_used:.0f} s")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "./bench-out"), help="output folder (default: $OUT)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=285.0, help="seconds for all sections together")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"a subset of {','.join(SECTIONS)}")
    parser.add_argument("--all", action="store_true", help="also compiled + CUDA graphs (one more compile)")
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small batches (checks the script)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.section:
        _save(args, args.section, globals()[f"section_{args.section}"](args))
        return 0

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine (or --device cpu --tiny to test the script)",
              file=sys.stderr)
        return 2
    start = time.perf_counter()
    wanted = [s for s in args.sections.split(",") if s]
    unknown = set(wanted) - set(SECTIONS)
    if unknown:
        print(f"gpu_check: unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    results: dict[str, dict[str, Any] | None] = {}
    wanted_in_order = [s for s in SECTIONS if s in wanted]  # the last one gets whatever time is left
    for name in SECTIONS:
        if name not in wanted:
            continue
        left = args.budget - (time.perf_counter() - start)
        timeout = left if name == wanted_in_order[-1] else min(left, SHARES[name] * args.budget)
        if left < 15:
            print(f"== {name}: skipped, budget spent", flush=True)
            results[name] = None
            continue
        results[name] = run_section(name, args, out, timeout)
    text = summary(results, time.perf_counter() - start)
    (out / "summary.md").write_text(text + "\n")
    print()
    print(text)
    ok = results.get("correctness") and all(c["status"] == "PASS" for c in results["correctness"]["checks"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

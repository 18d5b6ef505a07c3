"""Where the GPU time of one inference batch goes: the plain model under bf16 autocast against the fast path.

    PYTHONPATH=src python benchmarks/gpu_profile.py --out bench-out          # on a GPU machine
    PYTHONPATH=src python benchmarks/gpu_profile.py --device cpu --tiny      # checks the script itself

For ``legacy_xception`` (bf16, batch 256, 299 px, channels_last) it times the plain model under autocast
and ``optimize()`` with each kernel choice, with cuDNN's autotuner (``cudnn.benchmark``) off and on, then
profiles one batch of each with ``torch.profiler`` and prints the kernels that take the most device time,
grouped into families (depthwise conv, 1×1 conv, elementwise, copies/layout changes, …).
Writes ``profile.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch

import xception
from xception.bench import calibrate_batch_norms
from xception.runtime import median_ms

FAMILIES = [  # (family, pattern over the kernel name), first match wins
    ("depthwise conv", r"depthwise|dwconv|conv_depthwise|_dw_|grouped"),
    ("layout change / copy", r"nchwToNhwc|nhwcToNchw|transpose|copy_kernel|Memcpy"),
    ("conv / GEMM", r"conv|gemm|sm90|xmma|cutlass|implicit|wgrad|dgrad|fprop"),
    ("elementwise (ReLU, add, bias, BN)", r"elementwise|vectorized|batch_norm|bn_|relu|add|mul"),
    ("pooling", r"pool"),
    ("triton", r"triton|_kernel$"),
]


def family_of(name: str) -> str:
    for family, pattern in FAMILIES:
        if re.search(pattern, name, re.IGNORECASE):
            return family
    return "other"


def kernel_table(fn: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Device time per kernel of one call, summed by name and by family."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    fn()
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    by_name: dict[str, list[float]] = {}
    for event in prof.events():
        is_kernel = event.device_type.name == "CUDA" if device.type == "cuda" else event.cpu_parent is None
        if not is_kernel:
            continue
        us = event.device_time if device.type == "cuda" else event.cpu_time
        by_name.setdefault(event.name, []).append(us)
    kernels = sorted(((name, sum(v), len(v)) for name, v in by_name.items()), key=lambda k: -k[1])
    families: dict[str, float] = {}
    for name, total, _ in kernels:
        families[family_of(name)] = families.get(family_of(name), 0.0) + total
    return {
        "total_ms": sum(k[1] for k in kernels) / 1e3,
        "launches": sum(k[2] for k in kernels),
        "families_ms": {f: round(t / 1e3, 3) for f, t in sorted(families.items(), key=lambda f: -f[1])},
        "top": [{"name": n[:120], "ms": round(t / 1e3, 3), "calls": c} for n, t, c in kernels[:12]],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="./bench-out")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and batch (checks the script)")
    args = parser.parse_args()
    device = torch.device(args.device)
    size, batch = (71, 2) if args.tiny else (299, args.batch_size)
    opts = {"width": 0.125, "middle_repeats": 1} if args.tiny else {}
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    torch.manual_seed(0)
    model = xception.create_model("legacy_xception", **opts).eval()
    calibrate_batch_norms(model, torch.randn(2, 3, size, size))
    x = torch.randn(batch, 3, size, size).to(device).contiguous(memory_format=torch.channels_last)
    plain = model.to(device).to(memory_format=torch.channels_last)

    def eager() -> Any:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            return plain(x)

    x_fast = x.to(dtype)
    contenders: dict[str, Callable[[], Any]] = {"eager (autocast)": eager}
    for kernels in ("torch", "auto") if device.type == "cuda" else ("torch",):
        fast = xception.optimize(model, device=device, dtype=dtype, kernels=kernels, batch_size=batch,
                                 input_size=size)
        contenders[f"fast, {kernels} kernels"] = lambda fast=fast: fast(x_fast)

    rows: list[dict[str, Any]] = []
    for autotune in (False, True):
        torch.backends.cudnn.benchmark = autotune
        for name, fn in contenders.items():
            ms = median_ms(fn, device, 3 if args.tiny else 10, warmup=3)
            rows.append({"mode": name, "cudnn_benchmark": autotune, "ms": round(ms, 3),
                         "images_per_s": round(batch / ms * 1e3, 1)})
            print(f"  {name:22s} cudnn.benchmark={autotune!s:5s} {ms:8.2f} ms  {batch / ms * 1e3:9,.0f} img/s",
                  flush=True)
    torch.backends.cudnn.benchmark = False
    profiles = {name: kernel_table(fn, device) for name, fn in contenders.items()}

    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "batch_size": batch, "input_size": size, "dtype": str(dtype),
              "timings": rows, "profiles": profiles}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(result, indent=2))

    print(f"\n# where one batch of {batch} spends device time (ms, cudnn.benchmark off)")
    names = list(profiles)
    families = sorted({f for p in profiles.values() for f in p["families_ms"]})
    print("| family | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for fam in families:
        print(f"| {fam} | " + " | ".join(f"{profiles[n]['families_ms'].get(fam, 0.0):.2f}" for n in names) + " |")
    print("| total (launches) | " + " | ".join(f"{profiles[n]['total_ms']:.2f} ({profiles[n]['launches']})"
                                               for n in names) + " |")
    for name in names:
        print(f"\ntop kernels, {name}:")
        for k in profiles[name]["top"][:6]:
            print(f"  {k['ms']:8.3f} ms  {k['calls']:4d}×  {k['name'][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

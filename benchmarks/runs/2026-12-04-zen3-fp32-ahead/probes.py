"""The probes of 2026-12-04 (figures in probes.txt), from the repository root:

    PYTHONPATH=src python benchmarks/runs/2026-12-04-zen3-fp32-ahead/probes.py replay BATCH THREADS PASSES
    PYTHONPATH=src python benchmarks/runs/2026-12-04-zen3-fp32-ahead/probes.py huge BATCH THREADS PASSES
    PYTHONPATH=src python benchmarks/runs/2026-12-04-zen3-fp32-ahead/probes.py alone BATCH THREADS PASSES

``replay``: the fast path with its replayed calls against plain calls, passes in turns in one process. ``huge``: two
replaying copies, the activation buffers of one on 2 MB pages (``madvise(MADV_HUGEPAGE)``), in turns. ``alone``: one
replaying copy's passes back to back, with the process's huge pages at the end (run it with and without PyTorch's
``THP_MEM_ALLOC_ENABLE=1``, processes in turns).
"""

from __future__ import annotations

import mmap
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/, for int8_layers

import xception
import xception.fast.replay as replay
from int8_layers import float_model

HUGE = 2 << 20
_maps: list[mmap.mmap] = []
_empty = torch.empty


def huge_empty(size: int | tuple[int, ...], dtype: torch.dtype = torch.float32, **kw: object) -> torch.Tensor:
    """torch.empty, on 2 MB pages for the replay's flat buffers that span one or more."""
    nbytes = size * dtype.itemsize if isinstance(size, int) else 0
    if kw or nbytes < HUGE:
        return _empty(size, dtype=dtype, **kw)
    m = mmap.mmap(-1, (nbytes + HUGE - 1) // HUGE * HUGE + HUGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.madvise(mmap.MADV_HUGEPAGE)
    _maps.append(m)
    raw = torch.frombuffer(m, dtype=torch.uint8)
    start = (-raw.data_ptr()) % HUGE
    return raw[start:start + nbytes].view(dtype)


def huge_kb() -> str:
    with open("/proc/self/smaps_rollup") as f:
        return next(line.split()[1] for line in f if line.startswith("AnonHugePages"))


def main() -> None:
    probe, batch, threads, passes = sys.argv[1], *map(int, sys.argv[2:5])
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    model = float_model(torch.randn(8, 3, 299, 299))
    x = torch.randn(batch, 3, 299, 299)
    if probe == "alone":
        fast = xception.optimize(model, kernels="native")
        times = []
        with torch.inference_mode():
            for i in range(passes + 2):
                start = time.perf_counter()
                fast(x)
                if i >= 2:
                    times.append((time.perf_counter() - start) * 1000)
        print(os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
              f"min {min(times):.1f} median {statistics.median(times):.1f} hugeKB {huge_kb()}")
        return
    copies = {"replay": xception.optimize(model, kernels="native", replay=True),
              "plain": xception.optimize(model, kernels="native", replay=False)}
    if probe == "huge":
        copies = {"huge": copies["replay"], "plain": xception.optimize(model, kernels="native", replay=True)}
        with torch.inference_mode():
            empty, replay.torch.empty = replay.torch.empty, huge_empty
            copies["huge"](x)  # its first pass records the calls and plans the buffers
            replay.torch.empty = empty
    times: dict[str, list[float]] = {name: [] for name in copies}
    with torch.inference_mode():
        for turn in range(passes + 1):
            for name, fast in copies.items():
                time.sleep(0.02)
                start = time.perf_counter()
                fast(x)
                if turn:
                    times[name].append((time.perf_counter() - start) * 1000)
    for name, values in times.items():
        print(name, f"min {min(values):.1f} median {statistics.median(values):.1f}")
    if probe == "huge":
        print("AnonHugePages kB", huge_kb(), "mapped", len(_maps))


if __name__ == "__main__":
    main()

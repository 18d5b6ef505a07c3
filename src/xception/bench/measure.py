"""How contenders are measured: timing in turns, peak memory of one call, and the GEMM anchor.

Timing uses :func:`xception.runtime.time_call` (CUDA events on a GPU, ``perf_counter`` on a CPU).
Peak memory is, on CUDA, ``max_memory_allocated`` during one call minus what was allocated before it;
on CPU, the peak resident set size (sampled from ``/proc/self/statm`` every millisecond by a thread)
during one call minus the resident size just before it, after handing free heap pages back to the
kernel so that reused pages count. Both exclude the weights, which stay resident.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable
from typing import Any

import torch

from ..runtime import inference_dtype, synchronize

GEMM_SIZE = 2048


def time_in_turns(
    runs: dict[str, Callable[[], Any]], repeats: int, timer: Callable[[Callable[[], Any]], float],
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[float]]:
    """Milliseconds per call of each run, measured in turns (one call of each, ``repeats`` times over).

    Taking turns rather than measuring one contender after the other is what makes ratios between
    them trustworthy on a shared machine: a burst of load from elsewhere slows every contender alike.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(repeats):
        if progress:
            progress(f"repeat {rep + 1}/{repeats}")
        for name, run in runs.items():
            times[name].append(timer(run))
    return times


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory(fn: Callable[[], Any], device: torch.device) -> tuple[int | None, str]:
    """(bytes above the pre-call level at the call's peak, how it was measured); see the module doc."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before, "cuda max_memory_allocated - allocated before"
    if not os.path.exists("/proc/self/statm"):
        return None, "unavailable (needs /proc/self/statm)"
    from ..fast.memory import release_freed_memory

    release_freed_memory()
    before = _rss_bytes()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.001):
            peak[0] = max(peak[0], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    peak[0] = max(peak[0], _rss_bytes())
    return peak[0] - before, "peak RSS (1 ms samples) - RSS before, after malloc_trim"


def gemm_flops_runner(device: torch.device) -> tuple[Callable[[], Any], int, str]:
    """The anchor: a GEMM_SIZE² matmul (float32 on CPU, bfloat16 on CUDA), its FLOPs per call and dtype.

    ``of_gemm`` in the report is a model's throughput over the throughput it would have if all its
    FLOPs ran at this GEMM's rate, measured in the same turns.
    """
    dtype = inference_dtype(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen).to(device, dtype)
    b = torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen).to(device, dtype)
    # Several matmuls per call on GPU, where one takes ~20 µs and launch overhead would dominate.
    reps = 20 if device.type == "cuda" else 1

    def run() -> Any:
        for _ in range(reps):
            out = a @ b
        return out

    return run, 2 * GEMM_SIZE**3 * reps, str(dtype).removeprefix("torch.")

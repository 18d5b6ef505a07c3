"""The fast path's replayed pass at batch B, 1 thread, timed call by call (perf_counter around each prepared
kernel call, ~1 µs): the in-network time of every layer without Python's per-layer work, to set beside
ONNX Runtime's per-node profile (fp32_layers.py). Minimum and median over the passes, ms."""
import ctypes
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))

import xception
from int8_layers import float_model
from xception.fast import native

batch, passes = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
torch.manual_seed(1)
model = float_model(torch.randn(8, 3, 299, 299))
fast = xception.optimize(model, kernels="native")
x = torch.randn(batch, 3, 299, 299)
with torch.inference_mode():
    fast(x)
    fast(x)
runner = fast._run
plan = next(iter(runner._plans.values()))
xin = x.contiguous(memory_format=torch.channels_last)
lib = native._library()
times = [[] for _ in plan.steps]
totals = []
for _ in range(passes):
    address = xin.data_ptr()
    native._set_threads(lib)
    t_pass = time.perf_counter()
    for i, step in enumerate(plan.steps):
        if step.residual_is_input:
            step.op.residual = address
        source = address if step.source == -1 else step.source
        t = time.perf_counter()
        step.call(ctypes.byref(step.op), source, step.output)
        times[i].append((time.perf_counter() - t) * 1e3)
    totals.append((time.perf_counter() - t_pass) * 1e3)
print(f"batch {batch}, {passes} passes: whole min {min(totals):.2f} median {statistics.median(totals):.2f} ms")
print(f"sum of per-call minima {sum(min(t) for t in times):.2f} ms, "
      f"of medians {sum(statistics.median(t) for t in times):.2f}")
for i, (step, t) in enumerate(zip(plan.steps, times, strict=True)):
    op = step.op
    desc = (f"conv kind {op.kind} k{op.kernel} s{op.stride} {op.h}x{op.w}x{op.c} -> {op.oh}x{op.ow}x{op.cout}"
            if hasattr(op, "cout") else f"pool {op.h}x{op.w}x{op.c}")
    print(f"{i:3d} {min(t):7.3f} {statistics.median(t):7.3f}  {desc}")

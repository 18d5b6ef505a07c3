"""Seconds per training step (forward, backward, SGD update) of the demo's model with and without output stride 8,
batch 128 at 28 px, channels-last, the default torch threads: minimum and median of 11 steps after one."""

import statistics
import time

import torch

from xception.models import build_model

for output_stride in (None, 8):
    model = build_model("xception", num_classes=10, in_chans=1, width=0.125, middle_repeats=2, stem="small",
                        output_stride=output_stride).to(memory_format=torch.channels_last)
    x = torch.randn(128, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    times = []
    for _ in range(12):
        start = time.perf_counter()
        model(x).logsumexp(1).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    print(f"output_stride {output_stride}: {min(times[1:]):.3f} s min, {statistics.median(times[1:]):.3f} s median")

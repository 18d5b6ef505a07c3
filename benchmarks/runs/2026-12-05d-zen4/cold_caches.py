"""Batch-1 int8 passes (1 thread) with the caches warm, and with a 96 MB buffer written between passes (every
weight then comes from DRAM): 30 passes each way, twice, in turns; minimum and median ms.

    PYTHONPATH=src python benchmarks/runs/2026-12-05d-zen4/cold_caches.py
"""

import statistics
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from int8_layers import quantized_paper_network

torch.set_num_threads(1)
network, x = quantized_paper_network(1)
for _ in range(3):
    network(x)
junk = torch.zeros(96 * 1024 * 1024 // 4)
for _ in range(2):
    for cold in (False, True):
        times = []
        for _ in range(30):
            if cold:
                junk.add_(1.0)
            start = time.perf_counter()
            network(x)
            times.append(time.perf_counter() - start)
        print("cold" if cold else "warm", f"min {min(times) * 1e3:.2f} median {statistics.median(times) * 1e3:.2f}")

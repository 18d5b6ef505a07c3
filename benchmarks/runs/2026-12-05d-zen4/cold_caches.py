"""Batch-1 int8 passes (1 thread) with the caches warm, and with a 96 MB buffer written between passes (every
weight then comes from DRAM): 30 passes each way, twice, in turns; minimum and median ms.

    PYTHONPATH=src python benchmarks/runs/2026-12-05d-zen4/cold_caches.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, "benchmarks")
from int8_layers import paper_network
from xception.quantize import load_quantized, native, quantize

torch.set_num_threads(1)
model, calibration, x = paper_network(1, 299)
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "paper.int8.safetensors"
    quantize(model, calibration, held_out=(calibration, torch.zeros(8, dtype=torch.long)), methods=["minmax"],
             weight_bits=8, out=path)
    network = native.NativeQuantizedXception(load_quantized(path))
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

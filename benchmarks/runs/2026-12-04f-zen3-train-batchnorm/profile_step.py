"""The demo model's training step under torch.profiler, by operator and by input shape (5 updates after 3).

    PYTHONPATH=src:benchmarks python benchmarks/runs/2026-12-04f-zen3-train-batchnorm/profile_step.py [threads] [plain]

``plain``: with nn.BatchNorm2d's forward in place of layers.BatchNorm2d's (the profile before the change).
"""

import sys

import torch
from torch.profiler import ProfilerActivity, profile

from train_step_ab import training_step
from xception.layers import BatchNorm2d

if "plain" in sys.argv[2:]:
    BatchNorm2d.forward = torch.nn.BatchNorm2d.forward
step = training_step(threads=int(sys.argv[1]) if len(sys.argv) > 1 else 2)
for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(5):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15))

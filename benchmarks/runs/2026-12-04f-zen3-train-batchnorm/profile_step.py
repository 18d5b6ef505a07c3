"""The demo model's training step under torch.profiler, by operator and by input shape (5 updates after 3).

    PYTHONPATH=src python benchmarks/runs/2026-12-04f-zen3-train-batchnorm/profile_step.py [threads] [plain]

``plain``: with nn.BatchNorm2d's forward in place of layers.BatchNorm2d's (the profile before the change).
"""

import sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import xception
from xception.fast.memory import keep_freed_memory
from xception.layers import BatchNorm2d

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
if "plain" in sys.argv[2:]:
    BatchNorm2d.forward = torch.nn.BatchNorm2d.forward
keep_freed_memory()
torch.manual_seed(0)
model = xception.create_model("xception", num_classes=10, in_chans=1, stem="small", width=0.125,
                              middle_repeats=2).to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (256,))


def step() -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
    opt.step()


for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
    for _ in range(5):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=15))

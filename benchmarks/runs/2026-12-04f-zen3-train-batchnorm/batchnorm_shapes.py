"""Training-mode batch norm on channels_last maps: PyTorch's layer against xception.layers.BatchNorm2d's sums
over the NHWC memory (forced on for every channel count here), forward and forward + backward, median ms.

    PYTHONPATH=src python benchmarks/runs/2026-12-04f-zen3-train-batchnorm/batchnorm_shapes.py [threads]
"""

import statistics
import sys
import time

import torch

from xception.layers import _PixelRowsBatchNorm


def median_ms(fn, repeats: int = 20) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def row(shape: tuple[int, int, int, int]) -> str:
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    bn = torch.nn.BatchNorm2d(shape[1], eps=1e-3)

    def torch_fwd():
        with torch.no_grad():
            bn(x)

    def torch_both():
        bn(x).backward(g)

    def sums_fwd():
        with torch.no_grad():
            _PixelRowsBatchNorm.apply(x, bn.weight, bn.bias, 1e-3, bn.running_mean, bn.running_var, 0.1)

    def sums_both():
        _PixelRowsBatchNorm.apply(x, bn.weight, bn.bias, 1e-3, bn.running_mean, bn.running_var, 0.1).backward(g)

    return (f"{shape!s:<20} {median_ms(torch_fwd):9.2f} {median_ms(torch_both):8.2f} {median_ms(sums_fwd):9.2f} "
            f"{median_ms(sums_both):8.2f}")


torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
print(f"{torch.get_num_threads()} thread(s); ms, median of 20")
print(f"{'shape':<20} {'torch fwd':>9} {'fwd+bwd':>8} {'sums fwd':>9} {'fwd+bwd':>8}")
for shape in [(256, 8, 28, 28), (256, 16, 28, 28), (256, 32, 14, 14), (256, 88, 4, 4), (128, 16, 28, 28),
              (128, 32, 28, 28), (128, 64, 28, 28)]:
    print(row(shape))

"""Backward of a depthwise 3×3 conv (256 images, channels_last, 1 thread) with PyTorch's implicit padding
against the same conv on the map padded first, by map size and dilation: minima of 6 calls, ms."""
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def backward_ms(channels: int, size: int, dilation: int, explicit: bool) -> float:
    weight = torch.randn(channels, 1, 3, 3, requires_grad=True)
    x = torch.randn(256, channels, size, size).contiguous(memory_format=torch.channels_last).requires_grad_()
    times = []
    for _ in range(6):
        if explicit:
            y = F.conv2d(F.pad(x, (dilation,) * 4), weight, groups=channels, dilation=dilation)
        else:
            y = F.conv2d(x, weight, padding=dilation, groups=channels, dilation=dilation)
        start = time.perf_counter()
        y.backward(torch.ones_like(y))
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


print(f"{'channels':>8} {'size':>4} {'dilation':>8} {'implicit':>9} {'explicit':>9}")
for channels, size, dilation in [(192, 2, 1), (128, 2, 1), (128, 1, 1), (128, 3, 1), (88, 4, 1), (16, 28, 1),
                                 (128, 2, 2), (128, 4, 2), (128, 5, 2)]:
    print(f"{channels:>8} {size:>4} {dilation:>8} {backward_ms(channels, size, dilation, False):>9.2f} "
          f"{backward_ms(channels, size, dilation, True):>9.2f}")

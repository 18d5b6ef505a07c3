"""The demo model's training step with layers.BatchNorm2d's backward as PyTorch's kernel (as built) or as sums
over the NHWC memory (an alternative, not kept), in turns; 2 threads, 7 rounds of 10 updates, median ms.

    PYTHONPATH=src python benchmarks/runs/2026-12-04f-zen3-train-batchnorm/backward_ab.py
"""

import statistics
import time

import torch
import torch.nn.functional as F

import xception
from xception.fast.memory import keep_freed_memory
from xception.layers import _pixel_rows, _PixelRowsBatchNorm


def sums_backward(ctx, grad):
    """dx = a·dy + b·x + c per channel, from the sums of dy and dy·x over the NHWC memory."""
    x, weight, mean, invstd = ctx.saved_tensors
    c = x.shape[1]
    pixels = x.numel() // c
    fold = max(1, 64 // c)
    while pixels % fold:
        fold //= 2
    rows, dy = _pixel_rows(x, fold), _pixel_rows(grad.contiguous(memory_format=torch.channels_last), fold)
    sum_dy = dy.sum(0).view(fold, c).sum(0)
    sum_dy_xhat = ((dy * rows).sum(0).view(fold, c).sum(0) - mean * sum_dy) * invstd
    a = weight * invstd
    b = -a * invstd * sum_dy_xhat / pixels
    const = -a * sum_dy / pixels - b * mean
    dx = torch.empty_like(x)
    torch.addcmul(torch.addcmul(const.repeat(fold), rows, b.repeat(fold)), dy, a.repeat(fold),
                  out=_pixel_rows(dx, fold))
    return dx, sum_dy_xhat, sum_dy, None, None, None, None


def main() -> None:
    torch.set_num_threads(2)
    keep_freed_memory()
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=10, in_chans=1, stem="small", width=0.125,
                                  middle_repeats=2).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(256, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (256,))

    def timed(steps: int) -> float:
        start = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
            opt.step()
        return (time.perf_counter() - start) / steps * 1e3

    built = _PixelRowsBatchNorm.backward
    timed(3)
    times: dict[str, list[float]] = {"torch backward": [], "sums backward": []}
    for _ in range(7):
        for name, backward in (("torch backward", built), ("sums backward", staticmethod(sums_backward))):
            _PixelRowsBatchNorm.backward = backward
            times[name].append(timed(10))
    _PixelRowsBatchNorm.backward = built
    for name, t in times.items():
        print(name, round(statistics.median(t), 1), [round(v) for v in t])


if __name__ == "__main__":
    main()

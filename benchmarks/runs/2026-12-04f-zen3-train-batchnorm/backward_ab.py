"""The demo model's training step with layers.BatchNorm2d's backward as PyTorch's kernel (as built) or as sums
over the NHWC memory (an alternative, not kept), in turns; 2 threads, 7 rounds of 10 updates, median ms.

    PYTHONPATH=src:benchmarks python benchmarks/runs/2026-12-04f-zen3-train-batchnorm/backward_ab.py
"""

import statistics

import torch

from train_step_ab import ms_per_step, training_step
from xception.layers import _channel_sums, _pixel_rows, _PixelRowsBatchNorm, _row_fold


def sums_backward(ctx, grad):
    """dx = a·dy + b·x + c per channel, from the sums of dy and dy·x over the NHWC memory."""
    x, weight, mean, invstd = ctx.saved_tensors
    pixels, fold = _row_fold(x)
    rows, dy = _pixel_rows(x, fold), _pixel_rows(grad.contiguous(memory_format=torch.channels_last), fold)
    sum_dy = _channel_sums(dy, fold)
    sum_dy_xhat = (_channel_sums(dy * rows, fold) - mean * sum_dy) * invstd
    a = weight * invstd
    b = -a * invstd * sum_dy_xhat / pixels
    const = -a * sum_dy / pixels - b * mean
    dx = torch.empty_like(x)
    torch.addcmul(torch.addcmul(const.repeat(fold), rows, b.repeat(fold)), dy, a.repeat(fold),
                  out=_pixel_rows(dx, fold))
    return dx, sum_dy_xhat, sum_dy, None, None, None, None


def main() -> None:
    step = training_step(threads=2)
    built = _PixelRowsBatchNorm.backward
    ms_per_step(step, 3)
    times: dict[str, list[float]] = {"torch backward": [], "sums backward": []}
    for _ in range(7):
        for name, backward in (("torch backward", built), ("sums backward", staticmethod(sums_backward))):
            _PixelRowsBatchNorm.backward = backward
            times[name].append(ms_per_step(step, 10))
    _PixelRowsBatchNorm.backward = built
    for name, t in times.items():
        print(name, round(statistics.median(t), 1), [round(v) for v in t])


if __name__ == "__main__":
    main()

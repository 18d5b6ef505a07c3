"""A training step with and without one of the layers' CPU workarounds, in turns.

    PYTHONPATH=src python benchmarks/train_step_ab.py [--layer depthwise|batchnorm] [--threads 2] [--rounds 5] \\
        [--steps 10] [--width 0.125] [--batch 256]

One process, one model (the demo's by default: width 0.125, 2 middle modules, small stem, 28 px; the full
recipe's with --width 0.5 --batch 128), channels_last, SGD, freed memory kept as training keeps it: each round
times `steps` updates with the layer as built, then with the plain PyTorch forward in its place. ``--layer
depthwise``: `DepthwiseConv2d` (small maps padded explicitly) against `nn.Conv2d` (implicit padding);
``--layer batchnorm``: `BatchNorm2d` (sums over the NHWC memory for maps of ≤ 8 channels) against
`nn.BatchNorm2d`. Prints the median ms per update of each and their ratio.
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import xception
from xception.fast.memory import keep_freed_memory
from xception.layers import BatchNorm2d, DepthwiseConv2d

LAYERS = {  # the layer, and the PyTorch forward it falls back to
    "depthwise": (DepthwiseConv2d, torch.nn.Conv2d.forward),
    "batchnorm": (BatchNorm2d, torch.nn.BatchNorm2d.forward),
}


def training_step(width: float = 0.125, batch: int = 256, threads: int = 2) -> Callable[[], None]:
    """One SGD update of a small-input model on a fixed random batch, set up as training runs it."""
    torch.set_num_threads(threads)
    keep_freed_memory()  # as training does
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=10, in_chans=1, stem="small", width=width,
                                  middle_repeats=2).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    x = torch.randn(batch, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, label_smoothing=0.1).backward()
        opt.step()

    return step


def ms_per_step(step: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", choices=sorted(LAYERS), default="depthwise")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args()
    step = training_step(args.width, args.batch, args.threads)
    layer, plain = LAYERS[args.layer]
    built = layer.forward
    times: dict[str, list[float]] = {"as built": [], "plain PyTorch": []}
    ms_per_step(step, 3)
    for _ in range(args.rounds):
        for name, forward in (("as built", built), ("plain PyTorch", plain)):
            layer.forward = forward
            times[name].append(ms_per_step(step, args.steps))
    layer.forward = built
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"{args.layer}: width {args.width}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.rounds} rounds of {args.steps} updates")
    for name, ms in medians.items():
        print(f"{name:<14} {ms:8.1f} ms per update   (rounds: {', '.join(f'{t:.0f}' for t in times[name])})")
    print(f"plain / as built: {medians['plain PyTorch'] / medians['as built']:.3f}×")


if __name__ == "__main__":
    main()

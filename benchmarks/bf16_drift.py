"""What bfloat16 costs in accuracy on a trained model: the fast path in float32 and in bfloat16 against the
plain float32 model, over the whole Fashion-MNIST test set.

    PYTHONPATH=src python benchmarks/bf16_drift.py runs/demo/model.safetensors [--json out.json]

The bfloat16 path is the one ``optimize`` takes on this CPU (the native bf16 kernels where it has AVX-512 BF16 and
no AMX, oneDNN otherwise); where that is the native kernels, oneDNN's route is measured beside it.

Prints, per path: test top-1, how many predictions differ from the plain model's, and the largest logit
difference (absolute, and relative to the largest |logit| of the batch), with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json

import torch

import xception
from xception import fast as fast_module
from xception.bench.report import environment
from xception.data import BatchTransform
from xception.data.fashion_mnist import load_fashion_mnist
from xception.fast import mkldnn_bf16_available


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("weights", help="weights trained on Fashion-MNIST (e.g. runs/demo/model.safetensors)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data-dir", help="folder with the Fashion-MNIST IDX files (default: found or downloaded)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    model = xception.create_model("xception", weights=args.weights).eval()
    images, labels = load_fashion_mnist("test", args.data_dir)
    prepare = BatchTransform(model.preprocessing)
    bf16 = xception.optimize(model, dtype=torch.bfloat16)
    paths = {"fast float32": xception.optimize(model), f"fast bfloat16 ({bf16.settings['kernels']})": bf16}
    if fast_module.native_bf16_preferred():
        fast_module.native_bf16_preferred = lambda: False  # type: ignore[assignment]
        paths["fast bfloat16 (oneDNN)"] = xception.optimize(model, dtype=torch.bfloat16)
    correct = dict.fromkeys(["plain float32", *paths], 0)
    changed = dict.fromkeys(paths, 0)
    worst_abs, worst_rel = dict.fromkeys(paths, 0.0), dict.fromkeys(paths, 0.0)
    with torch.no_grad():
        for start in range(0, len(images), args.batch_size):
            x = prepare(images[start:start + args.batch_size])
            y = labels[start:start + args.batch_size]
            reference = model(x)
            correct["plain float32"] += int((reference.argmax(1) == y).sum())
            for name, fast in paths.items():
                logits = fast(x)
                diff = (logits - reference).abs().max().item()
                correct[name] += int((logits.argmax(1) == y).sum())
                changed[name] += int((logits.argmax(1) != reference.argmax(1)).sum())
                worst_abs[name] = max(worst_abs[name], diff)
                worst_rel[name] = max(worst_rel[name], diff / reference.abs().max().item())

    env = environment(torch.device("cpu"))
    print(f"{args.weights} on the Fashion-MNIST test set ({len(images)} images); CPU: {env.get('cpu', '?')}; "
          f"bf16 in oneDNN: {'native (AVX-512 BF16 / AMX)' if mkldnn_bf16_available() else 'emulated'}")
    width = max(map(len, correct))
    print(f"{'path':{width}s} {'top-1':>8s} {'changed':>8s} {'max |Δlogit|':>13s} {'relative':>9s}")
    report = {"weights": args.weights, "images": len(images), "environment": env, "paths": {}}
    for name in correct:
        top1 = 100 * correct[name] / len(images)
        row = {"top1": top1}
        line = f"{name:{width}s} {top1:7.2f} %"
        if name in paths:
            row |= {"changed": changed[name], "max_abs": worst_abs[name], "max_rel": worst_rel[name]}
            line += f" {changed[name]:8d} {worst_abs[name]:13.2e} {worst_rel[name]:9.2e}"
        report["paths"][name] = row
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()

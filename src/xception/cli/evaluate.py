"""xception evaluate: top-1 / top-5, per-class accuracy and a confusion matrix of trained weights."""

from __future__ import annotations

import argparse

from ._common import AUTO_HELP, add_model_options, add_runtime_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="measure weights on labelled images (top-1/top-5, per class, confusion matrix)",
        description="Evaluate weights on a folder of class sub-folders (matched by name to the weights' class "
        "names) or on Fashion-MNIST's test set, with the preprocessing the weights carry.",
        epilog="examples:\n  xception evaluate --weights runs/demo/model.safetensors --data fashion-mnist "
        "--plot confusion.png\n"
        "  xception evaluate --weights flowers.safetensors --data data/flowers/val --json > eval.json\n"
        "  xception evaluate --weights xception41-finetuned.pth --model xception41 --data data/flowers/val",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, metavar="FILE", help="weights (a run's model.safetensors, a URL, a tag, "
                   "hf-hub:ORG/NAME) or an exported model (ONNX, torch.export): told apart by content")
    add_runtime_option(p, AUTO_HELP)
    p.add_argument("--model", metavar="NAME", help="the model the weights are for, e.g. xception41: needed for a "
                   "bare state dict (torch.save(model.state_dict())), checked against any other file")
    add_model_options(p)
    p.add_argument("--data", required=True, help="folder of class sub-folders, or 'fashion-mnist'")
    p.add_argument("--split", default="test", choices=("train", "test"), help="Fashion-MNIST split (default test)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=None, help="image decoding processes (default: automatic)")
    p.add_argument("--strict", action="store_true", help="fail on the first unreadable image instead of skipping")
    p.add_argument("--flip", action="store_true", help="test-time flip: also classify each image mirrored left to "
                   "right and average the two; every figure is labelled 'with test-time flip'")
    p.add_argument("--plot", metavar="PNG", help="write the confusion-matrix plot to this file (default: no plot)")
    p.add_argument("--no-plot", action="store_true", help=argparse.SUPPRESS)  # once needed; no plot is the default
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..distributed import is_main_process
    from ..evaluate import FLIP_LABEL, evaluate
    from ._common import print_json
    from ._output import setup_logging

    setup_logging()
    report = evaluate(args.weights, args.data, model_name=args.model, model_options=dict(args.options),
                      split=args.split, batch_size=args.batch_size, device=args.device, workers=args.workers,
                      strict=args.strict, data_dir=args.data_dir, progress=not args.no_progress, plot=args.plot,
                      flip=args.flip, runtime=args.runtime)
    if not is_main_process():
        return 0  # under torchrun: rank 0 reports the counts summed over all processes
    if args.json:
        print_json(report.to_dict())
    else:
        print(report.format())
        label = "test accuracy" if args.data == "fashion-mnist" and args.split == "test" else "accuracy"
        print(f"{label}{' ' + FLIP_LABEL if args.flip else ''}: {100 * report.counts.top1:.1f} %")
    return 0

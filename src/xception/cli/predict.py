"""xception predict: the top-k classes and probabilities of image files."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files with trained weights",
        description="Print the top-k class names and probabilities of each image (files or folders, searched "
        "recursively). Unreadable files are reported one by one; the exit status is 1 if any was.",
        epilog="example:\n  xception predict --weights runs/demo/model.safetensors shoe.png photos/ --top-k 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--weights", required=True, metavar="FILE", help="weights file (e.g. a run's model.safetensors)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in this process)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..predict import predict
    from ._common import print_json

    results = predict(args.weights, args.images, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
                      workers=args.workers)
    if args.json:
        print_json([r.to_dict() for r in results])
    else:
        for result in results:
            print(result.format())
    return 0 if all(r.ok for r in results) else 1

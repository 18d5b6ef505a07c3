"""xception predict: the top-k classes and probabilities of image files."""

from __future__ import annotations

import argparse
import sys

from ._common import AUTO_HELP, add_model_options, add_runtime_option


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="classify image files with trained weights",
        description="Print the top-k class names and probabilities of each image (files or folders, searched "
        "recursively). Unreadable files are reported one by one; the exit status is 1 if any was.",
        epilog="examples:\n  xception predict --weights runs/demo/model.safetensors shoe.png photos/ --top-k 3\n"
        "  xception predict --weights model.onnx shoe.png            # ONNX Runtime: the file is ONNX",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--weights", required=True, metavar="FILE", help="weights (a run's model.safetensors, a URL, a tag, "
                   "hf-hub:ORG/NAME) or an exported model (ONNX, torch.export): told apart by content")
    p.add_argument("--model", metavar="NAME", help="the model the weights are for, e.g. xception41: needed for a "
                   "bare state dict (torch.save(model.state_dict())), checked against any other file")
    add_model_options(p)
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    add_runtime_option(p, AUTO_HELP)
    p.add_argument("--backend", choices=("torch", "onnxruntime"), default=None,
                   help="the former spelling of --runtime torch / --runtime onnxruntime")
    p.add_argument("--workers", type=int, default=0, help="image decoding processes (default 0: in this process)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from collections import Counter

    from ..predict import predict
    from ._common import print_results

    results = predict(args.weights, args.images, top_k=args.top_k, batch_size=args.batch_size, device=args.device,
                      workers=args.workers, model_name=args.model, model_options=dict(args.options),
                      backend=args.backend if args.runtime == "auto" else None, runtime=args.runtime)
    all_ok = print_results(results, args.json)
    if results.skipped:
        counts = ", ".join(f"{n} {reason}" for reason, n in Counter(s.reason for s in results.skipped).items())
        print(f"skipped {len(results.skipped)} path(s): {counts} (each real file is classified once)",
              file=sys.stderr)
    return 0 if all_ok else 1

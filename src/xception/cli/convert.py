"""``xception convert SRC DST.safetensors``: any supported weights into our own format."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert Keras .h5 or timm .pth/.safetensors weights into this library's safetensors format",
        description="Read weights in any supported format (detected from the file's content), check them against "
        "the model they belong to, and write them as safetensors with their metadata (model config, "
        "preprocessing, class names, source, sha256). The round trip is exact.",
        epilog="examples:\n"
        "  xception convert xception_weights_tf_dim_ordering_tf_kernels.h5 xception_keras.safetensors\n"
        "  xception convert legacy_xception.tf_in1k legacy_xception.safetensors   # a tag: downloads first\n"
        "  xception convert finetuned.pth finetuned.safetensors --model xception65",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="weights file (Keras .h5, timm .pth/.safetensors, ours), URL, tag "
                        "(see 'xception weights') or hf-hub:ORG/NAME")
    parser.add_argument("dst", help="output path, *.safetensors (written atomically)")
    parser.add_argument("--model", metavar="NAME", help="the model the weights are for: checked against the file, "
                        "and needed for bare state dicts saved from this library")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no download progress bar")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..fileio import sha256_file
    from ..inference import require_weights
    from ..weights import convert_weights

    require_weights(args.src, "convert reads weights into a model, and an export holds a traced graph, not weights "
                    "this library maps back onto the model's layers")
    meta, report = convert_weights(args.src, args.dst, name=args.model, progress=not args.quiet)
    result = {
        "src": args.src,
        "dst": args.dst,
        "format": report.format,
        "model": meta.model,
        "num_classes": meta.config.num_classes,
        "tensors": report.loaded,
        "skipped": list(report.skipped),
        "source": meta.source,
        "source_sha256": meta.sha256,
        "sha256": sha256_file(args.dst),
    }
    if args.json:
        print_json(result)
    else:
        print(f"{args.src} ({report.format}, {meta.model}, {meta.config.num_classes} classes) → {args.dst}: "
              f"{report.loaded} tensors, sha256 {result['sha256']}")
    return 0

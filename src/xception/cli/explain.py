"""``xception explain``: Grad-CAM heatmaps and overlays of image files."""

from __future__ import annotations

import argparse

from ._common import add_model_options


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain", help="Grad-CAM: where in each image the model found its class",
        description="Write a Grad-CAM heatmap (NAME.heatmap.npy, the layer's resolution, values in [0, 1]) and an "
        "overlay (NAME.overlay.png, the heatmap on the image at 0.4 opacity) for each image, for the predicted "
        "class or the one given. Unreadable files are reported; the exit status is 1 if any was.",
        epilog="examples:\n  xception explain cat.jpg --weights xception.keras_in1k --out cams/\n"
        "  xception explain photos/ --weights runs/demo/model.safetensors --class sneaker --json\n"
        "  xception explain cat.jpg --weights xception.keras_in1k --layer block13_sepconv2_bn\n"
        "  xception explain cat.jpg --weights W --layer entry_flow.block4 --set model.output_stride=16",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--weights", required=True, metavar="W", help="weights file, URL, tag or hf-hub:ORG/NAME")
    p.add_argument("--model", metavar="NAME", help="the model the weights are for (a bare state dict needs it)")
    p.add_argument("--class", dest="target", metavar="C",
                   help="class to explain, by name or index (default: each image's predicted class)")
    p.add_argument("--layer", metavar="NAME", help="module whose activations to use: ours (exit_flow.block14.act, "
                   "the default: the last activation) or Keras's (block14_sepconv2_act)")
    p.add_argument("--out", default="explanations", metavar="DIR", help="folder for the files (default: explanations)")
    p.add_argument("--top-k", type=int, default=5, help="classes to report per image (default 5)")
    p.add_argument("--alpha", type=float, default=0.4, help="opacity of the heatmap over the image (default 0.4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--json", action="store_true", help="print the results (top-k, class explained, paths) as JSON")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..explain import explain
    from ._common import print_results

    results = explain(args.weights, args.images, out=args.out, target=args.target, layer=args.layer,
                      top_k=args.top_k, device=args.device, model_name=args.model, model_options=dict(args.options),
                      alpha=args.alpha)
    return 0 if print_results(results, args.json) else 1

"""``xception export``: ONNX or torch.export files for serving, ExecuTorch and LiteRT files for phones and the
edge."""

from __future__ import annotations

import argparse

from ._common import add_model_options, print_json
from .export_edge import add_edge_options, edge_format, run_edge


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX, a torch.export program (.pt2), ExecuTorch (.pte) or LiteRT (.tflite)",
        description="Export a model (eval mode) for serving: any batch size and, where the model allows it, any "
        "image size from a minimum up (input 'images', output 'logits'). ONNX files carry the class names and "
        "preprocessing in their metadata (key 'xception'). Before the file is written it is run at two batch "
        "sizes and two image sizes (ONNX Runtime for .onnx) and compared with PyTorch. ExecuTorch (.pte, XNNPACK "
        "delegate) and LiteRT (.tflite) files take one image of the traced size per call, float32 or int8, class "
        "names and preprocessing inside; before they are written they run on their own runtime: float32 within "
        "1e-4 of PyTorch's largest logit, int8 measured against float32 on labelled held-out images. Needs "
        "pip install 'xception[edge]'.",
        epilog="examples:\n  xception export model.onnx --weights runs/fmnist/model.safetensors\n"
        "  xception export xception.pt2 --model xception --input-size 299\n"
        "  xception export tiny.onnx --model xception --set model.stem=small --set model.in_chans=1 --input-size 28\n"
        "  xception export model.tflite --weights runs/fmnist/model.safetensors          # NHWC input, float32\n"
        "  xception export model.pte --weights runs/fmnist/model.safetensors --precision int8 \\\n"
        "      --calibration fashion-mnist          # checked on the test split, as xception quantize does",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("output", help="file to write: NAME.onnx, NAME.pt2, NAME.pte or NAME.tflite")
    p.add_argument("--model", help="model name (default: the one the weights describe, else xception)")
    p.add_argument("--weights", help="weights file, URL, tag or hf-hub:ORG/NAME to export (default: random "
                   "initialisation)")
    p.add_argument("--format", choices=("onnx", "pt2", "pte", "tflite"), help="default: from the output file's "
                   "extension")
    p.add_argument("--input-size", type=int, help="image side to trace with (default: the weights' input size)")
    p.add_argument("--fixed-size", action="store_true", help="fix the image size at --input-size (only the batch "
                   "stays free; .pte and .tflite files always fix both at one image of that size)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with PyTorch (float32)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_model_options(p)
    add_edge_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..api import create_model
    from ..errors import ConfigError
    from ..export import export_model
    from ..inference import require_weights

    if args.weights is not None:
        require_weights(args.weights, "exporting traces the PyTorch model, which an export no longer holds")
    named = {"name": args.model} if args.model else {}
    model = create_model(**named, weights=args.weights, **dict(args.options))
    if edge_format(args.output, args.format) is not None:
        return run_edge(args, model)
    if args.precision != "fp32" or args.layout or args.calibration:
        raise ConfigError("--precision, --layout and --calibration apply to .pte and .tflite files; for an int8 "
                          "ONNX model run 'xception quantize --format onnx'")
    result = export_model(model, args.output, format=args.format, input_size=args.input_size,
                          verify=not args.no_verify, dynamic_spatial=not args.fixed_size)
    if args.json:
        print_json(result.to_dict())
        return 0
    channels, height, width = result.input_shape[1:]
    if result.dynamic_spatial:
        sizes = f"input N×{channels}×H×W: any batch size, any H, W ≥ {result.min_size}"
    else:
        sizes = f"input N×{channels}×{height}×{width}: any batch size"
    print(f"wrote {result.path} ({result.format}, {sizes})")
    if result.note:
        print(f"note: {result.note}")
    if result.max_abs_diff is not None:
        runtime = "ONNX Runtime" if result.format == "onnx" else "the loaded program"
        shapes = ", ".join("×".join(map(str, s)) for s in result.checked_shapes)
        print(f"{runtime} vs PyTorch at {shapes}: max |Δ| = {result.max_abs_diff:.2e}")
    return 0

"""``xception quantize``: post-training static int8 quantisation, the calibration method chosen by measurement."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import add_calibration_options, bits


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="post-training int8 quantisation of float weights, checked against float32",
        description="Fold BatchNorm, quantise weights to int8 (per output channel, symmetric) and activations to "
        "uint8 (per tensor) with ranges from calibration images. Each calibration method (min/max, percentiles, "
        "MSE, entropy) is tried; the one whose predictions agree best with float32 on labelled held-out images is "
        "kept. Writes the int8 network (safetensors: int8 weights, int32 biases, scales and zero points, the "
        "config, class names and preprocessing in the header), a JSON report beside it (OUT with .report.json), "
        "and with --format onnx a QDQ ONNX model, checked on ONNX Runtime.",
        epilog="examples:\n"
        "  xception quantize --weights runs/demo/model.safetensors --calibration fashion-mnist \\\n"
        "      --out demo.int8.safetensors          # calibrates on the training split, checks on the test split\n"
        "  xception quantize --weights flowers.safetensors --calibration photos/ --held-out photos-test/ \\\n"
        "      --images 500 --out flowers.int8.safetensors --format onnx       # also flowers.int8.onnx\n"
        "  xception quantize --weights flowers.safetensors --calibration photos/ --out q.safetensors \\\n"
        "      --methods minmax,mse --json > report.json   # photos/ in class folders: a fifth of each is held out",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--weights", required=True, metavar="FILE", help="float weights (any format the library reads, "
                   "a URL or a tag)")
    add_calibration_options(p, required=True)
    p.add_argument("--out", required=True, metavar="FILE", help="the int8 file to write, *.safetensors")
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors", help="onnx: also write a "
                   "QDQ ONNX model beside --out (same name, .onnx) and check it on ONNX Runtime")
    p.add_argument("--methods", metavar="M,M", help="calibration methods to try (default: minmax, "
                   "percentile-99.99, percentile-99.9, mse, entropy)")
    p.add_argument("--weight-bits", type=bits, choices=("auto", 8, 7), default="auto", help="8: weights in "
                   "[-127, 127]; 7: in [-63, 63], which AVX2 CPUs without VNNI multiply exactly about 1.4x as fast "
                   "(the report shows what it costs in agreement with float32); auto (default): 7 on such CPUs, "
                   "else 8")
    p.add_argument("--activation-bits", type=bits, choices=("auto", 8, 7), default="auto", help="8: activation "
                   "codes 0-255; 7: 0-127 (FBGEMM's reduced range), which with 7-bit weights AVX2 CPUs without VNNI "
                   "run about 1.3x as fast again (no ONNX model: its QDQ format has no 7-bit type); auto (default): "
                   "7 with 7-bit weights on such CPUs and no --format onnx, else 8")
    p.add_argument("--report", metavar="FILE", help="the JSON report (default: OUT with .report.json)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="image decoding processes (default: "
                   "automatic)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..quantize import METHODS, quantize
    from ._common import print_json
    from ._output import setup_logging

    setup_logging()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else list(METHODS)
    onnx = Path(args.out).with_suffix(".onnx") if args.format == "onnx" else None
    result = quantize(args.weights, args.calibration, held_out=args.held_out, images=args.images,
                      held_out_images=args.held_out_images or None, methods=methods, out=args.out, onnx=onnx,
                      report=args.report, batch_size=args.batch_size, workers=args.workers, seed=args.seed,
                      data_dir=args.data_dir, weight_bits=args.weight_bits, activation_bits=args.activation_bits)
    if args.json:
        print_json(result.report.to_dict())
    else:
        print(result.report.format())
    return 0

"""``xception export NAME.pte|NAME.tflite``: the options of the ExecuTorch and LiteRT exports (calibration as in
``xception quantize``), and what the command prints."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ._common import add_calibration_options, print_json

EDGE_SUFFIXES = {".pte": "pte", ".tflite": "tflite"}


def edge_format(output: str, format: str | None) -> str | None:
    """``"pte"`` or ``"tflite"`` when the export is one of those (by --format, else the file's suffix)."""
    fmt = format or EDGE_SUFFIXES.get(Path(output).suffix.lower())
    return fmt if fmt in ("pte", "tflite") else None


def add_edge_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ExecuTorch (.pte) and LiteRT (.tflite)", "one image per call at --input-size; "
                             "int8 calibrated and checked on images as 'xception quantize' reads them")
    g.add_argument("--precision", choices=("fp32", "int8"), default="fp32", help="fp32 (default) or int8: "
                   "post-training static quantisation (PT2E; ExecuTorch's XNNPACKQuantizer, LiteRT's PT2EQuantizer), "
                   "weights int8 per channel, activations int8; LiteRT int8 files take int8 input")
    g.add_argument("--layout", choices=("nhwc", "nchw"), help="LiteRT input layout: nhwc (default: N×H×W×C, what "
                   "TFLite users feed) or nchw (as PyTorch); ExecuTorch takes nchw")
    add_calibration_options(g, int8="int8: ")
    g.add_argument("--workers", type=int, default=None, metavar="N", help="image decoding processes (default: "
                   "automatic; LiteRT exports read in this process, as its converter's threads do not survive a fork)")


def run_edge(args: argparse.Namespace, model: Any) -> int:
    from ..edge import export_edge
    from ._output import setup_logging

    setup_logging()
    result = export_edge(
        model, args.output, format=args.format, precision=args.precision, layout=args.layout,
        input_size=args.input_size, calibration=args.calibration, held_out=args.held_out, images=args.images,
        held_out_images=args.held_out_images or None, batch_size=args.batch_size, workers=args.workers,
        seed=args.seed, data_dir=args.data_dir, verify=not args.no_verify,
    )
    if args.json:
        print_json(result.to_dict())
        return 0
    shape = "×".join(map(str, result.input_shape))
    size = result.size_bytes
    print(f"wrote {result.path} ({result.to_dict()['runtime']}, {result.precision}, input {shape} {result.layout}: "
          f"one image per call; {size:,} bytes = {size / 2**20:.2f} MiB)")
    if result.max_abs_diff is not None:
        print(f"{result.to_dict()['runtime']} vs PyTorch on random images: max |Δ| = {result.max_abs_diff:.2e} "
              f"({result.max_rel_diff:.2e} of the largest logit)")
    if result.int8 is not None:
        calibration = result.calibration
        skipped = calibration.get("unreadable_skipped")
        print(f"calibrated on {calibration.get('images')} images of {calibration.get('calibration')}"
              + (f" ({skipped} unreadable, skipped)" if skipped else ""))
        print(result.int8.format())
    return 0

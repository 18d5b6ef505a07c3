"""The README's Deploy table, measured: each deploy path writes its file through the library, the file is opened
through the inference layer, and what it computes is compared with PyTorch's.

Float32 agreement: the paper's Xception at 299 px (random weights, BatchNorm statistics set from random
images, seeds fixed), ``--check-images`` random images; the largest logit difference over the largest logit. Files:
the weights (safetensors), ``xception.export.export_model`` (ONNX, run by ONNX Runtime and by OpenVINO) and
``xception.edge.export_edge`` (ExecuTorch ``.pte`` and LiteRT ``.tflite``, float32 and int8); their sizes are
read from the disk. int8: a small model trained on Fashion-MNIST (``--int8-weights``, default
runs/demo/model.safetensors), exported to int8 with calibration and held-out images read as ``xception export
--precision int8`` reads them (the same options), then run through the inference layer on the held-out
images: top-1, float32's top-1, the share of images whose top-1 is float32's. The same model's float32 files
are run on those images too.

    PYTHONPATH=src python benchmarks/deploy_check.py --out deploy-check.json [--formats onnxruntime,litert]
        [--skip-int8] [--int8-weights W] [--held-out-images 1000]
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import xception
from xception.bench.models import calibrate_batch_norms
from xception.bench.report import environment
from xception.cli._common import add_calibration_options, add_model_options
from xception.hardware import cpu_name
from xception.inference import RUNTIMES, open_model
from xception.tables import format_table

# Each row of the README's table: (the runtime that opens the file, the file's kind, precision).
FORMATS: dict[str, tuple[str, str, str]] = {
    "torch": ("torch", "safetensors", "fp32"),
    "fast": ("fast", "safetensors", "fp32"),
    "onnxruntime": ("onnxruntime", "onnx", "fp32"),
    "openvino": ("openvino", "onnx", "fp32"),
    "executorch": ("executorch", "pte", "fp32"),
    "executorch-int8": ("executorch", "pte", "int8"),
    "litert": ("litert", "tflite", "fp32"),
    "litert-int8": ("litert", "tflite", "int8"),
}
DEFAULT_INT8_WEIGHTS = Path("runs/demo/model.safetensors")
PACKAGES = ("onnx", "onnxruntime", "openvino", "executorch", "litert-torch", "ai-edge-litert", "torchao")


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class Files:
    """The files of one model, each written once by the library's own export and kept for every runtime that
    opens it: the weights themselves, ``model.onnx``, ``model[.int8].pte`` and ``model[.int8].tflite``."""

    def __init__(self, model: xception.Xception, weights: Path, folder: Path, int8_options: dict[str, Any]) -> None:
        self.model, self.weights, self.folder, self.int8_options = model, weights, folder, int8_options
        folder.mkdir(parents=True, exist_ok=True)
        self.written: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, kind: str, precision: str) -> dict[str, Any]:
        key = (kind, precision)
        if key not in self.written:
            began = time.perf_counter()
            path, report = self._write(kind, precision)
            seconds = None if kind == "safetensors" else round(time.perf_counter() - began, 1)
            self.written[key] = {"path": path, "file": path.name, "bytes": path.stat().st_size, "export_s": seconds,
                                 "export": report}
        return self.written[key]

    def _write(self, kind: str, precision: str) -> tuple[Path, dict[str, Any] | None]:
        from xception.edge import export_edge
        from xception.export import export_model

        if kind == "safetensors":
            return self.weights, None
        path = self.folder / f"model{'.int8' if precision == 'int8' else ''}.{kind}"
        if kind == "onnx":
            return path, export_model(self.model, path).to_dict()
        options = self.int8_options if precision == "int8" else {}
        result = export_edge(self.model, path, precision=precision, **options)
        return path, result.to_dict()


def open_runner(path: Path, runtime: str, threads: int) -> Any:
    """``path`` on ``runtime`` through the inference layer, ``threads`` threads where the runtime takes the option
    (torch and fast follow ``torch.set_num_threads``); OpenVINO with its float32 hint, its default here."""
    options = {"threads": threads} if "threads" in RUNTIMES[runtime].option_names else {}
    return open_model(path, runtime=runtime, device="cpu", options=options)


def measure_rows(files: Files, formats: list[str], label: str, threads: int,
                 check: Callable[[Callable[[], Any], str], dict[str, Any]]) -> dict[str, Any]:
    """A row per format: what opens the file, its precision, the file as written (its path left out), and what
    ``check`` finds, given a way to open the file's runner and the precision."""
    rows: dict[str, Any] = {}
    for name in formats:
        runtime, kind, precision = FORMATS[name]
        print(f"{label}: {name}", file=sys.stderr, flush=True)
        written = files.get(kind, precision)
        row = {"runtime": runtime, "precision": precision, **{k: v for k, v in written.items() if k != "path"}}
        rows[name] = {**row, **check(functools.partial(open_runner, written["path"], runtime, threads), precision)}
    return rows


def relative_difference(logits: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    diff = float((logits.float() - reference).abs().max())
    return diff, diff / float(reference.abs().max())


def paper_model(args: argparse.Namespace, folder: Path) -> tuple[xception.Xception, Path]:
    """The paper's model (or ``--set`` options) with seeded random weights and BatchNorm statistics of random
    images, saved with [-1, 1] preprocessing at ``--input-size`` and loaded back as ``--weights W`` would be."""
    torch.manual_seed(args.seed)
    model = xception.create_model("xception", **dict(args.options))
    size = args.input_size
    calibrate_batch_norms(model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 1)))
    path = folder / "model.safetensors"
    xception.save_weights(model, path, preprocessing=xception.Preprocessing.centred(3, size))
    return xception.create_model(weights=str(path)).eval(), path


def paper_int8_options(model: xception.Xception, args: argparse.Namespace) -> dict[str, Any]:
    """int8 exports of the paper's model are written for their size: calibrated on random images, their float32
    top-1 standing in for the labels of the export's own check (the int8 rows' accuracy is the small model's)."""
    size, n = args.input_size, args.paper_calibration_images
    images = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 2))
    with torch.inference_mode():
        labels = model(images).argmax(1)
    return {"calibration": images, "held_out": (images, labels), "images": n, "held_out_images": n, "batch_size": n}


def measure_paper(args: argparse.Namespace, folder: Path, formats: list[str]) -> dict[str, Any]:
    """Agreement with PyTorch of every float32 path, and the size of every file, for the paper's model."""
    model, weights = paper_model(args, folder)
    size = args.input_size
    x = torch.randn(args.check_images, 3, size, size, generator=torch.Generator().manual_seed(args.seed + 3))
    reference = open_runner(weights, "torch", args.threads).run(x)
    files = Files(model, weights, folder, paper_int8_options(model, args))

    def check(runner: Any, precision: str) -> dict[str, float]:
        if precision != "fp32":  # the int8 rows are measured on the small model
            return {}
        return dict(zip(("max_abs_diff", "max_rel_diff"), relative_difference(runner().run(x), reference),
                        strict=True))

    rows = measure_rows(files, formats, "paper's model", args.threads, check)
    parameters = sum(p.numel() for p in model.parameters())
    return {"model": model.config.to_dict(), "parameters": parameters, "input_size": size, "images": args.check_images,
            "seed": args.seed, "largest_logit": float(reference.abs().max()), "rows": rows}


def held_out_reference(model: xception.Xception, weights: Path, args: argparse.Namespace) -> tuple[Any, list]:
    """The held-out images (read as the int8 export reads them) with their labels and PyTorch's logits."""
    from xception.edge.api import calibration_sets

    _, held = calibration_sets(model, model.preprocessing, args.calibration, args.held_out, images=args.images,
                               held_out_images=args.held_out_images or None, batch_size=args.batch_size, workers=0,
                               seed=args.seed, data_dir=args.data_dir)
    torch_runner = open_runner(weights, "torch", args.threads)
    batches = [(x, y, torch_runner.run(x)) for x, y in held.batches()]
    return held, batches


def on_held_out(runner: Any, batches: list) -> dict[str, Any]:
    """``runner`` against PyTorch on the held-out batches: top-1 of each, predictions kept, largest difference."""
    correct = reference_correct = same = images = 0
    worst = 0.0
    for x, y, reference in batches:
        logits = runner.run(x)
        correct += int((logits.argmax(1) == y).sum())
        reference_correct += int((reference.argmax(1) == y).sum())
        same += int((logits.argmax(1) == reference.argmax(1)).sum())
        images += len(y)
        worst = max(worst, relative_difference(logits, reference)[1])
    return {"images": images, "top1": 100 * correct / images, "fp32_top1": 100 * reference_correct / images,
            "same_top1": 100 * same / images, "changed": images - same, "max_rel_diff": worst}


def int8_weights(args: argparse.Namespace) -> Path | None:
    if args.int8_weights:
        return Path(args.int8_weights)
    return DEFAULT_INT8_WEIGHTS if DEFAULT_INT8_WEIGHTS.is_file() else None


def measure_small(args: argparse.Namespace, folder: Path, formats: list[str], weights: Path) -> dict[str, Any]:
    """The small model's files (int8 and float32) on the held-out images, opened through the inference layer,
    with what the int8 export's own check said."""
    model = xception.create_model(weights=str(weights)).eval()
    held, batches = held_out_reference(model, weights, args)
    options = {"calibration": args.calibration, "held_out": args.held_out, "images": args.images,
               "held_out_images": args.held_out_images or None, "batch_size": args.batch_size, "seed": args.seed,
               "data_dir": args.data_dir}
    rows = measure_rows(Files(model, weights, folder, options), formats, "small model", args.threads,
                        lambda runner, _: on_held_out(runner(), batches))
    return {"weights": str(weights), "model": model.config.to_dict(),
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_size": model.preprocessing.input_size if model.preprocessing else None,
            "held_out": held.description, "calibration": args.calibration, "calibration_images": args.images,
            "rows": rows}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} %"


def _sci(value: float | None) -> str:
    return "-" if value is None else f"{value:.1e}"


def print_report(report: dict[str, Any]) -> None:
    paper, small = report["paper"], report.get("small")
    print(f"deploy check on {report['environment']['cpu']}, {report['threads']} thread(s); torch "
          f"{report['environment']['torch']}, " + ", ".join(f"{k} {v}" for k, v in report["packages"].items()))
    print(f"paper's model: {paper['model']['arch']}, {paper['parameters']:,} parameters, {paper['input_size']} px, "
          f"{paper['images']} random images (largest logit {paper['largest_logit']:.3g}); int8 files calibrated on "
          f"random images, for their size")
    if small:
        print(f"small model: {small['weights']} ({small['parameters']:,} parameters, {small['input_size']} px), "
              f"held out: {small['held_out']}; int8 calibration: {small['calibration']} "
              f"({small['calibration_images']} images at most)")
    else:
        print(f"small model: not measured ({report.get('small_skipped')})")
    rows = []
    for name, row in paper["rows"].items():
        s = (small or {}).get("rows", {}).get(name, {})
        rows.append([name, row["precision"], row["file"], f"{row['bytes'] / 1e6:.1f} MB", _sci(row.get("max_rel_diff")),
                     "-" if row["export_s"] is None else f"{row['export_s']:.0f}", _pct(s.get("top1")),
                     _pct(s.get("fp32_top1")), _pct(s.get("same_top1")), s.get("changed", "-"),
                     _sci(s.get("max_rel_diff")), "-" if not s else f"{s['bytes'] / 1e6:.2f} MB"])
    print(format_table(rows, ["path", "precision", "file", "size", "vs PyTorch", "export s", "small top-1",
                              "fp32 top-1", "same top-1", "changed", "small vs PyTorch", "small size"]))
    print("vs PyTorch: largest |logit difference| / largest |logit| (paper's model: random images; small model: "
          "held-out images, the largest per batch); same top-1: held-out images whose top-1 is float32 PyTorch's")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", metavar="FILE", help="write the figures as JSON here")
    parser.add_argument("--formats", default=",".join(FORMATS), help=f"paths to measure (default all: "
                        f"{','.join(FORMATS)}); torch is always measured, as the reference")
    parser.add_argument("--skip-int8", action="store_true", help="no small model: no int8 accuracy, no held-out images")
    parser.add_argument("--int8-weights", metavar="W", help=f"the small trained model (default {DEFAULT_INT8_WEIGHTS} "
                        "when it exists)")
    parser.add_argument("--input-size", type=int, default=299, help="the paper's model's image size (default 299)")
    parser.add_argument("--check-images", type=int, default=4, metavar="N",
                        help="random images the paper's model's float32 files are checked on (default 4)")
    parser.add_argument("--paper-calibration-images", type=int, default=8, metavar="N",
                        help="random images the paper's model's int8 files are calibrated on (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="threads for every runtime and export (default 1)")
    parser.add_argument("--keep", metavar="DIR", help="write the files here and keep them (default: a temporary "
                        "folder)")
    add_model_options(parser)
    add_calibration_options(parser)
    parser.set_defaults(calibration="fashion-mnist")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.formats.split(",")) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats {', '.join(unknown)}: choose from {', '.join(FORMATS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    formats = ["torch", *(f for f in FORMATS if f in args.formats.split(",") and f != "torch")]
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deploy-check-") as tmp:
        folder = Path(args.keep) if args.keep else Path(tmp)
        report: dict[str, Any] = {"schema": "xception-deploy-check/1", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                  "command": " ".join(sys.argv), "cpu": cpu_name(), "threads": args.threads,
                                  "environment": environment(torch.device("cpu")), "packages": package_versions()}
        report["paper"] = measure_paper(args, folder / "paper", formats)
        weights = None if args.skip_int8 else int8_weights(args)
        if weights is None:
            missing = f"no --int8-weights, no {DEFAULT_INT8_WEIGHTS}"
            report["small_skipped"] = "--skip-int8" if args.skip_int8 else missing
        else:
            report["small"] = measure_small(args, folder / "small", formats, weights)
    report["seconds"] = round(time.perf_counter() - began, 1)
    print_report(report)
    print(f"{report['seconds']:.0f} s")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

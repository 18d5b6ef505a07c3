"""Argument helpers shared by the commands.

Commands take options one way, ``--set KEY=VALUE`` (repeatable), and model options are written
``model.KEY`` in every command (``--set model.width=0.5``), as in a recipe's ``[model]`` table.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tomllib
from collections.abc import Sequence
from typing import Any

MODEL_PREFIX = "model."
AUTO_HELP = "auto: an export on its own runtime, weights on fast on a CPU and torch elsewhere"
MODEL_OPTION_EXAMPLES = (
    "model.num_classes=10, model.in_chans=1, model.width=0.5, model.middle_repeats=4, model.stem=small, "
    "model.output_stride=16, model.residual=false, model.activation=relu, model.padding=symmetric, "
    "model.bn_eps=1e-5, …"
)


def stop_status(signum: int | None) -> int:
    """The exit status of a command a stop signal ended, cleanly (a checkpoint saved) or at once: 128 + the
    signal's number, as a shell reports a process the signal killed (130 for Ctrl-C, also when the signal is
    unknown, 143 for SIGTERM), so that a job scheduler tells a stopped run from a failed or finished one."""
    return 128 + (signum or signal.SIGINT)


def parse_value(text: str) -> Any:
    """A command-line value: read as TOML (``0.5``, ``true``, ``[1, 2]``), ``null`` as None, else the text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None if text == "null" else text


def split_assignment(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` → (key, raw value), the key with ``-`` read as ``_``."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, raw


def parse_model_option(text: str) -> tuple[str, Any]:
    """``model.KEY=VALUE`` → (KEY, value). A key without ``model.`` is refused with the right spelling."""
    key, raw = split_assignment(text)
    if key == MODEL_PREFIX:
        raise argparse.ArgumentTypeError(f"expected {MODEL_PREFIX}KEY=VALUE, got {text!r}")
    if not key.startswith(MODEL_PREFIX):
        raise argparse.ArgumentTypeError(
            f"{text}: model options are written {MODEL_PREFIX}KEY, as in --set {MODEL_PREFIX}{key}={raw}"
        )
    return key.removeprefix(MODEL_PREFIX), parse_value(raw)


class _DeprecatedOption(argparse.Action):
    """``-o/--option KEY=VALUE``, the former spelling of ``--set model.KEY=VALUE``: appends to the same
    list, and says once per command line how to write it now."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.noticed = False

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        try:
            key, raw = split_assignment(values)
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(self, str(err)) from None
        if not self.noticed:
            print(f"{parser.prog}: warning: {option_string} is deprecated and will be removed; "
                  f"write --set {MODEL_PREFIX}{key}={raw}", file=sys.stderr)
            self.noticed = True
        setattr(namespace, self.dest, [*(getattr(namespace, self.dest, None) or []), (key, parse_value(raw))])


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--set model.KEY=VALUE`` for any field of XceptionConfig, into ``args.options`` as (KEY, value) pairs.

    ``-o/--option KEY=VALUE``, the former spelling, still works for now: hidden, with a notice.
    """
    parser.set_defaults(options=[])
    parser.add_argument(
        "--set", dest="options", action="append", type=parse_model_option, metavar="model.KEY=VALUE",
        help=f"set a model option, repeatable: {MODEL_OPTION_EXAMPLES}",
    )
    parser.add_argument("-o", "--option", dest="options", action=_DeprecatedOption, metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)


def add_runtime_option(parser: argparse.ArgumentParser, auto: str) -> None:
    """``--runtime NAME``: what runs the model, ``auto`` by default. The name is checked when the model opens
    (xception.inference.RUNTIMES), so that ``--help`` needs no torch."""
    parser.add_argument("--runtime", default="auto", metavar="NAME",
                        help="what runs the model: torch (the plain model), fast (xception.optimize), onnxruntime, "
                        "openvino (an ONNX file or weights, on the CPU), torch-export, executorch (.pte) or "
                        f"litert (.tflite); {auto} (default)")


def print_json(data: Any) -> None:
    """``--json`` output: indented, paths and other non-JSON values as strings."""
    print(json.dumps(data, indent=2, default=str))



def print_results(results: Sequence[Any], as_json: bool) -> bool:
    """Per-file results (``.ok``, ``.format()``, ``.to_dict()``) to stdout and their errors to stderr, so that
    ``… > out.txt`` holds only results; ``--json`` prints every record, errors too. True if all were ok."""
    if as_json:
        print_json([r.to_dict() for r in results])
    else:
        for result in results:
            if result.ok:
                print(result.format())
    for result in results:
        if not result.ok:
            print(result.format(), file=sys.stderr)
    return all(r.ok for r in results)


def bits(text: str) -> int | str:
    """An int8 width option's value: ``auto``, or a number of bits (checked against the option's choices)."""
    return text if text == "auto" else int(text)


def add_calibration_options(p: Any, *, required: bool = False, int8: str = "") -> None:
    """The options that choose calibration and held-out images, as ``xception quantize`` and the int8 edge
    exports read them (``int8``: a prefix for their help, where the options apply to int8 only)."""
    p.add_argument("--calibration", required=required, metavar="DIR", help=f"{int8}calibration images: a folder "
                   "(any layout, labels unused) or 'fashion-mnist' (its training split)")
    p.add_argument("--held-out", metavar="DIR", help=f"{int8}labelled images the result is checked on: a folder of "
                   "class sub-folders or 'fashion-mnist-test' (default: Fashion-MNIST's test split for "
                   "fashion-mnist, else a fifth of a labelled calibration folder)")
    p.add_argument("--images", type=int, default=512, metavar="N", help="calibration images, at most (default 512)")
    p.add_argument("--held-out-images", type=int, default=1000, metavar="N", help="held-out images, at most "
                   "(default 1000; 0: all)")
    p.add_argument("--batch-size", type=int, default=64, metavar="N", help="images read at a time (default 64)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--seed", type=int, default=0, help="which images are drawn (default 0)")

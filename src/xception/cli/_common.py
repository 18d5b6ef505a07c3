"""Argument helpers shared by the commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as JSON when it can be (numbers, true/false, null), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``-o KEY=VALUE`` for any field of XceptionConfig."""
    parser.add_argument(
        "-o", "--option", dest="options", action="append", type=parse_option, default=[], metavar="KEY=VALUE",
        help="set a model option, repeatable: num_classes=10, in_chans=1, width=0.5, middle_repeats=4, "
        "stem=small, output_stride=16, residual=false, activation=relu, padding=symmetric, bn_eps=1e-5, …",
    )


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], right: Sequence[int] = ()) -> str:
    """A plain-text table; columns listed in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def print_json(data: Any) -> None:
    """``--json`` output: indented, paths and other non-JSON values as strings."""
    print(json.dumps(data, indent=2, default=str))

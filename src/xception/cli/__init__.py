"""The ``xception`` command: argument parsing only; every command calls one library function.

Each command lives in its own module here with a ``register(subparsers)`` function that adds its parser
and sets ``run`` (a function of the parsed arguments returning an exit code). Heavy imports (torch) happen
inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import XceptionError

COMMANDS: tuple[str, ...] = (
    "train", "evaluate", "predict", "summary", "weights", "convert", "export", "bench",
)

# Errors a user can fix: printed as one line, without a traceback (XCEPTION_DEBUG=1 shows it).
USER_ERRORS: tuple[type[BaseException], ...] = (
    XceptionError, ValueError, FileNotFoundError, PermissionError, OSError,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xception",
        description="Xception (Chollet, CVPR 2017): build, inspect, train, evaluate, predict, export "
        "and benchmark depthwise-separable networks.",
        epilog="Run 'xception COMMAND --help' for a command's options. Set XCEPTION_DEBUG=1 to see "
        "tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"xception {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        if os.environ.get("XCEPTION_DEBUG"):
            raise
        print(f"xception {args.command}: error: {err}", file=sys.stderr)
        return 1

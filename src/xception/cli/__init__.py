"""The ``xception`` command: argument parsing only; every command calls one library function.

Each command lives in its own module here with a ``register(subparsers)`` function that adds its parser
and sets ``run`` (a function of the parsed arguments returning an exit code). Heavy imports (torch) happen
inside ``run`` so that ``--help`` stays fast.

Errors the user can fix (:class:`~xception.errors.XceptionError`) print as one line, with hints spelled as
command-line options; anything else is a bug and prints its traceback. ``XCEPTION_DEBUG=1`` shows the
traceback of every error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import XceptionError, command_line
from ._common import stop_status

COMMANDS: tuple[str, ...] = (
    "train", "evaluate", "predict", "summary", "weights", "convert", "export", "bench", "ablate", "explain", "serve",
    "info", "quantize",
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
        with command_line():  # hints in error messages are spelled as options of this command
            return int(args.run(args) or 0)
    except KeyboardInterrupt as err:  # a second stop signal during training (Aborted) carries its number
        print("interrupted", file=sys.stderr)
        return stop_status(getattr(err, "signum", None))
    except BrokenPipeError:
        # The reader went away (`xception evaluate --json | head`): stop quietly, as Unix tools do. Python
        # would otherwise fail again flushing stdout at exit, so stdout is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the signal
    except XceptionError as err:
        # What the user can fix is one line; anything else is a bug and keeps its traceback.
        if os.environ.get("XCEPTION_DEBUG"):
            raise
        print(f"xception {args.command}: error: {err}", file=sys.stderr)
        return 1

"""``xception info``: what to paste into a bug report."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import print_json


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "info",
        help="versions, CPU, threads, kernels, GPUs and folders: what a bug report needs",
        description="Print what decides how this installation behaves and how fast it runs: the versions of "
        "Python, torch and the runtimes installed beside it, the CPU (family/model and vector extensions), "
        "threads, whether the compiled CPU kernels were built and which instruction set they use, CUDA "
        "devices, the download cache and where Fashion-MNIST is looked for. Builds no model.",
        epilog="examples:\n  xception info\n  xception info --json > info.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..info import format_info, system_info

    info = system_info()
    if args.json:
        print_json(info)
    else:
        print(format_info(info))
    return 0

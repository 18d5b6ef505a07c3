"""``xception summary``: layers, parameters, multiply-adds, and separable against standard convs."""

from __future__ import annotations

import argparse

from ._common import add_model_options, print_json

EXAMPLES = """\
examples:
  xception summary
  xception summary xception65 --input-size 513 --set model.output_stride=16
  xception summary xception --set model.stem=small --set model.width=0.5 --input-size 28 --plot cost.png
  xception summary --json > xception.json
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="per-layer table, parameter and multiply-add counts, separable vs standard conv cost",
        description="Show a model's layers (output shape, parameters, multiply-adds) and, for every "
        "depthwise separable conv, the cost of the standard k×k conv it replaces: D²·k²·M·N multiply-adds "
        "against D²·k²·M + D²·M·N. Totals per flow and for the whole model.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", default="xception", help="model name (see 'xception summary --list')")
    p.add_argument("--input-size", type=int, default=None,
                   help="image side in pixels (default: 299; with model.stem=small, the smallest it takes)")
    p.add_argument("--json", action="store_true", help="print everything as JSON instead of tables")
    p.add_argument("--plot", metavar="FILE.png", help="write a bar chart of standard vs separable cost per module")
    p.add_argument("--no-layers", action="store_true", help="omit the per-layer table")
    p.add_argument("--list", action="store_true", help="list the known model names and exit")
    add_model_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..analysis import model_cost, plot_separable_cost
    from ..models import MODELS, build_model

    if args.list:
        for name, entry in MODELS.items():
            print(f"{name:16s} {entry.description}")
        return 0
    model = build_model(args.model, **dict(args.options))
    size = args.input_size or (model.config.min_input_size if model.config.stem == "small" else 299)
    report = model_cost(model, size, name=args.model)
    if args.plot:
        plot_separable_cost(report, args.plot)
    if args.json:
        print_json(report.to_dict())
        return 0

    print(report.format(layers=not args.no_layers))
    if args.plot:
        print(f"chart: {args.plot}")
    return 0

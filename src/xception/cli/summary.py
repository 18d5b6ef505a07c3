"""``xception summary``: layers, parameters, multiply-adds, and separable against standard convs."""

from __future__ import annotations

import argparse

from ._common import add_model_options, format_table, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summary",
        help="per-layer table, parameter and multiply-add counts, separable vs standard conv cost",
        description="Show a model's layers (output shape, parameters, multiply-adds) and, for every "
        "depthwise separable conv, the cost of the standard k×k conv it replaces: D²·k²·M·N multiply-adds "
        "against D²·k²·M + D²·M·N. Totals per flow and for the whole model.",
        epilog="examples:\n  xception summary\n  xception summary xception65 --input-size 513 -o output_stride=16\n"
        "  xception summary xception -o stem=small -o width=0.5 --input-size 28 --plot cost.png\n"
        "  xception summary --json > xception.json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", default="xception", help="model name (see 'xception summary --list')")
    p.add_argument("--input-size", type=int, default=None, help="image side in pixels (default: 299)")
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

    if not args.no_layers:
        rows = [(r.name, r.kind, "×".join(map(str, r.output_shape)), f"{r.params:,}", f"{r.macs:,}")
                for r in report.layers]
        print(format_table(rows, ["layer", "type", "output", "params", "mult-adds"], right=(3, 4)))
        print()
    print(f"{args.model} at {size}×{size}: {report.trainable_params:,} trainable parameters "
          f"({report.total_params:,} with BN statistics), {report.macs / 1e9:.2f} G multiply-adds per image")
    print()
    sep_rows = []
    for block, cost in report.blocks.items():
        sep, std = cost["separable"], cost["standard"]
        sep_rows.append((block, f"{std.macs / 1e6:,.1f}", f"{sep.macs / 1e6:,.1f}", f"{sep.macs / std.macs:.3f}",
                         f"{std.params:,}", f"{sep.params:,}"))
    headers = ["module", "standard MMACs", "separable MMACs", "ratio", "standard params", "separable params"]
    print(format_table(sep_rows, headers, right=(1, 2, 3, 4, 5)))
    print()
    flow_rows = []
    for flow, cost in report.flows.items():
        sep, std = cost["separable"], cost["standard"]
        flow_rows.append((flow, f"{report.flow_macs.get(flow, 0) / 1e9:.3f}", f"{std.macs / 1e9:.3f}",
                          f"{sep.macs / 1e9:.3f}", f"{sep.macs / std.macs:.3f}"))
    sep_t, std_t = report.separable_total, report.standard_total
    flow_rows.append(("all", f"{report.macs / 1e9:.3f}", f"{std_t.macs / 1e9:.3f}", f"{sep_t.macs / 1e9:.3f}",
                      f"{sep_t.macs / std_t.macs:.3f}"))
    print(format_table(flow_rows, ["flow", "all layers GMACs", "standard GMACs", "separable GMACs", "ratio"],
                       right=(1, 2, 3, 4)))
    print()
    print(f"With standard convs in place of the {len(report.separable)} separable ones the model would need "
          f"{report.standard_model_macs / 1e9:.1f} G multiply-adds ({report.standard_model_macs / report.macs:.1f}× "
          f"more) and {report.total_params - sep_t.params + std_t.params:,} parameters.")
    if args.plot:
        print(f"chart: {args.plot}")
    return 0

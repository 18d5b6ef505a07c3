"""``xception ablate``: re-test the paper's claims — train the ablation variants over seeds, report verdicts."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

DEFAULT_OUT = "runs/ablation"

EXAMPLES = """\
examples:
  xception ablate                                      # Fashion-MNIST, 6 variants × 3 seeds → runs/ablation
  xception ablate --variants paper,relu,elu --seeds 5 --out runs/fig10
  xception ablate photos/ --test photos-test/ --epochs 10 --set model.width=0.5
  xception ablate --resume runs/ablation               # continue a stopped sweep with its own settings
  xception ablate --report-only --out runs/ablation    # the report of the runs finished so far
  xception ablate --report-only --from docs/ablation/report.json   # judge a stored report again, no runs
  torchrun --standalone --nproc-per-node 8 -m xception ablate --device cuda

Every (variant, seed) is an ordinary run folder, DIR/<variant>/seed<k>; running the same command again
skips finished runs and resumes an interrupted one. Ctrl-C (exit status 130) or SIGTERM (143) stops the run
in progress after its current update, with a checkpoint. The report: DIR/report.md, report.json and plots.
"""

# Flags that change what a sweep measures (refused with --resume, which takes them from the sweep folder).
_SETTINGS = ("data", "val", "test", "recipe", "epochs", "evals_per_epoch", "margin", "set")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "ablate", help="re-test the paper's claims: train ablation variants over seeds, report verdicts",
        description="Train the paper's model and its ablation variants (a ReLU or ELU between the depthwise and "
        "pointwise steps, no residual connections, pointwise first, standard convs) with one recipe, the same "
        "number of updates and the same data order per seed; then report each variant's accuracy over seeds and, "
        "for each comparison behind the paper's claims, a paired t-interval and a verdict (agrees with the paper / "
        "contradicts the paper / undecided at N seeds, with the seeds the spread suggests), each claim's tally of "
        "them, and plots in the form of the paper's Figs. 9 and 10.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("data", nargs="?", help="image folder, or 'fashion-mnist' (the default)")
    p.add_argument("--variants", metavar="A,B,…", help="comma-separated variants (default: all; see --list-variants)")
    p.add_argument("--seeds", type=int, metavar="N", help="runs per variant, seeds 0 … N−1 (default 3)")
    p.add_argument("--out", metavar="DIR", help=f"the sweep folder (default {DEFAULT_OUT})")
    p.add_argument("--resume", metavar="DIR", help="continue the sweep in DIR with the settings it was started with")
    p.add_argument("--val", metavar="FOLDER", help="validation folder (default: a held-out share of DATA)")
    p.add_argument("--test", metavar="FOLDER", help="test folder (default: Fashion-MNIST's test split, or DATA/test)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--recipe", help="base recipe: a shipped name or a .toml file (default: the sweep's own, "
                   "see xception.ablate.default_recipe)")
    p.add_argument("--epochs", type=int, metavar="N", help="the budget, equal for every variant (default 3)")
    p.add_argument("--evals-per-epoch", type=int, metavar="K", help="validation points per epoch (default 4)")
    p.add_argument("--margin", type=float, metavar="X", help="percentage points counted as equal (default 0.5)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any recipe setting, e.g. --set model.width=0.25 --set lr=0.1 (repeatable)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (may change between sessions)")
    p.add_argument("--report-dir", metavar="DIR", help="write report.md, report.json and plots here (default: DIR)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report of the runs finished so far in --out (or --resume DIR); train nothing")
    p.add_argument("--from", dest="from_json", metavar="REPORT.JSON",
                   help="with --report-only: rebuild report.md and report.json from a stored report.json, judging "
                   "its per-seed values again (no runs needed; the plots there are kept); written next to it or "
                   "in --report-dir")
    p.add_argument("--list-variants", action="store_true", help="list the variants and exit")
    p.add_argument("--progress", action="store_true", help="progress bars while training")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..ablate import VARIANTS, SweepConfig, collect_results, run_sweep, write_report
    from ..errors import ConfigError
    from ._common import print_json, stop_status
    from ._output import setup_logging

    if args.list_variants:
        for name, variant in VARIANTS.items():
            options = ", ".join(f"{k}={v}" for k, v in variant.options.items()) or "(none)"
            print(f"{name:16s} {variant.what}; model options: {options}")
        return 0
    setup_logging()
    if args.from_json:
        return _rebuild(args)
    variants = tuple(v.strip() for v in args.variants.split(",") if v.strip()) if args.variants else None
    stored = args.resume or ((args.out or DEFAULT_OUT) if args.report_only else None)
    if stored:
        given = [f"--{k.replace('_', '-')}" for k in _SETTINGS if getattr(args, k) not in (None, [])]
        if given:
            raise ConfigError(f"{'--resume' if args.resume else '--report-only'} takes the sweep's settings from "
                              f"{stored}; leave out {', '.join(given)}")
        config = SweepConfig.load(stored)
        changes: dict[str, Any] = {}
        if variants:
            changes["variants"] = variants
        if args.seeds is not None:
            changes["seeds"] = args.seeds
        if changes:
            config = SweepConfig(**{**vars(config), **changes})
    else:
        config = _config(args, variants)
    if args.device:
        assert config.recipe is not None
        config.recipe = config.recipe.replace(device=args.device)

    if args.report_only:
        results, missing = collect_results(config)
        if not results:
            raise ConfigError(f"{config.out} has no finished runs yet to report")
        report, files = write_report(config, results, args.report_dir)
        if args.json:
            print_json({"report": files[0], "missing": missing, "claims": _verdicts(report)})
        else:
            print(f"report: {files[0]} ({len(results)} runs; {len(missing)} not finished)")
        return 0

    outcome = run_sweep(config, report_dir=args.report_dir, progress=args.progress)
    status = stop_status(outcome.stop_signal) if outcome.interrupted else 0
    if not outcome.is_main:
        return status
    summary = {"out": config.out, "report": outcome.report_files[0] if outcome.report_files else None,
               "interrupted": outcome.interrupted, "skipped": outcome.skipped, "resumed": outcome.resumed,
               "claims": _verdicts(outcome.report) if outcome.report else None}
    if args.json:
        print_json(summary)
    elif outcome.report:
        _print_verdicts(outcome.report)
        print(f"report: {outcome.report_files[0]}")
    return status


def _config(args: argparse.Namespace, variants: tuple[str, ...] | None) -> Any:
    """The sweep the flags describe, with the command line that reproduces it."""
    from pathlib import Path

    from ..ablate import DEFAULT_VARIANTS, SweepConfig, default_recipe
    from ..train import apply_overrides, load_recipe

    base = load_recipe(args.recipe) if args.recipe else default_recipe(args.data)
    recipe = base.replace(epochs=args.epochs) if args.epochs is not None else base
    recipe = apply_overrides(recipe, args.set)
    out = Path(args.out or DEFAULT_OUT)
    config = SweepConfig(
        out=out, recipe=recipe, variants=variants or DEFAULT_VARIANTS,
        seeds=args.seeds if args.seeds is not None else 3, data=args.data, val=args.val, test=args.test,
        data_dir=args.data_dir,
        evals_per_epoch=args.evals_per_epoch if args.evals_per_epoch is not None else 4,
        margin=args.margin if args.margin is not None else 0.5,
    )
    words = ["xception", "ablate"] + ([args.data] if args.data else []) + ["--out", str(out)]
    words += ["--variants", ",".join(config.variants), "--seeds", str(config.seeds)]
    for flag, value in (("--val", args.val), ("--test", args.test), ("--recipe", args.recipe),
                        ("--epochs", args.epochs), ("--evals-per-epoch", args.evals_per_epoch),
                        ("--margin", args.margin)):
        if value is not None:
            words += [flag, str(value)]
    for item in args.set:
        words += ["--set", item]
    config.command = shlex.join(words)
    return config


def _rebuild(args: argparse.Namespace) -> int:
    """--report-only --from: the report again from a stored report.json, with nothing else to go on."""
    from ..ablate import rebuild_report
    from ..errors import ConfigError
    from ._common import print_json

    given = [f"--{k.replace('_', '-')}" for k in (*_SETTINGS, "variants", "seeds", "out", "resume", "device")
             if getattr(args, k) not in (None, [])]
    if not args.report_only:
        raise ConfigError("--from rebuilds a stored report and trains nothing: give it with --report-only")
    if given:
        raise ConfigError(f"--from rebuilds a stored report alone; leave out {', '.join(given)}")
    report, files = rebuild_report(args.from_json, args.report_dir)
    if args.json:
        print_json({"report": files[0], "claims": _verdicts(report)})
    else:
        _print_verdicts(report)
        print(f"report: {files[0]} (rebuilt from {args.from_json})")
    return 0


def _print_verdicts(report: dict[str, Any]) -> None:
    for number, claim in enumerate(report["claims"], 1):
        print(f"{number}. {claim['title']} ({claim['where']}): {claim['verdict']}")
        for row in claim["comparisons"]:
            what = "final" if row["measure"] == "final" else "convergence"
            print(f"   {row['a']} − {row['b']} ({what}): {row['verdict']}")


def _verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Each claim's verdict, and each of its comparisons' own."""
    return [{"claim": c["key"], "where": c["where"], "verdict": c["verdict"],
             "comparisons": [{"a": r["a"], "b": r["b"], "measure": r["measure"], "verdict": r["verdict"]}
                             for r in c["comparisons"]]} for c in report["claims"]]

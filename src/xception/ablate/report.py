"""The sweep's report: per-variant figures over seeds, a tested verdict for each of the paper's claims,
plots in the paper's form; written as report.json, report.md and PNGs.

The report is a function of the runs' result.json files and the sweep's settings alone (no clock, no
host name), so rebuilding it from a finished sweep gives the same files.

Measures, in percentage points:

* ``final``: the final model's test top-1 when the sweep has test data, else its final validation top-1.
  The final model, not the best checkpoint: choosing the best epoch on the validation set would bias it.
* ``auc``: the mean validation top-1 over the evaluation points, equally spaced in updates: the area under
  the validation curve per update, the measure of convergence speed (a curve that rises sooner has more).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import statistics
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..fileio import atomic_write
from ..runtime import cpu_name
from ..tables import plural
from .stats import Spread, paired_interval
from .sweep import RunResult, SweepConfig, measure
from .variants import CLAIMS, VARIANTS, Comparison
from .verdicts import POWER, claim_entry, judge, judge_report, seeds_note, short_verdict

REPORT_MD, REPORT_JSON = "report.md", "report.json"
MEASURES = {
    "final": "final accuracy",
    "auc": "mean validation top-1 over the run (area under the curve)",
}


def val_at(result: RunResult, share: float) -> float:
    """Validation top-1 (percent) at ``share`` of the budget, linear between evaluation points."""
    step = share * result.steps
    points = [(0, None)] + [(p["step"], p["val_top1"]) for p in result.curve]
    for (s0, v0), (s1, v1) in itertools.pairwise(points):
        if step <= s1:
            if v0 is None:
                return 100.0 * v1
            return 100.0 * (v0 + (v1 - v0) * (step - s0) / max(s1 - s0, 1))
    return 100.0 * points[-1][1]


def val_at_time(result: RunResult, seconds: float) -> float:
    """Validation top-1 (percent) after ``seconds`` of training, linear between evaluation points (the
    last point's beyond the end, the first point's before it)."""
    curve = result.curve
    if seconds <= curve[0]["train_time_s"]:
        return 100.0 * curve[0]["val_top1"]
    for p0, p1 in itertools.pairwise(curve):
        if seconds <= p1["train_time_s"]:
            share = (seconds - p0["train_time_s"]) / max(p1["train_time_s"] - p0["train_time_s"], 1e-9)
            return 100.0 * (p0["val_top1"] + share * (p1["val_top1"] - p0["val_top1"]))
    return 100.0 * curve[-1]["val_top1"]


@functools.lru_cache(maxsize=1)
def paper_model_ratio() -> float:
    """Multiply-adds of the all-standard-conv paper model over the paper model's, at 299 px (8.2)."""
    from ..analysis import model_cost
    from ..api import create_model

    report = model_cost(create_model("xception"), 299)
    return report.standard_model_macs / report.macs


def build_report(config: SweepConfig, results: list[RunResult]) -> dict[str, Any]:
    """Everything report.md shows, as plain data (report.json)."""
    assert config.recipe is not None
    use_test = config.test_data is not None
    by_key = {(r.variant, r.seed): r for r in results}
    done = {k: r for k, r in by_key.items() if r.status == "done"}
    seeds = config.seed_list
    variants = []
    for name in config.variants:
        runs = [by_key[(name, s)] for s in seeds if (name, s) in by_key]
        ok = [r for r in runs if r.status == "done"]

        def spread(values: list[float]) -> dict[str, Any] | None:
            s = Spread.of(values)
            return None if s is None else {"mean": s.mean, "std": s.std, "n": s.n}

        variants.append({
            "name": name, "what": VARIANTS[name].what, "options": VARIANTS[name].options,
            "runs": len(runs), "diverged": sum(r.status == "diverged" for r in runs),
            "params": runs[0].params if runs else None, "macs": runs[0].macs if runs else None,
            "final_val_top1": spread([100.0 * (r.final_val_top1 or 0.0) for r in ok]),
            "test_top1": spread([100.0 * r.test_top1 for r in ok if r.test_top1 is not None]),
            "auc": spread([measure(r, "auc", use_test) for r in ok]),
            "val_at_25": spread([val_at(r, 0.25) for r in ok]),
            "val_at_50": spread([val_at(r, 0.5) for r in ok]),
            "train_time_s": spread([r.train_time_s for r in ok if r.train_time_s is not None]),
            "images_per_s": spread([r.images_per_s for r in ok if r.images_per_s is not None]),
            "elapsed_s": spread([r.elapsed_s for r in ok if r.elapsed_s is not None]),
        })
    claims = [_claim(claim, config, done, use_test) for claim in CLAIMS]
    first = next(iter(results), None)
    recipe = config.recipe
    return {
        "title": "The paper's claims, re-tested",
        "command": config.command,
        "data": config.data or "fashion-mnist",
        "test_data": config.test_data,
        "final_measure": "test top-1" if use_test else "final validation top-1",
        "recipe": recipe.to_dict(),
        "seeds": seeds,
        "evals_per_epoch": config.evals_per_epoch,
        "margin": config.margin,
        "budget": {"epochs": recipe.epochs, "steps": first.steps if first else None,
                   "global_batch": first.global_batch if first else None},
        "device": sorted({r.device for r in results if r.device}),
        "cpu": cpu_name() if any(r.device == "cpu" for r in results) else None,  # the runs record no CPU model
        "threads": sorted({r.threads for r in results if r.threads}),
        "world_size": sorted({r.world_size for r in results}),
        "missing": [[v, s] for v in config.variants for s in seeds if (v, s) not in by_key],
        "updates": sorted({r.steps for r in done.values()}),  # one value when every budget was equal
        "variants": variants,
        "claims": claims,
        "runs": [{"variant": r.variant, "seed": r.seed, "status": r.status, "steps": r.steps,
                  "final_val_top1": r.final_val_top1, "test_top1": r.test_top1, "train_time_s": r.train_time_s,
                  "images_per_s": r.images_per_s, "elapsed_s": r.elapsed_s}
                 for r in sorted(results, key=lambda r: (config.variants.index(r.variant), r.seed))],
    }


def _claim(claim: Any, config: SweepConfig, done: dict[tuple[str, int], RunResult], use_test: bool) -> dict[str, Any]:
    rows = []
    for comparison in claim.comparisons:
        if comparison.a not in config.variants or comparison.b not in config.variants:
            continue
        rows.append(_compare(comparison, config, done, use_test))
    out = claim_entry(vars(claim), rows)
    if claim.key == "separable" and rows:
        out["facts"] = _separable_facts(config, done)
    return out


def _compare(comparison: Comparison, config: SweepConfig, done: dict[tuple[str, int], RunResult],
             use_test: bool) -> dict[str, Any]:
    seeds = [s for s in config.seed_list if (comparison.a, s) in done and (comparison.b, s) in done]
    a = [measure(done[(comparison.a, s)], comparison.measure, use_test) for s in seeds]
    b = [measure(done[(comparison.b, s)], comparison.measure, use_test) for s in seeds]
    return judge({"a": comparison.a, "b": comparison.b, "measure": comparison.measure, "test": comparison.test,
                  "seeds": seeds, "a_values": a, "b_values": b}, config.margin)


def _separable_facts(config: SweepConfig, done: dict[tuple[str, int], RunResult]) -> dict[str, Any]:
    """What the standard convs cost beside the separable ones, and where the paper model stands at equal time."""
    paper = [done[("paper", s)] for s in config.seed_list if ("paper", s) in done]
    standard = [done[("standard-conv", s)] for s in config.seed_list if ("standard-conv", s) in done]
    if not paper or not standard:
        return {}
    facts: dict[str, Any] = {
        "macs_ratio": standard[0].macs / paper[0].macs,
        "params_ratio": standard[0].params / paper[0].params,
        "paper_model_macs_ratio_299": paper_model_ratio(),
        "time_ratio": statistics.fmean(r.train_time_s or 0.0 for r in standard)
        / max(statistics.fmean(r.train_time_s or 0.0 for r in paper), 1e-9),
    }
    # Equal training time: the standard-conv model's validation top-1 when it has trained as long as the paper
    # model did for its whole budget (its schedule then still has its learning rate high: a fact, not a test).
    seeds = [s for s in config.seed_list if ("paper", s) in done and ("standard-conv", s) in done]
    if seeds:
        a = [100.0 * (done[("paper", s)].final_val_top1 or 0.0) for s in seeds]
        b = [val_at_time(done[("standard-conv", s)], done[("paper", s)].train_time_s or 0.0) for s in seeds]
        facts["equal_time"] = {"seeds": seeds, "paper_final_val": a, "standard_val_at_paper_time": b,
                               "interval": paired_interval(a, b).to_dict()}
    return facts


# -- writing ---------------------------------------------------------------------------------------------


def write_report(config: SweepConfig, results: list[RunResult],
                 folder: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """report.json, report.md and the plots in ``folder`` (default: the sweep folder), each written
    atomically; returns the report and the files (report.md first)."""
    from .plots import draw_all

    folder = Path(folder) if folder is not None else config.out
    report = build_report(config, results)
    plots = draw_all(config, results, folder)
    report["plots"] = [p.name for p in plots]
    return report, [*_write_text(report, folder), *plots]


def rebuild_report(source: str | os.PathLike[str],
                   folder: str | os.PathLike[str] | None = None) -> tuple[dict[str, Any], list[Path]]:
    """report.md and report.json again from a stored report.json alone, its comparisons judged again from their
    per-seed values (:func:`~.verdicts.judge_report`): no runs needed. The plots need the runs' curves, which
    report.json does not hold: those in ``source``'s folder are kept (copied when ``folder``, default that
    folder, is another). Returns the report and the files (report.md first)."""
    source = Path(source)
    try:
        stored = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{source} is not a readable report.json: {err}") from err
    if not isinstance(stored, dict) or not {"claims", "margin", "runs"} <= stored.keys():
        raise ConfigError(f"{source} is not an ablation report.json (no claims, margin and runs)")
    folder = Path(folder) if folder is not None else source.parent
    plots = [source.parent / name for name in stored.get("plots", []) if (source.parent / name).is_file()]
    if folder.resolve() != source.parent.resolve():
        plots = [atomic_write(folder / p.name, lambda tmp, p=p: tmp.write_bytes(p.read_bytes())) for p in plots]
    report = {**judge_report(stored), "plots": [p.name for p in plots]}
    return report, [*_write_text(report, folder), *plots]


def _write_text(report: dict[str, Any], folder: Path) -> list[Path]:
    """report.md and report.json, each written atomically."""
    text = render_markdown(report)
    md = atomic_write(folder / REPORT_MD, lambda tmp: tmp.write_text(text))
    js = atomic_write(folder / REPORT_JSON, lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    return [md, js]


def _pm(spread: dict[str, Any] | None, digits: int = 2) -> str:
    if spread is None:
        return "–"
    text = f"{spread['mean']:.{digits}f}"
    return text + (f" ± {spread['std']:.{digits}f}" if spread["std"] is not None else "")


def _interval_text(row: dict[str, Any]) -> tuple[str, str]:
    interval = row["interval"]
    if interval is None:
        return "–", "–"
    bounds = "–" if interval["low"] is None else f"[{interval['low']:+.2f}, {interval['high']:+.2f}]"
    return f"{interval['mean']:+.2f}", bounds


def render_markdown(report: dict[str, Any]) -> str:
    """report.md: setup, the variants' figures, each claim with its test and verdict, the plots, every run."""
    sections = (_md_introduction, _md_setup, _md_in_short, _md_variants, _md_claims, _md_cost_plots, _md_runs)
    return "\n".join(line for section in sections for line in section(report)) + "\n"


def _md_introduction(report: dict[str, Any]) -> list[str]:
    """The title, what the paper claims, the scale of this reproduction and the command that ran it."""
    recipe, budget = report["recipe"], report["budget"]
    options = ", ".join(f"{k}={v}" for k, v in recipe["model_options"].items())
    lines = [f"# {report['title']}", ""]
    lines += [
        "Xception (Chollet, CVPR 2017) makes claims about its design that this library's model options can "
        "test: the non-linearity between the depthwise and pointwise steps (§4.8, Fig. 10), the residual "
        "connections (§4.7, Fig. 9), the order of the two steps (§3) and the cost of separable against "
        "standard convolutions (§3–4). This report trains each variant with one recipe and tests each claim on "
        "paired runs.",
        "",
        f"**Scale.** The paper's Figs. 9 and 10 are ImageNet curves of the full model and give no final numbers "
        f"in the text. This is a small-scale reproduction: `{recipe['model']}` ({options}) on "
        f"{report['data']} at {recipe['input_size']} px for {plural(budget['epochs'], 'epoch')}. What it finds holds "
        "for this scale; it neither confirms nor refutes the ImageNet results.",
        "",
    ]
    if report["command"]:
        lines += ["Command:", "", "```bash", report["command"], "```", ""]
    return lines


def _md_setup(report: dict[str, Any]) -> list[str]:
    """Budget, seeds, evaluation, statistics and machine; then what makes the comparison uneven, if anything."""
    recipe, budget = report["recipe"], report["budget"]
    seeds = report["seeds"]
    n = len(seeds)
    lines = ["## Setup", ""]
    threads = ", ".join(map(str, report["threads"])) or "?"
    lines += [
        f"- **Budget**: {plural(budget['epochs'], 'epoch')} = {budget['steps']} optimizer updates of "
        f"{budget['global_batch']} images for every variant, one schedule: "
        f"{recipe['optimizer']} (lr {recipe['lr']}, {recipe['schedule']} schedule, warm-up "
        f"{plural(recipe['warmup_epochs'], 'epoch')}), weight decay {recipe['weight_decay']}, label smoothing "
        f"{recipe['label_smoothing']}.",
        f"- **Seeds**: {', '.join(map(str, seeds))}. A seed fixes the validation split, the order of the training "
        "images and their augmentation — the same for every variant of that seed — and the initialisation.",
        f"- **Evaluation**: validation top-1 {report['evals_per_epoch']} times per epoch; the final model (not the "
        f"best checkpoint) on {report['test_data'] or 'no test set (final validation top-1 instead)'}.",
        "- **Statistics**: mean ± standard deviation over seeds. Each claim compares variants seed by seed "
        "(same data order) with a 95 % t-interval of the mean difference, n − 1 degrees of freedom for n seeds"
        + _t_sentence(report, n),
        f"  Each comparison gets its own verdict: it **agrees with the paper** when its interval lies wholly on the "
        f"side the paper claims (above 0; for \"about equal\", within ±{report['margin']:g} points; for \"buys "
        f"little\", at most +{report['margin']:g}), **contradicts the paper** when wholly on the other side, and is "
        "**undecided** at that number of seeds when it reaches across. A claim's verdict counts its comparisons.",
        f"- **Machine**: {', '.join(report['device']) or '?'}; torch threads per process: {threads}; processes: "
        f"{', '.join(map(str, report['world_size']))}"
        + (f"; CPU where this report was written: {report['cpu']}." if report.get("cpu") else "."),
        "",
    ]
    if len(report["updates"]) > 1:
        lines += [f"**Unequal budgets**: the runs made {', '.join(map(str, report['updates']))} updates (runs "
                  "continued on another number of processes change the global batch); the comparisons are not "
                  "at an equal number of updates.", ""]
    if report["missing"]:
        missing = ", ".join(f"{v} seed {s}" for v, s in report["missing"])
        lines += [f"**Incomplete**: no result yet for {missing}; the figures below leave them out.", ""]
    return lines


def _md_in_short(report: dict[str, Any]) -> list[str]:
    """One line per claim: the tally of its comparisons, then each comparison's difference and verdict."""
    lines = ["## In short", ""]
    for claim in report["claims"]:
        parts = []
        for row in claim["comparisons"]:
            mean, bounds = _interval_text(row)
            what = "final" if row["measure"] == "final" else "convergence"
            parts.append(f"`{row['a']}` − `{row['b']}` ({what}) {mean} points {bounds}: {short_verdict(row)}")
        found = f" — {'; '.join(parts)}" if parts else ""
        lines.append(f"- {claim['where']}, {claim['short']}: **{claim['verdict']}**{found}.")
    lines += ["", "Differences are in percentage points of top-1, with their 95 % intervals; \"final\" is the "
              f"{report['final_measure']}, \"convergence\" the mean validation top-1 over the run.", ""]
    return lines


def _md_variants(report: dict[str, Any]) -> list[str]:
    """The variants' cost and figures over seeds, one table row each."""
    lines = ["## Variants", ""]
    lines += ["| variant | what changes | parameters | M mult-adds | val top-1 % | test top-1 % | mean val top-1 % "
              "| val top-1 % at 25 % | train s | img/s |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for v in report["variants"]:
        params = f"{v['params']:,}" if v["params"] is not None else "–"
        macs = f"{v['macs'] / 1e6:.1f}" if v["macs"] is not None else "–"
        diverged = f" ({v['diverged']} diverged)" if v["diverged"] else ""
        lines.append(f"| `{v['name']}`{diverged} | {v['what']} | {params} | {macs} | {_pm(v['final_val_top1'])} | "
                     f"{_pm(v['test_top1'])} | {_pm(v['auc'])} | {_pm(v['val_at_25'])} | "
                     f"{_pm(v['train_time_s'], 0)} | {_pm(v['images_per_s'], 0)} |")
    lines += ["", "Mean val top-1: the mean over the evaluation points, i.e. the area under the validation curve "
              "per update (higher = converges faster). Train s: training alone (the loop's per-epoch "
              "throughput); img/s: training images per second.", ""]
    return lines


def _md_claims(report: dict[str, Any]) -> list[str]:
    lines = ["## The claims", ""]
    for number, claim in enumerate(report["claims"], 1):
        lines += _md_claim(number, claim, report)
    return lines


def _md_claim(number: int, claim: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """One claim: its tally, each comparison's verdict, the seeds the undecided ones might need, its facts and
    its figure."""
    lines = [f"### {number}. {claim['title']} ({claim['where']})", "", f"**Verdict: {claim['verdict']}.**", ""]
    rows = claim["comparisons"]
    if rows:
        lines += ["| comparison | measure | seeds | difference (points) | 95 % interval | the paper expects "
                  "| verdict |", "|---|---|---:|---:|---:|---|---|"]
        for row in rows:
            mean, bounds = _interval_text(row)
            lines.append(f"| `{row['a']}` − `{row['b']}` | {_measure_text(row, report)} | {len(row['seeds'])} | "
                         f"{mean} | {bounds} | {row['expects']} | {row['verdict']} |")
        lines.append("")
    undecided = [row for row in rows if row["outcome"] == "undecided"]
    if undecided:
        lines += [f"How many seeds might decide the undecided comparisons: the fewest whose 95 % interval would "
                  f"clear the paper's boundary with {round(100 * POWER)} % probability, were the true mean and "
                  "spread of the paired differences the ones observed here (a t-based power estimate; a "
                  "spread from few seeds is itself uncertain).", ""]
        lines += [seeds_note(row, _measure_text(row, report)) for row in undecided] + [""]
    facts = claim.get("facts")
    if facts:
        lines += _md_separable_facts(facts)
    if claim["figure"] and claim["figure"] in report.get("plots", []):
        lines += [f"![{claim['where']}]({claim['figure']})", ""]
    return lines


def _measure_text(row: dict[str, Any], report: dict[str, Any]) -> str:
    return report["final_measure"] if row["measure"] == "final" else "mean val top-1 (convergence)"


def _md_separable_facts(facts: dict[str, Any]) -> list[str]:
    """What the standard convs cost, and the race at equal training time (reported, not tested)."""
    lines = [
        f"The standard-conv model costs {facts['macs_ratio']:.1f}× the multiply-adds and "
        f"{facts['params_ratio']:.1f}× the parameters of the paper model here, and trains "
        f"{facts['time_ratio']:.1f}× as long on this machine. (The full-size paper model at 299 px: "
        f"{facts['paper_model_macs_ratio_299']:.1f}×; narrow layers save less, as the ratio 1/N + 1/k² "
        "says.)",
    ]
    if "equal_time" in facts:
        eq = facts["equal_time"]["interval"]
        bounds = "" if eq["low"] is None else f" (95 % interval [{eq['low']:+.2f}, {eq['high']:+.2f}])"
        lines.append(f"At equal training time — when the standard-conv model has trained as long as the "
                     f"paper model did in all — the paper model's validation top-1 minus the standard-conv "
                     f"model's is {eq['mean']:+.2f} points{bounds}; the standard-conv model's schedule has "
                     "not annealed by then, so this is a fact about this recipe, not a fair race.")
    lines.append("")
    return lines


def _md_cost_plots(report: dict[str, Any]) -> list[str]:
    lines = ["## Accuracy against cost", ""]
    for name, title in (("accuracy-vs-multiply-adds.png", "accuracy against multiply-adds"),
                        ("accuracy-vs-time.png", "validation accuracy against training time")):
        if name in report.get("plots", []):
            lines += [f"![{title}]({name})", ""]
    return lines


def _md_runs(report: dict[str, Any]) -> list[str]:
    """Every run's status and figures, including the diverged ones the figures above leave out."""
    lines = ["## Every run", "",
             "| variant | seed | status | updates | val top-1 % | test top-1 % | train s | img/s |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in report["runs"]:
        val = f"{100 * r['final_val_top1']:.2f}" if r["final_val_top1"] is not None else "–"
        test = f"{100 * r['test_top1']:.2f}" if r["test_top1"] is not None else "–"
        t = f"{r['train_time_s']:.0f}" if r["train_time_s"] is not None else "–"
        rate = f"{r['images_per_s']:.0f}" if r["images_per_s"] is not None else "–"
        lines.append(f"| `{r['variant']}` | {r['seed']} | {r['status']} | {r['steps']} | {val} | {test} | {t} "
                     f"| {rate} |")
    return lines


def _t_sentence(report: dict[str, Any], planned: int) -> str:
    """The end of the statistics line: t at the seeds the comparisons have so far (fewer than planned while a
    sweep is incomplete)."""
    t_by_n = {len(row["seeds"]): row["interval"]["t"] for claim in report["claims"]
              for row in claim["comparisons"] if row["interval"] and row["interval"]["t"] is not None}
    if not t_by_n:
        return "."
    n = max(t_by_n)
    so_far = f" so far, of {planned}" if n < planned else ""
    return f" (n = {n}{so_far}: t = {t_by_n[n]:.2f}{', intervals are wide' if n < 6 else ''})."

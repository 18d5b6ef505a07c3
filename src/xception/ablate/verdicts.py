"""A verdict for each paired comparison, and a claim's comparisons summed up without hiding any of them.

A comparison is one variant against its baseline on one measure, paired by seed. The paper claims a
direction for the difference ``a − b``: above 0 (``greater``), within ±margin (``within``) or at most
+margin (``at_most``). Its 95 % t-interval then gives one of three verdicts:

* "agrees with the paper": the interval lies wholly on the paper's side of the boundary;
* "contradicts the paper": it lies wholly on the other side;
* "undecided at N seeds": it reaches across the boundary (or one seed gives no interval). Such a
  comparison also gets the number of seeds its observed spread suggests would decide it
  (:func:`~.stats.seeds_for`): an estimate, not a promise.

A claim tested several ways gets the tally ("1 of 4 comparisons agrees with the paper, 3 undecided at
3 seeds"), never a single word that would stand for all of them.

Everything here reads a comparison's stored per-seed values alone, so a report.json written earlier can be
judged again (:func:`judge_report`) without its runs.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from ..tables import plural
from .stats import Interval, paired_interval, seeds_for

AGREE, CONTRADICT, UNDECIDED, UNTESTED = "agree", "contradict", "undecided", "untested"
VERDICTS = {AGREE: "agrees with the paper", CONTRADICT: "contradicts the paper"}
LEANS = {AGREE: "agree with the paper", CONTRADICT: "contradict the paper"}
NOT_RUN = "not tested (its variants were not run)"
NO_SEEDS = "not tested (no seed has both runs)"
POWER = 0.8  # the chance of a decision the seed estimate aims at, the usual choice
# What a comparison stores of its runs; the rest of its entry is judged from these.
INPUTS = ("a", "b", "measure", "test", "seeds", "a_values", "b_values")
CLAIM_KEYS = ("key", "short", "title", "where", "figure")


def boundaries(test: str, margin: float) -> tuple[float, ...]:
    """The differences at which the paper's claim turns."""
    return {"greater": (0.0,), "within": (-margin, margin)}.get(test, (margin,))


def expects(test: str, margin: float) -> str:
    """What the paper expects of the difference a − b, in words."""
    return {"greater": "above 0", "within": f"within ±{margin:g}"}.get(test, f"at most +{margin:g}")


def outcome(test: str, low: float, high: float, margin: float) -> str:
    """AGREE, CONTRADICT or UNDECIDED for an interval [low, high] of the difference a − b."""
    if test == "greater":
        agrees, contradicts = low > 0, high < 0
    elif test == "within":
        agrees, contradicts = -margin <= low and high <= margin, low > margin or high < -margin
    else:
        agrees, contradicts = high <= margin, low > margin
    return AGREE if agrees else CONTRADICT if contradicts else UNDECIDED


def judge(row: dict[str, Any], margin: float, level: float = 0.95) -> dict[str, Any]:
    """A comparison's entry: its stored inputs (:data:`INPUTS`) with the paired interval, what the paper
    expects, the outcome and verdict, and for an undecided one the seeds estimate and where its mean leans."""
    row = {key: row[key] for key in INPUTS}
    a, b, n = row["a_values"], row["b_values"], len(row["seeds"])
    if not n:
        return {**row, "interval": None, "expects": expects(row["test"], margin), "outcome": UNTESTED,
                "verdict": NO_SEEDS}
    interval = paired_interval(a, b, level)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    std = statistics.stdev(diffs) if n > 1 else None
    entry = {**row, "interval": interval.to_dict(), "expects": expects(row["test"], margin), "std": std}
    if interval.low is None or interval.high is None:
        return {**entry, "outcome": UNDECIDED, "verdict": "undecided at 1 seed (one seed gives no interval)",
                "seeds_needed": None, "lean": outcome(row["test"], interval.mean, interval.mean, margin)}
    result = outcome(row["test"], interval.low, interval.high, margin)
    if result != UNDECIDED:
        return {**entry, "outcome": result, "verdict": VERDICTS[result]}
    return {**entry, "outcome": UNDECIDED, "verdict": f"undecided at {plural(n, 'seed')}",
            "seeds_needed": _seeds_needed(interval, std or 0.0, row["test"], margin, level),
            "lean": outcome(row["test"], interval.mean, interval.mean, margin)}


def _seeds_needed(interval: Interval, std: float, test: str, margin: float, level: float) -> int | None:
    """Seeds for the interval to clear the nearest boundary, were the observed mean and spread the true ones."""
    distance = min(abs(interval.mean - edge) for edge in boundaries(test, margin))
    return seeds_for(distance, std, level=level, power=POWER)


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A claim's verdict, the tally of its comparisons in words, and the tally itself."""
    tally = Counter(row["outcome"] for row in rows)
    counts = {key: tally[key] for key in (AGREE, CONTRADICT, UNDECIDED, UNTESTED)}
    if not rows:
        return {"verdict": NOT_RUN, "tally": counts}
    agree, contradict, undecided = counts[AGREE], counts[CONTRADICT], counts[UNDECIDED]
    verb = "agrees" if 1 in (agree, len(rows)) else "agree"
    parts = [f"{agree} of {plural(len(rows), 'comparison')} {verb} with the paper"]
    if contradict:
        parts.append(f"{contradict} {'contradicts' if contradict == 1 else 'contradict'} it")
    if undecided:
        sizes = {len(row["seeds"]) for row in rows if row["outcome"] == UNDECIDED}
        parts.append(f"{undecided} undecided" + (f" at {plural(sizes.pop(), 'seed')}" if len(sizes) == 1 else ""))
    if counts[UNTESTED]:
        parts.append(f"{counts[UNTESTED]} not tested")
    return {"verdict": ", ".join(parts), "tally": counts}


def claim_entry(claim: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """A claim's entry in report.json: what it says (:data:`CLAIM_KEYS`), its judged comparisons, its verdict."""
    return {**{key: claim[key] for key in CLAIM_KEYS}, "comparisons": rows, **summarise(rows)}


def judge_report(report: dict[str, Any]) -> dict[str, Any]:
    """The report with every comparison judged again from its stored per-seed values, and each claim's verdict
    from them: a report.json of an earlier version gets this version's verdicts; the rest stays as stored."""
    claims = []
    for claim in report["claims"]:
        entry = claim_entry(claim, [judge(row, report["margin"]) for row in claim["comparisons"]])
        claims.append({**entry, **({"facts": claim["facts"]} if "facts" in claim else {})})
    return {**report, "claims": claims}


# -- in words --------------------------------------------------------------------------------------------


def short_verdict(row: dict[str, Any]) -> str:
    """One word for a comparison in a list: agrees, contradicts, undecided, not tested."""
    return {AGREE: "agrees", CONTRADICT: "contradicts", UNDECIDED: "undecided"}.get(row["outcome"], "not tested")


def seeds_note(row: dict[str, Any], what: str) -> str:
    """For an undecided comparison: its spread, the seeds estimate, and what the interval would then say."""
    head = f"- `{row['a']}` − `{row['b']}`, {what}:"
    if row.get("std") is None:
        return f"{head} one seed gives no spread to estimate from; run more seeds."
    spread = (f"{head} paired differences {row['interval']['mean']:+.2f} ± {row['std']:.2f} points (mean ± std over "
              f"{plural(len(row['seeds']), 'seed')})")
    needed = row.get("seeds_needed")
    if needed is None:
        return f"{spread}; no estimate: the mean sits on the boundary, or the estimate passes 1,000 seeds."
    then = f"; if the observed mean held, the interval would {LEANS[row['lean']]}" if row["lean"] in LEANS else ""
    return f"{spread}: about {plural(needed, 'seed')} to decide it (an estimate){then}."

"""The ablation report's verdicts: one per paired comparison, a claim's tally of them, the seeds an undecided
one might need, and the same verdicts again when the report is rebuilt from its report.json alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from xception import cli
from xception.ablate import RunResult, SweepConfig, rebuild_report, write_report
from xception.ablate.stats import paired_interval, seeds_for
from xception.ablate.verdicts import AGREE, CONTRADICT, UNDECIDED, judge, outcome, summarise
from xception.cli import main
from xception.errors import ConfigError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "ablation"
SEEDS = (0, 1, 2)
# Per seed, in percentage points: test top-1, and the validation top-1 of a two-point curve whose mean is the
# convergence measure. Built so that every answer is known:
#   paper − relu, final: +1.0, +1.1, +1.2          → [+0.85, +1.35]: agrees
#   paper − elu, final: −2.0, −2.1, −2.2           → [−2.35, −1.85]: contradicts
#   paper − relu, convergence: +1.0, −1.0, +0.6    → [−2.43, +2.83] spans 0: undecided
#   paper − elu, convergence: +3.0, +3.2, +2.8     → [+2.50, +3.50]: agrees
#   pointwise-first − paper, final: +0.3, +0.5, +0.4 → [+0.15, +0.65] reaches past +0.5: undecided
TEST = {"paper": (90.0, 90.5, 91.0), "relu": (89.0, 89.4, 89.8), "elu": (92.0, 92.6, 93.2),
        "pointwise-first": (90.3, 91.0, 91.4)}
CONVERGENCE = {"paper": (80.0, 80.0, 80.0), "relu": (79.0, 81.0, 79.4), "elu": (77.0, 76.8, 77.2),
               "pointwise-first": (80.0, 80.0, 80.0)}


def result(variant: str, seed: int) -> RunResult:
    """A finished run with the figures above (accuracies as fractions, as result.json holds them)."""
    mean = CONVERGENCE[variant][seed] / 100
    curve = [{"step": 5, "epoch": 1, "val_top1": mean - 0.01, "train_time_s": 1.0},
             {"step": 10, "epoch": 2, "val_top1": mean + 0.01, "train_time_s": 2.0}]
    return RunResult(variant=variant, seed=seed, status="done", steps=10, epochs=2, global_batch=8, curve=curve,
                     final_val_top1=mean + 0.01, test_top1=TEST[variant][seed] / 100, test_images=100,
                     train_time_s=2.0, images_per_s=40.0, elapsed_s=2.5, params=1000, macs=5000, input_size=28,
                     device="cpu", threads=1)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The report of the synthetic runs, written as the sweep writes it."""
    folder = tmp_path_factory.mktemp("report")
    config = SweepConfig(out=folder, variants=tuple(TEST), seeds=len(SEEDS))
    report, files = write_report(config, [result(v, s) for s in SEEDS for v in TEST], folder)
    return folder, report, files


def rows_of(report: dict) -> dict[tuple[str, str, str], dict]:
    return {(r["a"], r["b"], r["measure"]): r for c in report["claims"] for r in c["comparisons"]}


def test_each_comparison_gets_its_own_verdict(written):
    _, report, _ = written
    rows = rows_of(report)
    expected = {
        ("paper", "relu", "final"): (AGREE, "agrees with the paper", 1.1),
        ("paper", "elu", "final"): (CONTRADICT, "contradicts the paper", -2.1),
        ("paper", "relu", "auc"): (UNDECIDED, "undecided at 3 seeds", 0.2),
        ("paper", "elu", "auc"): (AGREE, "agrees with the paper", 3.0),
        ("pointwise-first", "paper", "final"): (UNDECIDED, "undecided at 3 seeds", 0.4),
    }
    assert set(rows) == set(expected)
    for key, (found, words, mean) in expected.items():
        row = rows[key]
        assert (row["outcome"], row["verdict"]) == (found, words), key
        assert row["interval"]["mean"] == pytest.approx(mean, abs=1e-9)
        assert row["seeds"] == list(SEEDS)
    assert rows[("paper", "relu", "final")]["expects"] == "above 0"
    assert rows[("pointwise-first", "paper", "final")]["expects"] == "within ±0.5"
    # Only an undecided comparison gets a seeds estimate, and the side its mean leans to.
    assert "seeds_needed" not in rows[("paper", "relu", "final")]
    assert rows[("paper", "relu", "auc")]["lean"] == AGREE
    assert rows[("pointwise-first", "paper", "final")]["lean"] == AGREE


def test_a_claim_lists_its_comparisons_instead_of_one_word(written):
    folder, report, _ = written
    claims = {c["key"]: c for c in report["claims"]}
    assert claims["activation"]["verdict"] == (
        "2 of 4 comparisons agree with the paper, 1 contradicts it, 1 undecided at 3 seeds")
    assert claims["activation"]["tally"] == {AGREE: 2, CONTRADICT: 1, UNDECIDED: 1, "untested": 0}
    assert claims["order"]["verdict"] == "0 of 1 comparison agrees with the paper, 1 undecided at 3 seeds"
    assert claims["residual"]["verdict"] == claims["separable"]["verdict"] == "not tested (its variants were not run)"
    text = (folder / "report.md").read_text()
    assert "**Verdict: 2 of 4 comparisons agree with the paper, 1 contradicts it, 1 undecided at 3 seeds.**" in text
    assert ("| `paper` − `elu` | test top-1 | 3 | -2.10 | [-2.35, -1.85] | above 0 | contradicts the paper |"
            in text)
    assert "`paper` − `relu` (convergence) +0.20 points [-2.43, +2.83]: undecided" in text
    assert ("- `pointwise-first` − `paper`, test top-1: paired differences +0.40 ± 0.10 points (mean ± std over 3 "
            "seeds): about 10 seeds to decide it (an estimate); if the observed mean held, the interval would agree "
            "with the paper.") in text


def test_summaries_of_every_kind():
    def row(found: str, seeds: int = 3) -> dict:
        return {"outcome": found, "seeds": list(range(seeds))}

    assert summarise([row(AGREE), row(AGREE), row(UNDECIDED)])["verdict"] == (
        "2 of 3 comparisons agree with the paper, 1 undecided at 3 seeds")
    assert summarise([row(AGREE)])["verdict"] == "1 of 1 comparison agrees with the paper"
    assert summarise([row(CONTRADICT), row(CONTRADICT)])["verdict"] == (
        "0 of 2 comparisons agree with the paper, 2 contradict it")
    # Undecided at different numbers of seeds (a missing run): no one number to give.
    assert summarise([row(UNDECIDED, 3), row(UNDECIDED, 2), row("untested", 0)])["verdict"] == (
        "0 of 3 comparisons agree with the paper, 2 undecided, 1 not tested")


def test_intervals_turn_into_verdicts_at_their_boundaries():
    for test in ("greater", "within", "at_most"):
        assert outcome(test, 0.1, 0.2, 0.5) == AGREE
    assert [outcome("greater", low, high, 0.5) for low, high in ((0.01, 3.0), (-3.0, -0.01), (-0.5, 0.5))] == [
        AGREE, CONTRADICT, UNDECIDED]
    assert [outcome("within", low, high, 0.5) for low, high in ((-0.5, 0.5), (0.6, 0.9), (-0.9, -0.6), (0.2, 0.7))] \
        == [AGREE, CONTRADICT, CONTRADICT, UNDECIDED]
    assert [outcome("at_most", low, high, 0.5) for low, high in ((-3.0, 0.5), (0.51, 2.0), (0.4, 0.6))] == [
        AGREE, CONTRADICT, UNDECIDED]
    # One seed gives no interval: undecided, whatever its difference.
    single = judge({"a": "paper", "b": "relu", "measure": "final", "test": "greater", "seeds": [0],
                    "a_values": [95.0], "b_values": [80.0]}, 0.5)
    assert (single["outcome"], single["seeds_needed"]) == (UNDECIDED, None)
    assert single["verdict"] == "undecided at 1 seed (one seed gives no interval)"


def test_the_seeds_estimate_is_the_t_based_power_calculation():
    # By hand, from printed tables of Student's t: differences of mean 1 and standard deviation 1 need the
    # smallest n with (t_0.975,n−1 + t_0.80,n−1) / √n ≤ 1.
    tables = {8: (2.306004, 0.888890), 9: (2.262157, 0.883404)}
    assert sum(tables[8]) / math.sqrt(9) > 1.0  # 9 seeds: 1.065
    assert sum(tables[9]) / math.sqrt(10) <= 1.0  # 10 seeds: 0.995
    assert seeds_for(1.0, 1.0) == 10
    # Scale-free: only the ratio of distance to spread counts.
    assert seeds_for(0.1, 0.1) == seeds_for(7.0, 7.0) == 10
    # Differences of 9.37 ± 4.35 (as paper − no-residual): n = 4 gives (3.182446 + 0.978472) / 2 = 2.08 ≤ 2.15,
    # n = 3 gives (4.302653 + 1.060660) / √3 = 3.10.
    assert seeds_for(9.37, 4.35) == 4
    assert seeds_for(0.0, 1.0) is None and seeds_for(0.001, 1.0) is None  # past 1,000 seeds
    # A comparison measures its distance to the nearest boundary: for "within ±0.5" and a mean of +0.4, 0.1.
    row = {"a": "pointwise-first", "b": "paper", "measure": "final", "test": "within", "seeds": [0, 1, 2],
           "a_values": [90.3, 91.0, 91.4], "b_values": [90.0, 90.5, 91.0]}
    assert judge(row, 0.5)["seeds_needed"] == 10
    assert judge({**row, "test": "at_most"}, 0.5)["seeds_needed"] == 10  # +0.5 is again 0.1 away
    # "Above 0": the distance is the mean's own; here +0.2 ± 1.058 (the undecided convergence row above).
    spread = judge({**row, "test": "greater", "a_values": [81.0, 79.0, 80.6], "b_values": [80.0, 80.0, 80.0]}, 0.5)
    assert spread["std"] == pytest.approx(math.sqrt(1.12))
    assert spread["seeds_needed"] == seeds_for(0.2, math.sqrt(1.12)) > 200
    interval = paired_interval(row["a_values"], row["b_values"])
    assert (interval.mean, interval.high) == pytest.approx((0.4, 0.4 + 4.302653 * 0.1 / math.sqrt(3)), abs=1e-6)


def old_format(report: dict) -> dict:
    """report.json as an earlier version wrote it: one word per claim, no tally, no estimate."""
    claims = []
    for claim in report["claims"]:
        rows = [{k: v for k, v in row.items() if k not in ("expects", "outcome", "std", "seeds_needed", "lean")}
                | {"verdict": "inconclusive (the interval includes 0)"} for row in claim["comparisons"]]
        claims.append({k: v for k, v in claim.items() if k != "tally"} | {"comparisons": rows,
                                                                         "verdict": "inconclusive"})
    return {**report, "claims": claims}


def test_rebuilding_from_report_json_writes_the_same_verdicts(written, tmp_path, monkeypatch, capsys):
    folder, report, files = written
    again, written_again = rebuild_report(folder / "report.json", tmp_path / "again")
    assert again == json.loads((folder / "report.json").read_text())
    for original, copy in zip(files, written_again, strict=True):
        assert copy.name == original.name and copy.read_bytes() == original.read_bytes()
    # An earlier version's report.json: its comparisons judged again from their per-seed values.
    (tmp_path / "old.json").write_text(json.dumps(old_format(report)))
    renewed, _ = rebuild_report(tmp_path / "old.json")
    assert renewed["claims"] == report["claims"] and renewed["plots"] == []  # no plots beside it
    # From the command line.
    monkeypatch.setattr(cli, "COMMANDS", ("ablate",))
    assert main(["ablate", "--report-only", "--from", str(folder / "report.json"), "--report-dir",
                 str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").read_bytes() == (folder / "report.md").read_bytes()
    capsys.readouterr()
    assert main(["ablate", "--from", str(folder / "report.json")]) == 1
    assert "give it with --report-only" in capsys.readouterr().err
    assert main(["ablate", "--report-only", "--from", str(folder / "report.json"), "--seeds", "5"]) == 1
    assert "--from rebuilds a stored report alone; leave out --seeds" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"title": "something else"}))
    with pytest.raises(ConfigError, match=r"is not an ablation report\.json"):
        rebuild_report(other)


def test_the_published_report_is_what_its_stored_values_give(tmp_path):
    rebuilt, files = rebuild_report(DOCS / "report.json", tmp_path)
    assert files[0].read_text() == (DOCS / "report.md").read_text()
    assert rebuilt == json.loads((DOCS / "report.json").read_text())


def test_the_statistics_line_gives_t_at_the_seeds_run_so_far(written, tmp_path):
    _, _, files = written
    assert "n − 1 degrees of freedom for n seeds (n = 3: t = 4.30, intervals are wide)." in files[0].read_text()
    # A sweep planned for 5 seeds with 3 run: t of 2 degrees of freedom, not of 4 (2.78).
    config = SweepConfig(out=tmp_path, variants=tuple(TEST), seeds=5)
    _, partial = write_report(config, [result(v, s) for s in SEEDS for v in TEST], tmp_path)
    text = partial[0].read_text()
    assert "(n = 3 so far, of 5: t = 4.30, intervals are wide)." in text
    assert "Incomplete" in text

"""The ablation sweep: tiny sweeps give a well-formed report, resume where they stopped, rebuild the same report;
its statistics agree with closed forms and tables of Student's t."""

from __future__ import annotations

import json
import math
import signal
import statistics
import sys
from pathlib import Path

import pytest
import torch

import xception
from data_factory import signal_on_line, stripes_folder, tiny_recipe
from xception import cli
from xception.ablate import (
    SweepConfig,
    collect_results,
    eval_steps,
    paired_interval,
    run_sweep,
    t_cdf,
    t_quantile,
)
from xception.ablate.verdicts import AGREE, CONTRADICT, UNDECIDED, outcome
from xception.analysis import model_cost
from xception.cli import main
from xception.errors import ConfigError
from xception.evaluate import evaluate
from xception.models import Xception, XceptionConfig
from xception.preprocessing import Preprocessing
from xception.train import RunSettings, StopRequest, fit, load_checkpoint, open_log, open_run, read_metrics
from xception.weights import save_weights

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def ablate_only(monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", ("ablate",))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablate-data")
    return stripes_folder(root / "train", per_class=8), stripes_folder(root / "test", per_class=4, seed=1)


def tiny_config(out: Path, data: tuple[Path, Path], **changes) -> SweepConfig:
    """18 training images in batches of 6: 3 updates per epoch, 2 epochs, validated twice per epoch."""
    train, test = data
    recipe = tiny_recipe(epochs=2, batch_size=6, deterministic=True)
    settings = {"out": out, "recipe": recipe, "variants": ("paper", "relu"), "seeds": 2, "data": str(train),
                "test": str(test), "evals_per_epoch": 2, **changes}
    return SweepConfig(**settings)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data, one_thread):
    config = tiny_config(tmp_path_factory.mktemp("sweep") / "ablation", data)
    return config, run_sweep(config, say=lambda text: None)


# -- the sweep -----------------------------------------------------------------------------------------------


def test_a_tiny_sweep_trains_ordinary_runs_with_the_same_budget(sweep, data):
    config, outcome = sweep
    assert not outcome.interrupted and outcome.skipped == [] and outcome.resumed == []
    assert [(r.variant, r.seed) for r in outcome.results] == [("paper", 0), ("relu", 0), ("paper", 1), ("relu", 1)]
    for result in outcome.results:
        run_dir = config.run_dir(result.variant, result.seed)
        for name in ("config.toml", "metrics.jsonl", "summary.json", "last.pt", "model.safetensors"):
            assert (run_dir / name).is_file(), name
        assert result.status == "done" and result.steps == 6 and result.global_batch == 6
        assert [p["step"] for p in result.curve] == eval_steps(3, 2, 2) == [2, 3, 5, 6]
        # The points at epoch ends are the loop's own validation (metrics.jsonl).
        records = read_metrics(run_dir)
        assert [r["step"] for r in records] == [3, 6]
        assert [result.curve[1]["val_top1"], result.curve[3]["val_top1"]] == [r["val_top1"] for r in records]
        assert result.final_val_top1 == result.curve[-1]["val_top1"]
        # Training time from the loop's per-epoch throughput; the curve's time axis ends there.
        # (throughput is recorded to 0.1 img/s and times to the millisecond: compare to that precision)
        seconds = sum(3 * 6 / r["train_images_per_s"] for r in records)
        assert result.train_time_s == pytest.approx(seconds, rel=5e-3, abs=1e-3)
        assert result.curve[-1]["train_time_s"] == pytest.approx(seconds, rel=5e-3, abs=1e-3)
        assert result.images_per_s == pytest.approx(36 / seconds, abs=0.051)  # rounded to 0.1
        # Cost: the variant's model, counted on its own.
        model = xception.create_model("xception", num_classes=3, in_chans=3, **config.run_recipe(
            result.variant, result.seed).model_options)
        cost = model_cost(model, 32)
        assert (result.params, result.macs) == (cost.trainable_params, cost.macs)
    # One recipe: the variants of a seed differ in their model options alone (so in data order not at all).
    paper, relu = (config.run_recipe(v, 1).to_dict() for v in ("paper", "relu"))
    assert paper.pop("model_options") != relu.pop("model_options")
    assert paper == relu and paper["seed"] == 1


def test_the_test_accuracy_is_the_final_models_as_evaluate_measures_it(sweep, data, tmp_path):
    config, outcome = sweep
    result = outcome.results[3]
    checkpoint = load_checkpoint(config.run_dir(result.variant, result.seed) / "last.pt")
    assert checkpoint["step"] == result.steps  # the final model, not the best
    model = Xception(XceptionConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    weights = tmp_path / "final.safetensors"
    save_weights(model, weights, class_names=checkpoint["class_names"],
                 preprocessing=Preprocessing.from_dict(checkpoint["preprocessing"]))
    report = evaluate(weights, data[1], device="cpu", progress=False, workers=0)
    assert result.test_images == report.counts.total == 12
    assert result.test_top1 == report.counts.top1


def test_the_report_gives_figures_over_seeds_and_a_tested_verdict_per_claim(sweep):
    config, outcome = sweep
    report = json.loads((config.out / "report.json").read_text())
    assert report == json.loads(json.dumps(outcome.report))
    assert report["budget"] == {"epochs": 2, "steps": 6, "global_batch": 6}
    assert report["final_measure"] == "test top-1" and report["missing"] == []
    results = {(r.variant, r.seed): r for r in outcome.results}
    for entry in report["variants"]:
        tests = [100 * results[(entry["name"], s)].test_top1 for s in (0, 1)]
        assert entry["test_top1"]["mean"] == pytest.approx(statistics.fmean(tests))
        assert entry["test_top1"]["std"] == pytest.approx(statistics.stdev(tests))
        assert entry["runs"] == 2 and entry["params"] == results[(entry["name"], 0)].params

    claims = {c["key"]: c for c in report["claims"]}
    assert set(claims) == {"activation", "residual", "order", "separable"}
    for key in ("residual", "order", "separable"):  # their variants were not run
        assert claims[key]["comparisons"] == [] and claims[key]["verdict"].startswith("not tested")
    rows = claims["activation"]["comparisons"]
    assert [(r["a"], r["b"], r["measure"]) for r in rows] == [("paper", "relu", "final"), ("paper", "relu", "auc")]
    for row in rows:
        # Paired over seeds, t-interval with 1 degree of freedom: t = tan(0.475 π) = 12.706…
        def value(variant, seed, measure=row["measure"]):
            r = results[(variant, seed)]
            if measure == "final":
                return 100 * r.test_top1
            return 100 * statistics.fmean(p["val_top1"] for p in r.curve)

        diffs = [value("paper", s) - value("relu", s) for s in (0, 1)]
        half = math.tan(0.475 * math.pi) * statistics.stdev(diffs) / math.sqrt(2)
        interval = row["interval"]
        assert interval["mean"] == pytest.approx(statistics.fmean(diffs))
        assert interval["low"] == pytest.approx(statistics.fmean(diffs) - half)
        assert interval["high"] == pytest.approx(statistics.fmean(diffs) + half)
        expected = AGREE if interval["low"] > 0 else CONTRADICT if interval["high"] < 0 else UNDECIDED
        assert row["outcome"] == expected and row["expects"] == "above 0"
        assert row["verdict"] == {AGREE: "agrees with the paper", CONTRADICT: "contradicts the paper",
                                  UNDECIDED: "undecided at 2 seeds"}[expected]
    tally = claims["activation"]["tally"]
    assert tally[AGREE] + tally[CONTRADICT] + tally[UNDECIDED] == 2
    assert claims["activation"]["verdict"].startswith(f"{tally[AGREE]} of 2 comparisons agree")

    text = (config.out / "report.md").read_text()
    assert text.startswith("# The paper's claims, re-tested\n")
    assert text.count("**Verdict: ") == 4
    assert "2 epochs = 6 optimizer updates of 6 images for every variant" in text
    for name in ("fig10-activation.png", "accuracy-vs-multiply-adds.png", "accuracy-vs-time.png"):
        assert f"]({name})" in text
        assert (config.out / name).read_bytes()[:8] == PNG
    assert not (config.out / "fig9-residual.png").exists()  # no no-residual runs to draw
    assert len([line for line in text.splitlines() if line.startswith("| `paper` | ") or
                line.startswith("| `relu` | ")]) == 2 + 4  # the variants table and every run


def test_a_finished_sweep_is_skipped_and_gives_the_same_report(sweep, tmp_path):
    config, _ = sweep
    names = ("result.json", "last.pt", "curve.jsonl")
    files = [config.run_dir(v, s) / name for v, s in config.runs() for name in names]
    stamps = [f.stat().st_mtime_ns for f in files]
    before = {name: (config.out / name).read_bytes() for name in ("report.md", "report.json")}
    again = run_sweep(SweepConfig.load(config.out), say=lambda text: None)
    assert again.skipped == config.runs() and again.resumed == []
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing trained or rewritten
    assert {name: (config.out / name).read_bytes() for name in before} == before
    # The report of the runs there, from the command line, elsewhere: the same text.
    assert main(["ablate", "--report-only", "--out", str(config.out), "--report-dir", str(tmp_path)]) == 0
    assert (tmp_path / "report.md").read_bytes() == before["report.md"]
    # From report.json alone, without the runs: the same report again, plots copied beside it.
    rebuilt = tmp_path / "rebuilt"
    assert main(["ablate", "--report-only", "--from", str(config.out / "report.json"), "--report-dir",
                 str(rebuilt)]) == 0
    assert {name: (rebuilt / name).read_bytes() for name in before} == before
    assert (rebuilt / "fig10-activation.png").read_bytes() == (config.out / "fig10-activation.png").read_bytes()


class StopAfter(StopRequest):
    """A stop request that arrives after the loop has looked for one ``reads`` times (as Ctrl-C would)."""

    def __init__(self, reads: int) -> None:
        self.reads = reads
        super().__init__()

    @property
    def requested(self) -> bool:
        self.reads -= 1
        return self.reads < 0

    @requested.setter
    def requested(self, value: bool) -> None:
        if value:
            self.reads = 0


def test_interrupted_runs_are_resumed_and_end_as_uninterrupted_ones(sweep, data, tmp_path, one_thread):
    _, outcome = sweep
    other = tiny_config(tmp_path / "ablation", data, variants=("relu",))
    # relu seed 1 stopped right after update 2, an evaluation point (as a lost machine would leave it).
    run = open_run(other.run_recipe("relu", 1), RunSettings(data=str(data[0])), out=other.run_dir("relu", 1))
    with open_log(run) as run_log:
        assert fit(run, run_log, steps=2).interrupted
    run.close()
    # relu seed 0 stopped by a stop request (Ctrl-C, SIGTERM) within its first stretch of training.
    stopped = run_sweep(other, stop=StopAfter(1), say=lambda text: None)
    assert stopped.interrupted and stopped.report is None and stopped.results == []
    for seed in (0, 1):
        assert (other.run_dir("relu", seed) / "last.pt").is_file()
        assert not (other.run_dir("relu", seed) / "result.json").exists()

    resumed = run_sweep(other, say=lambda text: None)
    assert resumed.resumed == [("relu", 0), ("relu", 1)] and resumed.skipped == []
    mine = {(r.variant, r.seed): r for r in outcome.results}
    for result in resumed.results:
        reference = mine[(result.variant, result.seed)]
        assert [p["step"] for p in result.curve] == [p["step"] for p in reference.curve]
        assert [p["val_top1"] for p in result.curve] == [p["val_top1"] for p in reference.curve]
        assert [p["val_loss"] for p in result.curve] == pytest.approx([p["val_loss"] for p in reference.curve])
        assert (result.test_top1, result.test_loss) == (reference.test_top1, pytest.approx(reference.test_loss))
    results, missing = collect_results(other)
    assert missing == [] and len(results) == 2


def test_sigterm_stops_the_ablate_command_with_status_143_and_keeps_the_run_to_resume(data, tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tiny_recipe(epochs=50, batch_size=6).to_toml())  # far longer than the test waits
    out = tmp_path / "sweep"
    args = [sys.executable, "-m", "xception", "ablate", str(data[0]), "--test", str(data[1]), "--recipe", str(recipe),
            "--variants", "paper", "--seeds", "1", "--evals-per-epoch", "1", "--out", str(out), "--json"]
    done = signal_on_line(args, "[1/1] paper seed 0: training", signal.SIGTERM)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    assert json.loads(done.stdout)["interrupted"] is True and "sweep stopped" in done.stderr
    run_dir = out / "paper" / "seed0"
    assert load_checkpoint(run_dir / "last.pt")["step"] >= 1
    assert not (run_dir / "result.json").exists() and not (out / "report.md").exists()


def test_a_run_whose_loss_diverges_is_recorded_and_left_out(data, tmp_path, one_thread):
    recipe = tiny_recipe(epochs=2, batch_size=6, optimizer="sgd", lr=1e12)
    config = tiny_config(tmp_path / "ablation", data, recipe=recipe, variants=("paper",), seeds=1)
    outcome = run_sweep(config, say=lambda text: None)
    (result,) = outcome.results
    assert result.status == "diverged" and result.steps < 6 and result.test_top1 is None
    variant = outcome.report["variants"][0]
    assert variant["diverged"] == 1 and variant["test_top1"] is None
    assert "| `paper` (1 diverged) |" in (config.out / "report.md").read_text()
    assert run_sweep(config, say=lambda text: None).skipped == [("paper", 0)]  # not tried again


def test_a_sweep_folder_keeps_its_settings(sweep, data):
    config, _ = sweep
    changed = tiny_config(config.out, data)
    changed.recipe = changed.recipe.replace(epochs=3)
    with pytest.raises(ConfigError, match=r"holds a sweep of other settings \(epochs: 2 there, 3 here\)"):
        run_sweep(changed, say=lambda text: None)
    with pytest.raises(ConfigError, match=r"the sweep's variants set activation themselves; remove model\.activation"):
        tiny_config(config.out, data, recipe=tiny_recipe(model_options={"stem": "small", "activation": "elu"}))
    with pytest.raises(ConfigError, match="unknown variant"):
        tiny_config(config.out, data, variants=("paper", "gelu"))


def test_the_ablate_command(data, tmp_path, capsys, one_thread):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(tiny_recipe(batch_size=6, deterministic=True).to_toml())
    out = tmp_path / "sweep"
    argv = ["ablate", str(data[0]), "--test", str(data[1]), "--recipe", str(recipe), "--variants", "standard-conv",
            "--seeds", "1", "--epochs", "1", "--evals-per-epoch", "1", "--out", str(out), "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["interrupted"] is False and summary["report"] == str(out / "report.md")
    assert [c["verdict"] for c in summary["claims"]] == ["not tested (its variants were not run)"] * 4
    result = json.loads((out / "standard-conv" / "seed0" / "result.json").read_text())
    assert result["steps"] == 3 and [p["step"] for p in result["curve"]] == [3]
    stored = json.loads((out / "sweep.json").read_text())
    assert stored["command"].startswith(f"xception ablate {data[0]} --out {out} --variants standard-conv --seeds 1 ")
    assert stored["recipe"]["model_options"] == {"stem": "small", "width": 0.25, "middle_repeats": 1}

    assert main(["ablate", "--resume", str(out), "--epochs", "2"]) == 1
    assert capsys.readouterr().err == (f"xception ablate: error: --resume takes the sweep's settings from {out}; "
                                       "leave out --epochs\n")
    assert main(["ablate", "--variants", "paper,gelu", "--out", str(tmp_path / "x")]) == 1
    assert "unknown variant(s) gelu; known: paper, relu, elu, no-residual" in capsys.readouterr().err
    assert main(["ablate", "--list-variants"]) == 0
    assert "standard-conv    a standard k×k conv" in capsys.readouterr().out


# -- statistics ----------------------------------------------------------------------------------------------


def test_students_t_matches_closed_forms_and_tables():
    for p in (0.6, 0.9, 0.975, 0.995):
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9)  # Cauchy
        assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9)
    # Two-sided 95 % quantiles as printed in every table of Student's t
    for dof, t in ((3, 3.182446), (4, 2.776445), (5, 2.570582), (10, 2.228139), (30, 2.042272), (120, 1.979930)):
        assert t_quantile(0.975, dof) == pytest.approx(t, abs=1e-6)
    assert t_quantile(0.025, 4) == pytest.approx(-2.776445, abs=1e-6)
    assert t_cdf(0.0, 7) == 0.5 and t_cdf(-1.3, 6) == pytest.approx(1 - t_cdf(1.3, 6))
    # Large dof: the normal distribution's 1.959964
    assert t_quantile(0.975, 100_000) == pytest.approx(1.959964, abs=1e-4)


def test_paired_intervals_and_verdicts():
    interval = paired_interval([91.0, 92.5, 90.8], [90.2, 91.1, 90.6])
    diffs = torch.tensor([0.8, 1.4, 0.2], dtype=torch.float64)
    half = 4.302653 * diffs.std().item() / math.sqrt(3)
    assert (interval.mean, interval.low, interval.high) == pytest.approx(
        (diffs.mean().item(), diffs.mean().item() - half, diffs.mean().item() + half), abs=1e-6)

    def verdict(test, a, b):
        found = paired_interval(a, b)
        return outcome(test, found.low, found.high, 0.5)

    assert verdict("greater", [91.0, 92.5, 90.8], [90.2, 91.1, 90.6]) == UNDECIDED  # 0.8 ± 1.49
    assert verdict("greater", [2.0, 2.1, 2.2], [1.0, 1.05, 1.2]) == AGREE
    assert verdict("greater", [1.0, 1.05, 1.2], [2.0, 2.1, 2.2]) == CONTRADICT
    assert verdict("within", [1.0, 1.1, 1.2], [1.05, 1.05, 1.1]) == AGREE
    assert verdict("within", [3.0, 3.1, 3.2], [1.05, 1.05, 1.1]) == CONTRADICT
    assert verdict("within", [91.0, 92.5, 90.8], [90.2, 91.1, 90.6]) == UNDECIDED
    assert verdict("at_most", [1.0, 1.1, 1.2], [1.05, 1.0, 1.1]) == AGREE
    assert verdict("at_most", [3.0, 3.1, 3.2], [1.05, 1.05, 1.1]) == CONTRADICT
    assert verdict("at_most", [91.0, 92.5, 90.8], [90.2, 91.1, 90.6]) == UNDECIDED


def test_evaluation_points_are_equally_spaced_and_end_each_epoch():
    assert eval_steps(422, 3, 4) == [106, 211, 316, 422, 528, 633, 738, 844, 950, 1055, 1160, 1266]
    assert eval_steps(3, 1, 8) == [1, 2, 3]  # never more points than updates

"""The benchmark: its report's schema, ratios taken within one run, fair turns, honest memory figures.

No test here asserts a speed: timings on a shared machine prove nothing. They check the bookkeeping.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xception.bench import (
    DEFAULT_MODES,
    SCHEMA,
    SPECS,
    BenchConfig,
    ContenderSpec,
    format_report,
    peak_memory,
    percentile,
    run_benchmark,
    time_in_turns,
)
from xception.bench.contenders import Contender
from xception.cli import main

TINY = {"width": 0.125, "middle_repeats": 1}
FLOAT32_TOLERANCE = 1e-4
BF16_TOLERANCE = 0.1  # 8 mantissa bits through ~40 layers: a few 1e-2 of the largest logit


@pytest.fixture(scope="module")
def report():
    modes = ("eager", "fast", "fast-graphs", "ort-ours", "train-eager")
    # One thread: on a shared 2-core machine, two threads make tiny convs wait for each other.
    cfg = BenchConfig(model="legacy_xception", model_options=TINY, input_size=71, batch_size=2, repeats=3,
                      warmup=1, modes=modes, threads=1)
    return run_benchmark(cfg)


def test_the_report_has_its_schema(report):
    assert report["schema"] == SCHEMA
    settings = report["settings"]
    assert settings["batch_size"] == 2 and settings["input_size"] == 71 and settings["repeats"] == 3
    assert settings["flops_per_image"] > 0 and settings["dtype"] == "float32" and settings["threads"] == 1
    assert not settings["same_network_as_timm"]
    assert {"torch", "cpu", "device", "timm", "onnxruntime"} <= set(report["environment"])
    names = [r["name"] for r in report["results"]]
    assert names == ["eager", "fast", "fast-graphs", "ort-ours", "train-eager", "gemm"]
    for r in report["results"]:
        assert r["status"] in ("ok", "skipped", "failed")
        if r["status"] == "ok":
            assert len(r["times_ms"]) == 3 and all(t > 0 for t in r["times_ms"])
            assert r["median_ms"] == statistics.median(r["times_ms"])
            assert r["latency_ms"]["p50"] == pytest.approx(r["median_ms"])
            assert r["latency_ms"]["min"] <= r["latency_ms"]["p90"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
    json.dumps(report)  # JSON-ready throughout


def test_what_cannot_run_here_is_skipped_with_a_reason(report):
    by_name = {r["name"]: r for r in report["results"]}
    assert by_name["fast-graphs"]["status"] == "skipped" and "CUDA" in by_name["fast-graphs"]["reason"]
    assert by_name["fast"]["status"] == "ok" and by_name["eager"]["status"] == "ok"
    assert by_name["train-eager"]["kind"] == "training"


def test_ratios_come_from_the_same_runs_medians(report):
    ok = {r["name"]: r for r in report["results"] if r["status"] == "ok"}
    ips = {name: r["batch_size"] / (statistics.median(r["times_ms"]) / 1e3) for name, r in ok.items()}
    gemm = ok["gemm"]
    gflops = gemm["details"]["flops_per_call"] / (statistics.median(gemm["times_ms"]) / 1e3) / 1e9
    assert report["anchors"]["gemm"]["gflops"] == pytest.approx(gflops)
    at_gemm = gflops * 1e9 / report["settings"]["flops_per_image"]
    assert report["ratios"]["fast"]["vs_eager"] == pytest.approx(ips["fast"] / ips["eager"])
    assert report["ratios"]["fast"]["of_gemm"] == pytest.approx(ips["fast"] / at_gemm)
    if "ort-ours" in ok:
        assert report["ratios"]["ort-ours"]["vs_eager"] == pytest.approx(ips["ort-ours"] / ips["eager"])
    per_turn = [e / f for f, e in zip(ok["fast"]["times_ms"], ok["eager"]["times_ms"], strict=True)]
    assert report["paired_ratios"]["fast"]["vs_eager"] == pytest.approx(statistics.median(per_turn))
    assert "vs_eager" not in report["ratios"]["eager"]


def test_paired_ratios_follow_the_turns_where_the_ratio_of_medians_does_not():
    """A host that drifts between turns: turn by turn the contender is 1.2× the baseline in two turns of three,
    while the ratio of the two medians pairs different turns and reads 1.0×."""
    from xception.bench.report import _paired_ratios, _ratios
    from xception.bench.stats import Result

    fast = Result("fast-int8", "inference", batch_size=1, times_ms=[10.0, 30.0, 20.0], precision="int8")
    ov = Result("ov-int8", "inference", batch_size=1, times_ms=[12.0, 20.0, 60.0], precision="int8")
    eager = Result("eager", "inference", batch_size=1, times_ms=[5.0, 5.0, 5.0], precision="float32")
    by_name = {r.name: r for r in (fast, ov, eager)}
    assert _ratios(fast, by_name, {})["vs_ov_int8"] == pytest.approx(1.0)
    assert _paired_ratios(fast, by_name) == {"vs_ov_int8": pytest.approx(1.2)}  # not against float32 eager
    ov.times_ms = ov.times_ms[:2]  # not timed in the same turns: no pairs
    assert _paired_ratios(fast, by_name) == {}


def test_every_inference_contender_is_checked_against_float32_eager(report):
    ok = [r for r in report["results"] if r["status"] == "ok" and r["kind"] == "inference"]
    assert {r["name"] for r in ok} >= {"eager", "fast"}
    for r in ok:
        assert r["precision"] == "float32"
        assert 0 <= r["details"]["max_rel_err"] <= FLOAT32_TOLERANCE, r["name"]
    assert report["results"][1]["details"]["folded_batch_norms"] > 0


def test_contenders_are_timed_in_turns():
    calls = []
    runs = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    times = time_in_turns(runs, 3, lambda fn: fn() or 1.0)
    assert calls == list("abc") * 3
    assert times == {name: [1.0] * 3 for name in "abc"}


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentiles_interpolate_like_numpy(q):
    values = [5.0, 1.0, 4.0, 2.5, 9.0, 3.0, 7.5]
    assert percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_peak_memory_on_cpu_sees_a_64_mib_working_set():
    def work():
        block = torch.ones(16 * 2**20)  # 64 MiB, touched
        return float(block[::4096].sum())

    peak, method = peak_memory(work, torch.device("cpu"))
    assert "RSS" in method
    assert 60 * 2**20 <= peak <= 200 * 2**20


def test_the_cli_writes_a_json_report_and_prints_a_table(tmp_path, capsys):
    out = tmp_path / "bench" / "report.json"
    code = main(["bench", "-o", "width=0.125", "-o", "middle_repeats=1", "--input-size", "71", "--batch-size", "1",
                 "--repeats", "2", "--warmup", "0", "--modes", "eager,fast", "--no-memory", "--threads", "1",
                 "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "fast" in printed and "of GEMM" in printed and "anchor:" in printed
    from xception.fast import native
    from xception.runtime import cpu_name

    assert f"on {cpu_name()}" in printed and "medians · 1 thread\n" in printed  # the CPU and threads, in words
    rows = {line.split()[0]: line for line in printed.splitlines() if line.startswith(("eager ", "fast "))}
    assert rows["eager"].rstrip().endswith("PyTorch ops (oneDNN)")  # each row names its kernels
    expected = f"native ({native.isa()}," if native.available() else "mkldnn"
    assert expected in rows["fast"]
    saved = json.loads(out.read_text())
    assert saved["schema"] == SCHEMA and [r["name"] for r in saved["results"]] == ["eager", "fast", "gemm"]
    assert all(r["peak_memory_bytes"] is None for r in saved["results"])


@pytest.mark.parametrize(("args", "message"), [
    (["--modes", "eager,warp-speed"], "unknown mode"),
    (["--repeats", "0"], "repeats"),
    (["--dtype", "int8"], "dtype"),
    (["--device", "tpu"], "device"),
])
def test_bad_options_get_one_line_errors(args, message, capsys):
    assert main(["bench", *args]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_asking_for_cuda_without_it_says_so(capsys):
    assert main(["bench", "--device", "cuda"]) == 1
    assert "CUDA is not available" in capsys.readouterr().err


# -- device defaults, the contender table, the command's help -------------------------------------------------


def test_device_defaults_live_in_the_config(monkeypatch):
    cpu = BenchConfig().resolved()
    assert (cpu.batch_size, cpu.train_batch_size, cpu.dtype) == (8, 8, "float32")
    assert tuple(cpu.modes) == DEFAULT_MODES["cpu"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # resolving needs no GPU, only its presence
    cuda = BenchConfig(device="cuda").resolved()
    assert (cuda.batch_size, cuda.train_batch_size, cuda.dtype) == (256, 128, "bfloat16")
    assert tuple(cuda.modes) == DEFAULT_MODES["cuda"]
    assert BenchConfig(device="cuda", batch_size=64).resolved().train_batch_size == 128
    assert BenchConfig(batch_size=3, train_batch_size=5).resolved().train_batch_size == 5
    assert all(mode in SPECS for modes in DEFAULT_MODES.values() for mode in modes)  # entries of the table


def test_a_new_contender_is_one_entry_in_the_table(monkeypatch):
    def build(ctx):
        model = ctx.model()
        return Contender(lambda: model(ctx.x), ctx.x.shape[0], details={"built": "here"})

    monkeypatch.setitem(SPECS, "eager-again", ContenderSpec("eager-again", "inference", "ours", build, "a test"))
    monkeypatch.setitem(SPECS, "needs-a-package", ContenderSpec(
        "needs-a-package", "inference", "ours", build, "a test", packages=("no_such_package_here",)))
    cfg = BenchConfig(model_options=TINY, input_size=71, batch_size=1, repeats=2, warmup=0, threads=1,
                      modes=("eager", "eager-again", "needs-a-package"), measure_memory=False)
    report = run_benchmark(cfg)
    mine, missing = report["results"][1], report["results"][2]
    assert mine["status"] == "ok" and mine["precision"] == "float32" and mine["details"]["built"] == "here"
    assert mine["details"]["max_rel_err"] == 0.0  # checked against its network's float32 reference
    assert "vs_eager" in report["ratios"]["eager-again"]
    assert missing["status"] == "skipped" and missing["reason"] == "no_such_package_here is not installed"


def test_registering_the_command_imports_neither_torch_nor_the_benchmark():
    code = ("import argparse, sys; from xception.cli import bench; "
            "bench.register(argparse.ArgumentParser().add_subparsers()); "
            "print(sorted(m for m in ('torch', 'xception.bench') if m in sys.modules))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": src}).stdout
    assert out.strip() == "[]"


def test_the_help_lists_every_mode(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    printed = capsys.readouterr().out
    assert all(f"  {name} " in printed for name in SPECS)
    assert "ov-timm-bf16" in printed and "defaults: cpu eager,fast,timm,ort-timm" in printed


# -- OpenVINO ---------------------------------------------------------------------------------------------------


OV_RUN = """
import json, sys
from xception.bench import BenchConfig, run_benchmark
cfg = BenchConfig(model="legacy_xception", model_options={options!r}, input_size=71, batch_size=2, repeats=2,
                  warmup=1, modes={modes!r}, threads=1)
with open(sys.argv[1], "w") as f:
    json.dump(run_benchmark(cfg), f)
"""


@pytest.fixture(scope="module")
def ov_report(tmp_path_factory):
    """OpenVINO runs in a process of its own: once its threads have started, a later fork of this process
    (a DataLoader's workers, in other tests) crashes it."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    modes = ("eager", "fast-bf16", "ort-timm", "ov-timm", "ov-ours", "ov-timm-bf16")
    out = tmp_path_factory.mktemp("ov") / "report.json"
    done = subprocess.run([sys.executable, "-c", OV_RUN.format(options=TINY, modes=modes), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_openvino_runs_the_shared_export_in_float32_and_matches_the_reference(ov_report):
    by_name = {r["name"]: r for r in ov_report["results"]}
    for name in ("ov-timm", "ov-ours"):
        r = by_name[name]
        assert r["status"] == "ok", r["reason"]
        assert r["precision"] == "float32" and r["details"]["inference_precision"] == "f32"
        assert r["details"]["threads"] == 1 and r["details"]["performance_hint"] == "LATENCY"
        assert 0 <= r["details"]["max_rel_err"] <= FLOAT32_TOLERANCE, name
        assert r["peak_memory_bytes"] is not None and "separately compiled" in r["details"]["memory_method"]
    # One export of timm's network, made once, read by both runtimes.
    assert by_name["ov-timm"]["details"]["export_s"] == by_name["ort-timm"]["details"]["export_s"]
    assert ov_report["ratios"]["ov-timm"]["vs_ort_timm"] > 0
    assert "vs_ov_timm" in ov_report["ratios"]["eager"] and "vs ov-timm" in format_report(ov_report)


def test_reduced_precision_rows_are_only_compared_with_their_own_precision(ov_report):
    by_name = {r["name"]: r for r in ov_report["results"]}
    bf16 = by_name["ov-timm-bf16"]
    assert bf16["status"] == "ok", bf16["reason"]
    if bf16["details"]["inference_precision"] != "bf16":
        pytest.skip("this CPU has no bfloat16 support: OpenVINO computes in f32 whatever the hint")
    assert bf16["precision"] == "bfloat16" and bf16["details"]["max_rel_err"] <= BF16_TOLERANCE
    fast = by_name["fast-bf16"]
    assert fast["precision"] == "bfloat16" and fast["details"]["max_rel_err"] <= BF16_TOLERANCE
    ratios = ov_report["ratios"]
    assert ratios["ov-timm-bf16"] == {}  # every baseline here and the GEMM anchor are float32
    assert set(ratios["fast-bf16"]) == {"vs_ov_timm_bf16"}
    ips = {name: r["batch_size"] / (statistics.median(r["times_ms"]) / 1e3) for name, r in by_name.items()}
    assert ratios["fast-bf16"]["vs_ov_timm_bf16"] == pytest.approx(ips["fast-bf16"] / ips["ov-timm-bf16"])
    assert all("vs_ov_timm_bf16" not in ratios[name] for name in ("eager", "ort-timm", "ov-timm", "ov-ours"))
    table = format_report(ov_report)
    assert "reduced precision: fast-bf16, ov-timm-bf16" in table
    assert any(line.startswith("ov-timm-bf16") and "bfloat16" in line for line in table.splitlines())


def test_without_openvino_its_contenders_are_skipped_with_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    cfg = BenchConfig(model_options=TINY, input_size=71, batch_size=1, repeats=1, warmup=0, threads=1,
                      modes=("ov-ours", "ov-timm-bf16"), measure_memory=False)
    results = run_benchmark(cfg)["results"]
    assert [(r["name"], r["status"], r["reason"]) for r in results[:2]] == [
        ("ov-ours", "skipped", "openvino is not installed"), ("ov-timm-bf16", "skipped", "openvino is not installed")]

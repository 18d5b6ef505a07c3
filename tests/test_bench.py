"""The benchmark: its report's schema, ratios taken within one run, fair turns, honest memory figures.

No test here asserts a speed: timings on a shared machine prove nothing. They check the bookkeeping.
"""

import json
import statistics

import numpy as np
import pytest
import torch

from xception.bench import (
    SCHEMA,
    BenchConfig,
    peak_memory,
    percentile,
    run_benchmark,
    time_in_turns,
)
from xception.cli import main

TINY = {"width": 0.125, "middle_repeats": 1}


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
    assert "vs_eager" not in report["ratios"]["eager"]


def test_every_inference_contender_is_checked_against_float32_eager(report):
    ok = [r for r in report["results"] if r["status"] == "ok" and r["kind"] == "inference"]
    assert {r["name"] for r in ok} >= {"eager", "fast"}
    for r in ok:
        assert 0 <= r["details"]["max_rel_err"] <= 1e-4, r["name"]
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

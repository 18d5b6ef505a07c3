"""The benchmark's int8 contenders: one float network quantised from the same calibration images, each file opened
through the inference layer, each output checked against the int8 network's own, ratios only between int8 rows.

No test here asserts a speed. OpenVINO runs in a process of its own (see test_bench.py's ``ov_report``).
"""

import json
import subprocess
import sys

import pytest
import torch

from xception.bench import SPECS, BenchConfig, format_report
from xception.bench.base import BuildContext
from xception.bench.models import Models, relative_error
from xception.cli import main
from xception.quantize import ONNX_TOLERANCE
from xception.quantize import native as native_int8

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# The smallest network whose int8 logits ONNX Runtime's kernels reproduce within ONNX_TOLERANCE on an AVX2 CPU
# (no VNNI: u8×s8 pairs saturate in int16): 0.19 of the largest logit measured here; width 0.125 gives 0.29.
OPTIONS = {"width": 0.25, "middle_repeats": 1}
SIZE, BATCH, CALIBRATION = 71, 2, 2
INT8 = ("fast-int8", "ort-int8")
# float32 through the same network differs from the reference by rounding only (a few 1e-6): an int8 output
# must differ by far more, or the contender did not run the quantised network.
NOT_FLOAT = 1e-3


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The int8 contenders of one run, built as the benchmark builds them, and the run's shared networks."""
    cfg = BenchConfig(model_options=OPTIONS, input_size=SIZE, batch_size=BATCH, threads=1, weight_bits=8,
                      activation_bits=8, calibration_images=CALIBRATION, modes=INT8).resolved()  # not "auto": one file
    models = Models(cfg, tmp_path_factory.mktemp("int8"))
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        contenders = {name: SPECS[name].build(BuildContext(cfg, x, torch.device("cpu"), torch.int8, "ours", models))
                      for name in INT8}
        yield {"models": models, "x": x, "contenders": contenders}
    finally:
        torch.set_num_threads(before)


def test_every_int8_contender_runs_the_same_quantised_network(built):
    models, x = built["models"], built["x"]
    files = models.int8_files()
    with torch.inference_mode():
        own = files.result.model(x)  # the QuantizedXception quantize() returned, not a file read back
    reference = models.reference("ours", x)
    assert files.result.report.calibration["images"] == CALIBRATION
    for name, contender in built["contenders"].items():
        logits = torch.as_tensor(contender.run())
        assert logits.shape == (BATCH, 1000) and logits.dtype == torch.float32, name
        assert relative_error(logits, own) <= ONNX_TOLERANCE["int8_kernels"], name
        assert relative_error(logits, reference) > NOT_FLOAT, name
        details = contender.details
        assert details["calibration"] == {"method": "minmax", "images": CALIBRATION}, name
        assert details["kernels"] and details["precision"].startswith("int8"), name
    assert built["contenders"]["fast-int8"].details["runtime"] == "int8"
    assert built["contenders"]["ort-int8"].details["runtime"] == "onnxruntime"


def test_the_qdq_model_carries_the_int8_networks_scales(built):
    import onnx

    files = built["models"].int8_files()
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(files.qdq)).graph.initializer}
    assert float(scales["input.scale_1"]) == float(files.result.model.input_params.scale)
    # Run as written (graph optimisations off), the file computes the int8 network up to rounding.
    as_written = files.result.report.onnx["runs"]["qdq_in_float"]
    assert as_written["max_logit_diff_rel_vs_reference"] <= ONNX_TOLERANCE["qdq_in_float"]


def test_the_json_report_has_int8_rows_compared_only_with_int8_rows(capsys):
    args = ["bench", "--set", "model.width=0.25", "--set", "model.middle_repeats=1", "--input-size", str(SIZE),
            "--batch-size", "1", "--repeats", "2", "--warmup", "0", "--threads", "1", "--no-memory",
            "--calibration-images", str(CALIBRATION), "--weight-bits", "7", "--modes", "eager,fast-int8,ort-int8",
            "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["results"]}
    assert report["settings"]["calibration_images"] == CALIBRATION and report["settings"]["weight_bits"] == 7
    if native_int8.available():  # 7-bit weights: every GEMM on the byte-quad kernels, or VNNI's where the CPU has it
        kernels = rows["fast-int8"]["details"]["kernels"]
        assert ("VNNI quads" if native_int8.isa() == "avx512-vnni" else "byte quads") in kernels
        assert "int16 pairs" not in kernels
    for name in INT8:
        assert rows[name]["status"] == "ok", rows[name]["reason"]
        assert rows[name]["precision"] == "int8" and rows[name]["network"] == "ours"
    ratios = report["ratios"]
    assert set(ratios["fast-int8"]) == {"vs_ort_int8"}  # neither eager (float32) nor the float32 GEMM
    assert ratios["ort-int8"] == {} and "vs_ort_int8" not in ratios["eager"]
    ips = {name: rows[name]["images_per_s"] for name in INT8}
    assert ratios["fast-int8"]["vs_ort_int8"] == pytest.approx(ips["fast-int8"] / ips["ort-int8"])
    table = format_report(report)
    assert "reduced precision: fast-int8, ort-int8" in table and "against ort-int8 and ov-int8" in table
    paired = report["paired_ratios"]["fast-int8"]["vs_ort_int8"]
    assert f"turn by turn (median of the per-turn ratios, steadier on a drifting host): fast-int8 ort-int8 " \
        f"{paired:.2f}×" in table


def test_seven_bit_activations_reach_fast_int8_and_the_onnx_contender_keeps_eight(capsys):
    args = ["bench", "--set", "model.width=0.25", "--set", "model.middle_repeats=1", "--input-size", str(SIZE),
            "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-memory",
            "--calibration-images", str(CALIBRATION), "--weight-bits", "7", "--activation-bits", "7",
            "--modes", "fast-int8,ort-int8", "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = {r["name"]: r for r in report["results"]}
    assert report["settings"]["activation_bits"] == 7
    assert rows["fast-int8"]["details"]["activation_bits"] == 7 and rows["ort-int8"]["details"]["activation_bits"] == 8
    if native_int8.available() and native_int8.isa() == "avx2":
        assert "byte octets" in rows["fast-int8"]["details"]["kernels"]
    assert all(rows[name]["status"] == "ok" for name in ("fast-int8", "ort-int8"))


def test_the_int8_contenders_default_to_the_bits_this_cpu_runs_fastest():
    cfg = BenchConfig().resolved()
    assert (cfg.weight_bits, cfg.activation_bits) == native_int8.fastest_bits()
    assert (BenchConfig(weight_bits=8).resolved().activation_bits) == 8


def test_calibration_needs_an_image():
    from xception.errors import ConfigError

    with pytest.raises(ConfigError, match="calibration_images"):
        BenchConfig(calibration_images=0).validate()


# -- OpenVINO, in a process of its own ---------------------------------------------------------------------------

OV_RUN = """
import json, sys
from xception.bench import BenchConfig, run_benchmark
from xception.bench.models import Models

def run(modes):
    cfg = BenchConfig(model_options={options!r}, input_size={size}, batch_size={batch}, repeats=1, warmup=0,
                      modes=modes, threads=1, calibration_images={calibration}, measure_memory=False)
    return run_benchmark(cfg)

reports = {{}}
if sys.argv[2] == "nncf":
    reports["nncf"] = run(("ort-int8", "ov-int8"))
else:
    sys.modules["nncf"] = None  # `import nncf` now raises ImportError
    reports["qdq"] = run(("ort-int8", "ov-int8"))
    def no_qdq(self):
        raise RuntimeError("no QDQ model in this test")
    Models.int8_files = no_qdq
    reports["neither"] = run(("ov-int8",))
with open(sys.argv[1], "w") as f:
    json.dump(reports, f)
"""


def _ov_reports(tmp_path, which: str) -> dict:
    pytest.importorskip("openvino")
    out = tmp_path / "reports.json"
    script = OV_RUN.format(options=OPTIONS, size=SIZE, batch=BATCH, calibration=CALIBRATION)
    done = subprocess.run([sys.executable, "-c", script, str(out), which], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # the float32 ONNX export NNCF starts from takes most of 25 s on a loaded 2-core machine
def test_openvino_int8_runs_nncf_ptq_on_the_same_images_or_says_why_not(tmp_path):
    report = _ov_reports(tmp_path, "nncf")["nncf"]
    row = {r["name"]: r for r in report["results"]}["ov-int8"]
    try:
        import nncf  # noqa: F401
    except ImportError:  # then the QDQ model ran, or the row says why neither did
        assert row["status"] == "ok" or "NNCF PTQ: " in row["reason"], row
        return
    assert row["status"] == "ok", row["reason"]
    details = row["details"]
    assert row["precision"] == "int8" and details["int8_path"] == "NNCF PTQ"
    assert "NNCF PTQ" in details["kernels"] and details["calibration"]["images"] == CALIBRATION
    assert NOT_FLOAT < details["max_rel_err"] < 0.5  # int8 of random weights: a sanity bound, not accuracy
    assert set(report["ratios"]["ov-int8"]) == {"vs_ort_int8"}


def test_openvino_int8_falls_back_to_the_qdq_model_and_else_says_why_each_path_failed(tmp_path):
    """Without NNCF, OpenVINO compiles the QDQ model the other int8 rows come from; with neither, a skip."""
    reports = _ov_reports(tmp_path, "fallback")
    qdq = {r["name"]: r for r in reports["qdq"]["results"]}["ov-int8"]
    assert qdq["status"] == "ok", qdq["reason"]
    assert qdq["precision"] == "int8" and set(reports["qdq"]["ratios"]["ov-int8"]) == {"vs_ort_int8"}
    assert qdq["details"]["int8_path"] == "QDQ model" and "QDQ model" in qdq["details"]["kernels"]
    assert qdq["details"]["nncf_failed"] == "NNCF PTQ: ConfigError: nncf is not installed (pip install nncf)"
    assert NOT_FLOAT < qdq["details"]["max_rel_err"] < 0.5
    neither = reports["neither"]["results"][0]
    assert neither["status"] == "skipped"
    assert "NNCF PTQ: ConfigError: nncf is not installed" in neither["reason"]
    assert "QDQ model: RuntimeError: no QDQ model in this test" in neither["reason"]

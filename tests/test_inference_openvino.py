"""The ``openvino`` runtime: ONNX Runtime's logits from the same export, int8 by NNCF on request, and ``xception
predict`` / ``evaluate --runtime openvino``. OpenVINO runs in a process of its own: once its threads have started,
a later fork of the test process (a DataLoader's workers, in other tests) would crash it."""

import json
import subprocess
import sys

import pytest
import torch

import xception
from data_factory import CLASSES, GRAY_PRE, stripes_folder
from weights_helpers import randomise_torch
from xception.export import export_model

pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SAME = 1e-4  # float32 on two runtimes through a few dozen layers: rounding only, relative to the largest logit
# int8 of random weights against float32: a sanity bound (a wrong scale gives differences of order 1), not accuracy
INT8_BOUND = 0.5

RUN = """
import contextlib, io, json, pathlib, sys
import torch
from xception.cli import main
from xception.inference import open_model

mode, onnx, weights, images, out = sys.argv[1:6]
x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def cli(*args):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = main(list(args))
    return code, json.loads(buffer.getvalue())


if mode == "export":
    ov, ort = open_model(onnx, runtime="openvino"), open_model(onnx, runtime="onnxruntime")
    calibration = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    int8 = open_model(onnx, runtime="openvino", options={"calibration": calibration, "threads": 1})
    q, b = int8.run(x), ort.run(x)
    result = {"rel": rel(ov.run(x), b), "describe": ov.describe(), "int8": int8.describe(),
              "same_facts": ov.class_names == ort.class_names and ov.preprocessing == ort.preprocessing,
              "int8_shape": list(q.shape), "int8_rel": rel(q, b)}
    paths = sorted(str(p) for p in pathlib.Path(images).rglob("*.png"))
    for runtime in ("openvino", "onnxruntime"):
        result["predict-" + runtime] = cli("predict", "--weights", onnx, "--runtime", runtime, "--top-k", "3",
                                           "--json", *paths)
        result["evaluate-" + runtime] = cli("evaluate", "--weights", onnx, "--runtime", runtime, "--data", images,
                                            "--workers", "0", "--no-progress", "--json")
else:
    ov, plain = open_model(weights, runtime="openvino"), open_model(weights, runtime="torch")
    result = {"describe": ov.describe(), "rel": rel(ov.run(x), plain.run(x))}
with open(out, "w") as f:
    json.dump(result, f)
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny gray classifier with real BatchNorm statistics, its weights, its ONNX export and a few images."""
    root = tmp_path_factory.mktemp("openvino")
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, in_chans=1, stem="small", width=0.125, middle_repeats=1)
    randomise_torch(model, seed=1)
    weights = root / "weights.safetensors"
    xception.save_weights(model.eval(), weights, class_names=list(CLASSES), preprocessing=GRAY_PRE)
    onnx = root / "model.bin"  # a neutral name: the content says it is ONNX
    export_model(xception.create_model(weights=weights), root / "model.onnx", input_size=32, dynamic_spatial=False)
    (root / "model.onnx").rename(onnx)
    return {"weights": weights, "onnx": onnx, "images": stripes_folder(root / "images", per_class=2), "root": root}


def _run(files, mode: str) -> dict:
    out = files["root"] / f"{mode}.json"
    done = subprocess.run([sys.executable, "-c", RUN, mode, str(files["onnx"]), str(files["weights"]),
                           str(files["images"]), str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def result(files):
    return _run(files, "export")


def test_openvino_computes_onnx_runtimes_logits_from_the_same_export(result):
    assert result["rel"] <= SAME
    described = result["describe"]
    assert described["runtime"] == "openvino" and described["precision"] == "float32"
    assert described["inference_precision"] == "f32" and described["kernels"] == "OpenVINO CPU plugin (oneDNN)"
    assert described["classes"] == 3 and described["input_size"] == 32 and result["same_facts"]


def test_openvino_quantises_to_int8_with_nncf_when_given_calibration_images(result):
    pytest.importorskip("nncf")
    int8 = result["int8"]
    assert int8["precision"] == "int8 (NNCF PTQ)" and "NNCF PTQ" in int8["kernels"] and int8["threads"] == 1
    assert result["int8_shape"] == [3, 3]
    assert SAME < result["int8_rel"] < INT8_BOUND  # quantised: not the float logits, nor far from them


def test_predict_and_evaluate_run_on_openvino_as_on_onnxruntime(result):
    (code, ov), (_, ort) = result["predict-openvino"], result["predict-onnxruntime"]
    assert code == 0 and len(ov) == len(ort) == 6
    for a, b in zip(ov, ort, strict=True):
        assert [t["class"] for t in a["top"]] == [t["class"] for t in b["top"]]
        assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-5)
    (code, ov), (_, ort) = result["evaluate-openvino"], result["evaluate-onnxruntime"]
    assert code == 0 and ov["images"] == ort["images"] == 6
    assert ov["confusion_matrix"] == ort["confusion_matrix"] and ov["top1"] == ort["top1"]


def test_weights_run_on_openvino_after_an_export(files):
    weights = _run(files, "weights")
    assert weights["rel"] <= SAME  # the plain model's logits
    described = weights["describe"]
    assert described["runtime"] == "openvino" and described["explain"]  # the plain model is kept for Grad-CAM
    assert described["input_shape"] == "[?,1,32,32]"  # exported at the preprocessing's size, any batch

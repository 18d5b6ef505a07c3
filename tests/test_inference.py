"""The inference layer: every runtime computes the plain model's logits from its own file; files are told apart
by content; every command takes what it can run and refuses the rest in one line, with the reason."""

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

import xception
from data_factory import CLASSES, stripes_folder
from weights_helpers import randomise_torch
from xception.cli import main
from xception.errors import ConfigError, WeightsError
from xception.evaluate import evaluate
from xception.explain import explain
from xception.export import export_model
from xception.inference import RUNTIMES, choose_runtime, open_model, sniff
from xception.predict import predict
from xception.preprocessing import Preprocessing

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

PRE = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear", channels=1, mean=(0.5,), std=(0.5,))
# float32 through a few dozen layers: how far each runtime may be from the plain model, relative to its logits.
TOLERANCE = {"torch": 0.0, "fast": 1e-5, "onnxruntime": 1e-5, "torch-export": 1e-5}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The plain model, and the files xception writes of it: safetensors, ONNX and .pt2, under neutral names."""
    root = tmp_path_factory.mktemp("inference")
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, in_chans=1, stem="small", width=0.125, middle_repeats=1)
    randomise_torch(model, seed=1)  # real BN statistics: logits of order 1, so differences mean something
    model.eval()
    weights = root / "weights.safetensors"
    xception.save_weights(model, weights, class_names=list(CLASSES), preprocessing=PRE)
    model = xception.create_model(weights=weights)  # carries the class names and preprocessing
    (root / "onnx").mkdir()
    (root / "pt2").mkdir()
    export_model(model, root / "exported.onnx", input_size=32, dynamic_spatial=False)
    export_model(model, root / "exported.pt2", input_size=32, dynamic_spatial=False)
    onnx, pt2 = root / "onnx" / "model.bin", root / "pt2" / "model.bin"
    shutil.move(root / "exported.onnx", onnx)
    shutil.move(root / "exported.pt2", pt2)
    return {"model": model, "torch": weights, "fast": weights, "onnxruntime": onnx, "torch-export": pt2, "root": root}


@pytest.fixture(scope="module")
def images(files):
    return stripes_folder(files["root"] / "images", per_class=2)


def test_every_runtime_gives_the_plain_models_logits_from_its_own_file(files):
    # The runtimes of files made by other means are checked where those files are made: int8 in
    # test_quantize.py, ExecuTorch and LiteRT in test_edge.py; OpenVINO in a process of its own
    # (test_inference_openvino.py), since its threads do not survive a later fork of this one.
    assert set(RUNTIMES) - {"int8", "executorch", "litert", "openvino"} == set(TOLERANCE)
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = files["model"](x)
    for name, tol in TOLERANCE.items():
        runner = open_model(files[name], runtime=name, device="cpu")
        got = runner.run(x)
        assert got.dtype == torch.float32 and got.device.type == "cpu"
        assert float((got - expected).abs().max()) <= tol * float(expected.abs().max()), name
        assert runner.class_names == list(CLASSES) and runner.preprocessing == PRE, name
        described = runner.describe()
        assert described["runtime"] == name and described["precision"] == "float32", described
        assert described["input_size"] == 32 and described["classes"] == 3
        assert described["explain"] == (name in ("torch", "fast")) == (runner.model is not None)


def test_exports_renamed_model_bin_are_recognised_by_content(files):
    assert sniff(files["onnxruntime"]) == "onnx" and sniff(files["torch-export"]) == "pt2"
    assert sniff(files["torch"]) == "safetensors" and sniff("xception.keras_in1k") == "reference"
    assert open_model(files["onnxruntime"], device="cpu").name == "onnxruntime"
    assert open_model(files["torch-export"], device="cpu").name == "torch-export"
    buffer = io.BytesIO()
    torch.save(files["model"].state_dict(), buffer)
    state = files["root"] / "state.bin"
    state.write_bytes(buffer.getvalue())
    assert sniff(state) == "torch"  # a torch.save zip is not a torch.export one


def test_auto_runs_exports_on_their_runtime_and_weights_fast_on_a_cpu():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_runtime("onnx", "auto", gpu) == "onnxruntime"
    assert choose_runtime("pt2", "auto", cpu) == "torch-export"
    assert choose_runtime("safetensors", "auto", cpu) == "fast"
    assert choose_runtime("hdf5", "auto", gpu) == "torch"
    assert choose_runtime("reference", "auto", gpu, weights_runtime="fast") == "fast"
    assert choose_runtime("keras", "onnxruntime", cpu) == "onnxruntime"  # exported first
    with pytest.raises(ConfigError, match="runtime must be one of auto, torch, fast, onnxruntime, torch-export"):
        choose_runtime("torch", "tensorrt", cpu)


def test_a_runtime_that_does_not_fit_the_file_says_what_would(files):
    with pytest.raises(ConfigError) as err:
        open_model(files["onnxruntime"], runtime="torch")
    assert str(err.value) == (f"{files['onnxruntime']} is an ONNX export: it runs on onnxruntime, not torch; give "
                              "the weights it was exported from to run it on torch")
    with pytest.raises(ConfigError, match=r"a torch\.export program: it runs on torch-export, not onnxruntime"):
        open_model(files["torch-export"], runtime="onnxruntime")
    with pytest.raises(ConfigError, match="traced with its model options fixed"):
        open_model(files["onnxruntime"], model_options={"width": 0.5})
    with pytest.raises(ConfigError, match="of 'xception', not 'xception41'"):
        open_model(files["torch-export"], model_name="xception41")


def test_predict_and_evaluate_run_an_onnx_export_with_a_neutral_name(files, images, capsys):
    paths = sorted(images.rglob("*.png"))[:3]
    via_weights = predict(files["torch"], paths, top_k=3, runtime="torch")
    via_onnx = predict(files["onnxruntime"], paths, top_k=3)
    for a, b in zip(via_weights, via_onnx, strict=True):
        assert [n for n, _ in a.top] == [n for n, _ in b.top]
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)
    assert main(["predict", "--weights", str(files["torch-export"]), str(paths[0]), "--json"]) == 0
    [out] = json.loads(capsys.readouterr().out)
    assert [t["class"] for t in out["top"]] == [n for n, _ in via_weights[0].top]

    plain = evaluate(files["torch"], images, progress=False, workers=0, runtime="torch")
    exported = evaluate(files["onnxruntime"], images, progress=False, workers=0)
    assert torch.equal(plain.counts.confusion, exported.counts.confusion) and exported.counts.total == 6
    assert exported.counts.loss == pytest.approx(plain.counts.loss, rel=1e-5)
    assert exported.class_names == list(CLASSES)


def test_serve_runs_an_onnx_export_with_a_neutral_name_and_says_why_it_cannot_explain(files, images):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from xception.serve import create_app

    png = next(images.rglob("*.png")).read_bytes()
    [expected] = predict(files["torch"], [next(images.rglob("*.png"))], top_k=3, runtime="torch")
    with TestClient(create_app(str(files["onnxruntime"]), device="cpu")) as client:
        top = client.post("/predict", content=png, headers={"content-type": "image/png"}).json()
        assert top["backend"] == "onnxruntime" and [t["class"] for t in top["top"][:3]] == [n for n, _ in expected.top]
        r = client.post("/explain", content=png, headers={"content-type": "image/png"})
        assert r.status_code == 501 and "gradients of the PyTorch model" in r.json()["message"]


@pytest.mark.parametrize("kind", ["onnxruntime", "torch-export"])
def test_explain_convert_and_export_refuse_an_export_with_the_reason(files, images, tmp_path, capsys, kind):
    image = next(images.rglob("*.png"))
    with pytest.raises(ConfigError, match="Grad-CAM needs the gradients of the PyTorch model, which an export does "
                       "not keep; give the weights it was exported from"):
        explain(files[kind], [image], out=tmp_path)
    commands = {"explain": [str(image), "--weights", str(files[kind]), "--out", str(tmp_path)],
                "convert": [str(files[kind]), str(tmp_path / "w.safetensors")],
                "export": [str(tmp_path / "again.onnx"), "--weights", str(files[kind])]}
    reasons = {"explain": "Grad-CAM needs the gradients", "convert": "an export holds a traced graph",
               "export": "exporting traces the PyTorch model"}
    for command, args in commands.items():
        assert main([command, *args]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reasons[command] in err and "give the weights it was exported from" in err
    assert not list(tmp_path.iterdir())


def _one_line_error(path, capsys) -> str:
    assert main(["predict", "--weights", str(path), str(path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


def test_foreign_and_truncated_files_are_refused_in_one_line(files, tmp_path, capsys):
    foreign = tmp_path / "model.bin"
    foreign.write_bytes(b"GIF89a" + bytes(range(200)))
    err = _one_line_error(foreign, capsys)
    assert "is not a model this library reads (it starts with b'GIF89a" in err and "ONNX and torch.export" in err
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:  # a zip archive of something else
        z.writestr("readme.txt", "hello")
    assert "not a readable PyTorch checkpoint" in _one_line_error(tmp_path / "other.zip", capsys)
    for kind, says in (("onnxruntime", "not an ONNX model ONNX Runtime can run"),
                       ("torch-export", "a torch.export program that cannot be loaded")):
        data = files[kind].read_bytes()
        cut = tmp_path / f"cut-{kind}"
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(WeightsError, match=says):
            open_model(cut, device="cpu")
        assert says in _one_line_error(cut, capsys)
    (tmp_path / "empty").write_bytes(b"")
    assert "is empty" in _one_line_error(tmp_path / "empty", capsys)


def test_a_runner_is_what_a_benchmark_needs(files):
    runner = open_model(files["torch"], runtime="fast", device="cpu")
    batch = runner.example_batch(2)
    assert batch.shape == (2, 1, 32, 32) and runner.forward(batch).shape == (2, 3)
    runner.warm_up((1, 2))
    pixels = np.asarray(Image.new("L", (32, 32), 128), dtype=np.float32)[None, None] / 255
    assert runner(torch.from_numpy(pixels)).shape == (1, 3)

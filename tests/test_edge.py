"""ExecuTorch (.pte) and LiteRT (.tflite) exports: each file run by its own runtime against PyTorch, the class
names and preprocessing inside it, int8 measured against float32, and predict running the files as they are."""

import contextlib
import io
import json
import sys

import numpy as np
import pytest
import torch

import xception
from data_factory import CLASSES, GRAY_PRE, folder_tensors, stripes_sets, tiny_trained_weights
from xception.cli import main
from xception.edge import FP32_TOLERANCE, export_edge, load
from xception.edge import api as edge_api
from xception.edge import pte as edge_pte
from xception.edge.tflite import read_metadata
from xception.errors import ConfigError, WeightsError
from xception.inference import open_model, sniff
from xception.predict import predict
from xception.preprocessing import Preprocessing

pytest.importorskip("executorch", reason="pip install 'xception[edge]' (make test installs it)")
pytest.importorskip("litert_torch", reason="pip install 'xception[edge]' (make test installs it)")
pytestmark = pytest.mark.usefixtures("one_thread")

PRE = GRAY_PRE
# The tiny model below keeps every one of its 60 held-out predictions under int8 on both runtimes, its logits
# within 0.6 % of the largest (measured): a wrong scale, zero point or layout anywhere moves logits by tens of
# percent and changes many predictions. An image is 1.7 points: the bar lets two change.
MIN_AGREEMENT = 96.0
MAX_INT8_LOGIT_DIFF = 0.05


_images = folder_tensors


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return stripes_sets(tmp_path_factory.mktemp("edge-data"))


@pytest.fixture(scope="module")
def weights(data, tmp_path_factory):
    return tiny_trained_weights(data["train"], tmp_path_factory.mktemp("edge-weights") / "tiny.safetensors")


@pytest.fixture(scope="module")
def model(weights):
    return xception.create_model(weights=weights).eval()


def _command(args: list[str]) -> str:
    """``xception ARGS``'s standard output (it must succeed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(args) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def files(model, weights, data, tmp_path_factory):
    """The four files, float32 and int8 of each format: two through the library, two through the command (what
    it printed is kept)."""
    out = tmp_path_factory.mktemp("edge-files")
    paths = {"pte": out / "tiny.pte", "tflite": out / "tiny.tflite", "pte-int8": out / "tiny.int8.pte",
             "tflite-int8": out / "tiny.int8.tflite"}
    results = {"pte": export_edge(model, paths["pte"]),
               "tflite-int8": export_edge(model, paths["tflite-int8"], precision="int8",
                                          calibration=data["calibration"], held_out=data["held"], images=24)}
    printed = {"tflite": _command(["export", str(paths["tflite"]), "--weights", str(weights)]),
               "pte-int8": _command(["export", str(paths["pte-int8"]), "--weights", str(weights), "--precision",
                                     "int8", "--calibration", str(data["calibration"]), "--held-out",
                                     str(data["held"]), "--images", "24", "--workers", "0", "--json"])}
    return {"paths": paths, "results": results, "printed": printed}


def _logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_float32_files_match_pytorch_on_their_own_runtimes(model, files):
    x = torch.randn(5, 1, 32, 32, generator=torch.Generator().manual_seed(7))  # 5: one image per call, in turn
    want = _logits(model, x)
    for fmt in ("pte", "tflite"):
        got = load(fmt, files["paths"][fmt])(x)
        assert got.shape == want.shape
        assert float((got - want).abs().max()) <= FP32_TOLERANCE * float(want.abs().max())
    result = files["results"]["pte"]
    assert result.max_rel_diff is not None and result.max_rel_diff <= FP32_TOLERANCE
    assert result.size_bytes == files["paths"]["pte"].stat().st_size and result.input_shape == (1, 1, 32, 32)
    printed = files["printed"]["tflite"]
    size = files["paths"]["tflite"].stat().st_size
    assert f"{size:,} bytes" in printed and "input 1×32×32×1 NHWC" in printed, printed
    assert "LiteRT vs PyTorch on random images: max |Δ| = " in printed


def test_a_tflite_user_feeds_nhwc_to_the_plain_interpreter(model, files):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(files["paths"]["tflite"]))
    interpreter.allocate_tensors()
    [inp], [out] = interpreter.get_input_details(), interpreter.get_output_details()
    assert list(inp["shape"]) == [1, 32, 32, 1] and inp["dtype"] == np.float32
    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    interpreter.set_tensor(inp["index"], x.permute(0, 2, 3, 1).numpy())
    interpreter.invoke()
    got = torch.from_numpy(interpreter.get_tensor(out["index"]).copy())
    want = _logits(model, x)
    assert float((got - want).abs().max()) <= FP32_TOLERANCE * float(want.abs().max())


def test_class_names_and_preprocessing_travel_inside_each_file(files):
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(files["paths"]["pte"])
    texts = {"pte": program.load_method("xception_metadata").execute([])[0],
             "tflite": read_metadata(files["paths"]["tflite"].read_bytes()),
             "tflite-int8": read_metadata(files["paths"]["tflite-int8"].read_bytes())}
    for name, text in texts.items():
        meta = json.loads(text)
        assert meta["class_names"] == list(CLASSES), name
        assert Preprocessing.from_dict(meta["preprocessing"]) == PRE, name
        assert meta["model"]["stem"] == "small" and meta["model"]["in_chans"] == 1
    assert json.loads(texts["pte"])["input"]["layout"] == "NCHW"
    assert json.loads(texts["tflite"])["input"] == {"name": "images", "layout": "NHWC", "shape": [1, 32, 32, 1],
                                                    "dynamic": [], "dtype": "float32"}
    int8 = json.loads(texts["tflite-int8"])
    assert int8["format"]["precision"] == "int8" and int8["input"]["dtype"] == "int8"
    assert int8["quantization"]["calibration"].endswith("calibration")  # the folder given


def test_int8_files_state_their_top1_against_float32(model, files, data):
    x, y = _images(data["held"])
    want = _logits(model, x).argmax(1)
    for name in ("pte-int8", "tflite-int8"):
        fmt = name.split("-")[0]
        got = load(fmt, files["paths"][name])(x)
        assert float((got.argmax(1) == want).float().mean()) * 100 >= MIN_AGREEMENT, name
        assert files["paths"][name].stat().st_size < 0.6 * files["paths"][fmt].stat().st_size, name
    stated = files["results"]["tflite-int8"].int8
    assert stated.images == len(y) == 60 and stated.agreement >= MIN_AGREEMENT
    assert stated.max_logit_diff_rel <= MAX_INT8_LOGIT_DIFF
    assert stated.fp32_top1 == pytest.approx(100 * float((want == y).float().mean()))
    printed = json.loads(files["printed"]["pte-int8"])
    assert printed["precision"] == "int8" and printed["int8"]["images"] == 60
    assert printed["int8"]["agreement"] >= MIN_AGREEMENT and printed["max_abs_diff"] is None
    assert load("tflite", files["paths"]["tflite-int8"]).precision == "int8"  # integer input, as converted


def test_predict_runs_each_file_through_the_inference_layer(files, weights, data, tmp_path):
    images = sorted(p for p in data["held"].rglob("*.png"))[::10]
    via_torch = predict(weights, images, top_k=3, backend="torch")
    for fmt, runtime in (("pte", "executorch"), ("tflite", "litert")):
        renamed = tmp_path / f"model-{fmt}.bin"  # told apart by content, not by name
        renamed.write_bytes(files["paths"][fmt].read_bytes())
        assert sniff(renamed) == fmt
        runner = open_model(renamed)
        assert runner.name == runtime and runner.class_names == list(CLASSES) and runner.preprocessing == PRE
        described = runner.describe()
        assert described["runtime"] == runtime and described["precision"] == "float32" and not runner.can_explain
        assert described["input_size"] == 32 and described["classes"] == 3 and runner.model is None
        results = predict(renamed, images, top_k=3)
        for a, b in zip(via_torch, results, strict=True):
            assert [n for n, _ in a.top] == [n for n, _ in b.top]
            assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-4)
    out = _command(["predict", "--weights", str(files["paths"]["tflite-int8"]), str(images[0]), "--json"])
    assert json.loads(out)[0]["top"][0]["class"] in CLASSES
    with pytest.raises(ConfigError, match="runs on litert, not torch"):
        open_model(files["paths"]["tflite"], runtime="torch")
    with pytest.raises(ConfigError, match="is weights, and executorch runs only an ExecuTorch program"):
        open_model(weights, runtime="executorch")


def test_a_tflite_file_written_by_something_else_runs_with_class_indices(model, files, tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils

    plain = flatbuffer_utils.read_model_from_bytearray(bytearray(files["paths"]["tflite"].read_bytes()))
    plain.metadata = []  # as litert-torch writes it: no metadata
    path = tmp_path / "plain.tflite"
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(plain)))
    runner = open_model(path)
    assert runner.class_names == ["0", "1", "2"] and not runner.named_classes
    assert runner.preprocessing == Preprocessing.centred(1, 32)  # the file's own input size
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(4))
    want = _logits(model, x)
    assert float((runner.run(x) - want).abs().max()) <= FP32_TOLERANCE * float(want.abs().max())


def test_a_file_that_disagrees_with_pytorch_is_never_written(files, monkeypatch, tmp_path):
    other = xception.create_model("xception", num_classes=3, in_chans=1, stem="small", width=0.125,
                                  middle_repeats=1).eval()  # another model's weights in the file
    other.weights_meta = None
    content = files["paths"]["pte"].read_bytes()
    monkeypatch.setattr(edge_api, "convert", lambda *args, **kwargs: content)
    with pytest.raises(ConfigError, match=r"ExecuTorch \(XNNPACK\)'s output differs from PyTorch by .* the file "
                                          "was not written"):
        export_edge(other, tmp_path / "wrong.pte", input_size=32)
    assert not list(tmp_path.iterdir())


def test_what_cannot_be_exported_or_run_is_refused_in_one_line(model, files, monkeypatch, tmp_path):
    def refused(call, match):
        with pytest.raises(ConfigError, match=match) as err:
            call()
        assert "\n" not in str(err.value)

    backbone = xception.create_model("xception", width=0.125, middle_repeats=1, features_only=True)
    refused(lambda: export_edge(backbone, tmp_path / "b.tflite"), "not a features_only backbone")
    refused(lambda: export_edge(model, tmp_path / "q.pte", precision="int8"), "int8 needs calibration images")
    refused(lambda: export_edge(model, tmp_path / "n.pte", layout="nhwc"), "ExecuTorch program takes NCHW")
    refused(lambda: export_edge(model, tmp_path / "m.bin"), r"use a \.pte or \.tflite name")

    def toolchain_fails(*args, **kwargs):
        raise RuntimeError("unsupported operator aten.foo\nat node 12\n(a long trace)")

    monkeypatch.setattr(edge_pte, "lower", toolchain_fails)
    refused(lambda: export_edge(model, tmp_path / "f.pte"), r"ExecuTorch \(XNNPACK\) cannot convert xception "
            r"\(RuntimeError: unsupported operator aten.foo\); export it to ONNX instead")
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as when the extra is not installed
    refused(lambda: export_edge(model, tmp_path / "m.tflite"), "needs the 'litert-torch' package: pip install "
            r"'xception\[edge\]'")
    assert not list(tmp_path.iterdir())
    (tmp_path / "cut.tflite").write_bytes(files["paths"]["tflite"].read_bytes()[:64])
    with pytest.raises(WeightsError, match="is not a model LiteRT can run"):
        open_model(tmp_path / "cut.tflite")


# -- slow: the paper's model at full size, and the benchmark's contenders ----------------------------------------


@pytest.mark.slow
def test_the_paper_model_at_full_size_exports_to_both_runtimes(tmp_path):
    from weights_helpers import randomise_torch

    paper = randomise_torch(xception.create_model("xception"), seed=5)  # real BN statistics: logits of order 1
    g = torch.Generator().manual_seed(0)
    calibration = torch.randn(4, 3, 299, 299, generator=g)
    held = (torch.randn(8, 3, 299, 299, generator=g), torch.randint(0, 1000, (8,), generator=g))
    for fmt in ("pte", "tflite"):
        fp32 = export_edge(paper, tmp_path / f"x.{fmt}")
        assert fp32.max_rel_diff is not None and fp32.max_rel_diff <= FP32_TOLERANCE
        assert 85e6 < fp32.size_bytes < 100e6  # 22.9 M float32 parameters
        int8 = export_edge(paper, tmp_path / f"x.int8.{fmt}", precision="int8", calibration=calibration,
                           held_out=held)
        assert int8.size_bytes < 0.3 * fp32.size_bytes and int8.int8 is not None and int8.int8.images == 8
        assert int8.int8.max_logit_diff_rel < 0.5  # random weights and images: a sanity bound, not accuracy


@pytest.mark.slow
def test_the_edge_contenders_run_and_match_float32():
    from xception.bench import BenchConfig, run_benchmark

    modes = ("executorch-xnnpack", "executorch-int8", "litert", "litert-int8")
    cfg = BenchConfig(model="xception", model_options={"width": 0.125, "middle_repeats": 1, "stem": "small"},
                      input_size=32, batch_size=3, repeats=2, warmup=1, modes=modes, threads=1)
    results = {r["name"]: r for r in run_benchmark(cfg)["results"]}
    for name in modes:
        r = results[name]
        assert r["status"] == "ok", (name, r["reason"])
        assert r["precision"] == ("int8" if "int8" in name else "float32") and r["batch_size"] == 3
        bound = 0.5 if "int8" in name else FP32_TOLERANCE  # int8: random weights, 16 random calibration images
        assert 0 <= r["details"]["max_rel_err"] <= bound, name

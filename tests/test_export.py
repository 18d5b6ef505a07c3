"""Exported models compute what the PyTorch model computes, at any batch size and any image size they accept."""

import json

import pytest
import torch
from torch import nn

import xception
from weights_helpers import randomise_torch
from xception.cli import main
from xception.errors import ConfigError, MissingPathError, WeightsError
from xception.export import export_model, load_onnx, min_dynamic_size, trace
from xception.predict import predict
from xception.weights import WeightsMeta

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _tiny() -> xception.Xception:
    """A 1-channel small-stem model: its blocks still pad their strided max-pools the TF way."""
    model = xception.create_model("xception", width=0.125, middle_repeats=0, num_classes=4, stem="small",
                                  in_chans=1)
    randomise_torch(model, seed=3)  # real BN statistics: logits of order 1, so differences mean something
    model.weights_meta = WeightsMeta(
        model="xception", config=model.config, class_names=("a", "b", "c", "d"),
        preprocessing=xception.Preprocessing(input_size=32, crop_pct=1.0, channels=1, mean=(0.5,), std=(0.5,)),
    )
    return model.eval()


@pytest.fixture(scope="module")
def tiny():
    return _tiny()


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    return export_model(tiny, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def test_onnx_export_takes_any_batch_and_image_size_and_names_its_output_logits(tiny, tiny_onnx):
    import onnxruntime as ort

    result = tiny_onnx
    assert result.input_shape == (2, 1, 32, 32) and result.dynamic_spatial and result.min_size == 17
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert len(result.checked_shapes) == 2 and {s[0] for s in result.checked_shapes} == {1, 3}
    assert len({s[2:] for s in result.checked_shapes}) == 2  # two image sizes, one of each parity
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    [inp], [out] = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and out.name == "logits"
    assert isinstance(inp.shape[0], str) and isinstance(inp.shape[2], str) and isinstance(inp.shape[3], str)
    # Sizes it was not checked at, odd and even, square and not: the TF pads must follow each.
    for batch, h, w in ((1, 17, 17), (5, 28, 28), (2, 33, 48), (3, 64, 41)):
        x = torch.randn(batch, 1, h, w)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        torch.testing.assert_close(got, _logits(tiny, x), atol=1e-4, rtol=1e-4)


def test_onnx_metadata_carries_class_names_preprocessing_and_axes(tiny_onnx):
    onnx = pytest.importorskip("onnx")
    meta = {p.key: p.value for p in onnx.load(str(tiny_onnx.path)).metadata_props}
    data = json.loads(meta["xception"])
    assert data["class_names"] == ["a", "b", "c", "d"] and data["preprocessing"]["input_size"] == 32
    assert data["input"] == {"name": "images", "layout": "NCHW", "dynamic": ["batch", "height", "width"],
                             "min_size": 17}
    assert data["output"]["name"] == "logits" and data["model"]["stem"] == "small"
    loaded = load_onnx(tiny_onnx.path)
    assert loaded.class_names == ("a", "b", "c", "d") and loaded.num_classes == 4 and loaded.in_chans == 1
    assert loaded.preprocessing.input_size == 32 and loaded.config.in_chans == 1


def test_paper_model_exports_with_a_free_size_despite_tf_padding(tmp_path):
    # Keras's padding depends on each input's size parity; the program must compute it, not freeze it.
    model = randomise_torch(xception.create_model("xception", width=0.125, middle_repeats=0, num_classes=3), 5)
    result = export_model(model, tmp_path / "paper.pt2", input_size=74)
    assert result.dynamic_spatial and result.min_size == 71 and result.max_abs_diff < 1e-4
    program = torch.export.load(str(result.path)).module()
    for batch, h, w in ((1, 71, 71), (2, 72, 99), (3, 150, 77)):
        x = torch.randn(batch, 3, h, w)
        torch.testing.assert_close(program(x), _logits(model, x), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_paper_model_onnx_with_a_free_size_matches_pytorch(tmp_path):
    import onnxruntime as ort

    model = randomise_torch(xception.create_model("xception", width=0.125, middle_repeats=1, num_classes=3), 6)
    result = export_model(model, tmp_path / "paper.onnx", input_size=74)
    assert result.dynamic_spatial and result.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch, h, w in ((1, 71, 71), (2, 72, 99), (3, 150, 77)):
        x = torch.randn(batch, 3, h, w)
        got = torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
        torch.testing.assert_close(got, _logits(model, x), atol=1e-4, rtol=1e-4)


def test_aligned_dilated_model_exports_with_a_free_size(tmp_path):
    model = randomise_torch(xception.create_model("xception41", width=0.125, middle_repeats=1, num_classes=3,
                                                  output_stride=16), 7)
    assert min_dynamic_size(model.config) == 32  # the aligned stem's minimum; the last map is then 2×2
    result = export_model(model, tmp_path / "x41.pt2", input_size=64)
    assert result.dynamic_spatial and result.min_size == 32
    program = torch.export.load(str(result.path)).module()
    x = torch.randn(2, 3, 45, 70)
    torch.testing.assert_close(program(x), _logits(model, x), atol=1e-4, rtol=1e-4)


def test_a_model_that_cannot_take_any_size_is_exported_at_a_fixed_size_with_a_note():
    class SizeDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[-1] % 2:  # Python control flow on the size: no symbolic trace covers every size
                return x.mean((2, 3))
            return x.amax((2, 3))

    program, note = trace(SizeDependent(), torch.randn(2, 3, 32, 32), min_size=16)
    assert note.startswith("spatial size fixed at 32×32")
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(program.module()(x), x.amax((2, 3)))
    with pytest.raises(Exception, match="32"):  # the fixed-size program refuses other sizes
        program.module()(torch.randn(1, 3, 33, 32))


def test_pt2_export_round_trips(tiny, tmp_path):
    result = export_model(tiny, tmp_path / "m.pt2")
    program = torch.export.load(str(result.path))
    x = torch.randn(3, 1, 40, 36)
    torch.testing.assert_close(program.module()(x), _logits(tiny, x), atol=1e-5, rtol=1e-5)


def test_predict_with_onnxruntime_reads_names_and_preprocessing_from_the_file(tiny, tiny_onnx, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32 + 7 * i, 32, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    weights = tmp_path / "tiny.safetensors"
    xception.save_weights(tiny, weights)
    via_torch = predict(weights, paths, top_k=3)
    via_onnx = predict(tiny_onnx.path, paths, top_k=3, backend="onnxruntime")
    for a, b in zip(via_torch, via_onnx, strict=True):
        assert [n for n, _ in a.top] == [n for n, _ in b.top] and set(n for n, _ in b.top) <= {"a", "b", "c", "d"}
        assert [p for _, p in a.top] == pytest.approx([p for _, p in b.top], abs=1e-5)
    # The command: an .onnx file chooses ONNX Runtime by itself.
    assert main(["predict", "--weights", str(tiny_onnx.path), str(paths[0]), "--top-k", "2", "--json"]) == 0
    [out] = json.loads(capsys.readouterr().out)
    assert [t["class"] for t in out["top"]] == [n for n, _ in via_torch[0].top[:2]]


def test_onnx_files_that_cannot_be_run_fail_clearly(tiny_onnx, tmp_path):
    with pytest.raises(MissingPathError, match="does not exist"):
        load_onnx(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all")
    with pytest.raises(WeightsError, match="not an ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ConfigError, match="it runs on onnxruntime, not torch; give the weights it was exported from"):
        predict(tiny_onnx.path, [tmp_path / "x.png"], backend="torch")


def test_bad_requests_fail_clearly(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"use a \.onnx or \.pt2 name"):
        export_model(tiny, tmp_path / "model.bin")
    backbone = xception.create_model("xception", width=0.125, middle_repeats=1, features_only=True)
    with pytest.raises(ConfigError, match="not a features_only backbone"):
        export_model(backbone, tmp_path / "b.onnx")
    with pytest.raises(ConfigError, match="from 17 px up"):
        export_model(tiny, tmp_path / "small.pt2", input_size=16)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_command(tmp_path, capsys):
    small = ["--set", "model.width=0.125", "--set", "model.middle_repeats=0", "--set", "model.stem=small",
             "--input-size", "28"]
    out = tmp_path / "cli.pt2"
    assert main(["export", str(out), *small, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [2, 3, 28, 28] and data["dynamic_spatial"] and data["output"] == "logits"
    assert data["min_size"] == 17 and out.exists()
    assert main(["export", str(tmp_path / "fixed.pt2"), *small, "--fixed-size"]) == 0
    printed = capsys.readouterr().out
    assert "input N×3×28×28: any batch size" in printed and "vs PyTorch at 1×3×28×28, 3×3×28×28" in printed

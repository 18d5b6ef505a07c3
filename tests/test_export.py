"""Exported models compute what the PyTorch model computes."""

import json

import pytest
import torch

import xception
from xception.cli import main
from xception.export import export_model
from xception.weights import WeightsMeta


@pytest.fixture(scope="module")
def tiny():
    model = xception.create_model("xception", width=0.125, middle_repeats=1, num_classes=4, stem="small",
                                  in_chans=1)
    model.weights_meta = WeightsMeta(
        model="xception", config=model.config, class_names=("a", "b", "c", "d"),
        preprocessing=xception.Preprocessing(input_size=32, channels=1, mean=(0.5,), std=(0.5,)),
    )
    return model.eval()


def test_onnx_export_matches_pytorch_at_any_batch_size_and_carries_metadata(tiny, tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    result = export_model(tiny, tmp_path / "m.onnx")
    assert result.input_shape == (2, 1, 32, 32)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-5
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = torch.randn(batch, 1, 32, 32)
        got = session.run(None, {"images": x.numpy()})[0]
        torch.testing.assert_close(torch.from_numpy(got), tiny(x).detach(), atol=1e-5, rtol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    data = json.loads(meta["xception"])
    assert data["class_names"] == ["a", "b", "c", "d"] and data["preprocessing"]["input_size"] == 32


def test_pt2_export_round_trips(tiny, tmp_path):
    result = export_model(tiny, tmp_path / "m.pt2")
    program = torch.export.load(str(result.path))
    x = torch.randn(3, 1, 32, 32)
    torch.testing.assert_close(program.module()(x), tiny(x))


def test_paper_model_with_tf_padding_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    model = xception.create_model("xception", width=0.125, middle_repeats=1, num_classes=3)
    result = export_model(model, tmp_path / "paper.onnx", input_size=74)  # even size: asymmetric pads
    assert result.max_abs_diff < 1e-5


def test_bad_requests_fail_clearly(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"use a \.onnx or \.pt2 name"):
        export_model(tiny, tmp_path / "model.bin")
    backbone = xception.create_model("xception", width=0.125, middle_repeats=1, features_only=True)
    with pytest.raises(ValueError, match="not a features_only backbone"):
        export_model(backbone, tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_export_command(tmp_path, capsys):
    out = tmp_path / "cli.pt2"
    assert main(["export", str(out), "-o", "width=0.125", "-o", "middle_repeats=1", "--input-size", "71",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_shape"] == [2, 3, 71, 71]
    assert out.exists()

"""Prediction: top-k names and probabilities equal the model's softmax; bad files are reported one by one."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import xception
from data_factory import CLASSES, stripes_folder
from xception.cli import main
from xception.data.folder import DUPLICATE
from xception.predict import predict
from xception.preprocessing import Preprocessing


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    folder = stripes_folder(root / "images", per_class=2)
    torch.manual_seed(0)
    model = xception.create_model("xception", num_classes=3, stem="small", width=0.25, middle_repeats=1)
    with torch.no_grad():
        model.head.fc.bias.copy_(torch.tensor([0.3, -0.2, 0.1]))
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    xception.save_weights(model, root / "w.safetensors", class_names=list(CLASSES), preprocessing=pre)
    (root / "cut.png").write_bytes((folder / "vertical" / "2000.png").read_bytes()[:100])
    return root, folder, model.eval()


def test_top_k_are_the_models_softmax_in_order(setup):
    root, folder, model = setup
    image = folder / "horizontal" / "1001.png"
    [result] = predict(root / "w.safetensors", [image], top_k=2)
    pixels = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32) / 127.5 - 1
    with torch.no_grad():
        probs = model(torch.from_numpy(pixels).permute(2, 0, 1)[None]).softmax(1)[0]
    expected = probs.topk(2)
    assert result.ok and [name for name, _ in result.top] == [CLASSES[i] for i in expected.indices]
    assert [p for _, p in result.top] == pytest.approx(expected.values.tolist(), rel=1e-5)


def test_bad_files_are_reported_and_the_rest_go_on(setup):
    root, folder, _ = setup
    inputs = [folder / "vertical", root / "cut.png", root / "missing.png", folder / "diagonal" / "0000.png"]
    results = predict(root / "w.safetensors", inputs, top_k=5, batch_size=3)
    assert [r.path.rsplit("/", 1)[1] for r in results] == ["2000.png", "2001.png", "cut.png", "missing.png",
                                                           "0000.png"]
    assert [r.ok for r in results] == [True, True, False, False, True]
    assert results[2].error.startswith("truncated") and results[3].error == "not found"
    assert all(len(r.top) == 3 and sum(p for _, p in r.top) == pytest.approx(1.0) for r in results if r.ok)


def test_predict_command_prints_json_and_fails_when_a_file_was_unreadable(setup, capsys):
    root, folder, _ = setup
    args = ["predict", "--weights", str(root / "w.safetensors"), "--top-k", "1", "--json"]
    assert main([*args, str(folder / "diagonal")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out) == 2 and set(out[0]["top"][0]) == {"class", "probability"}
    assert main([*args, str(folder / "diagonal"), str(root / "cut.png")]) == 1
    out = json.loads(capsys.readouterr().out)
    assert "error" in out[2]
    assert main(["predict", "--weights", str(root / "w.safetensors"), str(root / "cut.png")]) == 1
    assert "cut.png: error: truncated" in capsys.readouterr().err


def test_links_are_followed_once_and_the_duplicates_counted(setup, tmp_path, capsys):
    root, folder, _ = setup
    tree = tmp_path / "tree"
    shutil.copytree(folder / "vertical", tree / "vertical")
    (tree / "vertical" / "loop").symlink_to("../vertical")  # a loop: without care, every file ~40 times
    (tree / "again.png").symlink_to(tree / "vertical" / "2000.png")
    results = predict(root / "w.safetensors", [tree, tree / "vertical" / "2001.png"], top_k=1)
    assert [Path(r.path).name for r in results] == ["again.png", "2001.png"]
    assert sorted(Path(s.path).name for s in results.skipped) == ["2000.png", "2001.png", "loop"]
    assert {s.reason for s in results.skipped} == {DUPLICATE}
    assert main(["predict", "--weights", str(root / "w.safetensors"), "--top-k", "1", str(tree)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 2 and "skipped 2 path(s): 2 duplicate" in err


def test_predict_prints_results_to_stdout_and_file_errors_to_stderr(setup, capsys):
    root, folder, _ = setup
    image = folder / "diagonal" / "0000.png"
    assert main(["predict", "--weights", str(root / "w.safetensors"), str(image), str(root / "cut.png")]) == 1
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and out.startswith(f"{image}: ")
    assert len(err.splitlines()) == 1 and err.startswith(f"{root / 'cut.png'}: error: truncated")

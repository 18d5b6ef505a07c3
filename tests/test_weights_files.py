"""Our own format, format detection from content, and files that are not what they claim to be."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weights_helpers import assert_same_state
from xception import create_model, save_weights
from xception.preprocessing import Preprocessing
from xception.weights import HeadReplacedWarning, WeightsMismatchError, convert_weights, detect_format, load_native

SMALL = {"width": 0.25, "middle_repeats": 1, "num_classes": 10}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small trained-looking model of ours, saved with metadata."""
    torch.manual_seed(0)
    model = create_model("xception41", **SMALL)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    model.eval()
    path = tmp_path_factory.mktemp("native") / "small.safetensors"
    save_weights(model, path, class_names=[f"c{i}" for i in range(10)],
                 preprocessing=Preprocessing(input_size=64), source="unit test", metrics={"top1": 50.0})
    return model, path


def test_round_trip_is_exact(small, tmp_path):
    model, path = small
    loaded = create_model(weights=path)
    assert not loaded.training and loaded.config == model.config
    assert loaded.class_names == [f"c{i}" for i in range(10)] and loaded.preprocessing.input_size == 64
    assert loaded.weights_meta.source == "unit test" and loaded.weights_meta.metrics == {"top1": 50.0}
    assert_same_state(loaded, model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    save_weights(loaded, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    assert_same_state(load_native(path), model)


def test_native_file_with_another_head(small):
    model, path = small
    with pytest.warns(HeadReplacedWarning, match=r"10 classes, the model 3; skipped head.fc.weight, head.fc.bias"):
        loaded = create_model(weights=path, num_classes=3)
    assert loaded.class_names is None and loaded.weights_meta.metrics == {}
    loaded.reset_classifier(10)
    assert_same_state(loaded, model, except_prefix="head.")


def test_native_file_into_another_shape_is_an_error_naming_the_tensors(small):
    _, path = small
    with pytest.raises(WeightsMismatchError, match=r"shape differs \(file vs model\).*entry_flow.block1.conv1.weight"):
        create_model(weights=path, width=0.5)
    with pytest.raises(ValueError, match="'xception41', but 'xception65' was requested"):
        create_model("xception65", weights=path)


def test_format_comes_from_content_not_extension(small, tmp_path):
    model, path = small
    disguised = tmp_path / "weights.h5"
    shutil.copy(path, disguised)
    assert detect_format(disguised) == "safetensors"
    assert_same_state(create_model(weights=disguised), model)
    bare = tmp_path / "bare.h5"  # a plain torch.save of our state dict
    torch.save(model.state_dict(), bare)
    assert detect_format(bare) == "torch"
    with pytest.raises(ValueError, match="without metadata: name its model"):
        create_model(weights=bare)
    assert_same_state(create_model("xception41", weights=bare, width=0.25, middle_repeats=1), model)


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (np.random.default_rng(0).bytes(4096), "not a weights file this library reads"),
    (json.dumps({"conv1.weight": [1.0]}).encode(), "not a weights file this library reads"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "not a weights file this library reads"),
])
def test_unreadable_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        create_model(weights=path)


def test_a_zip_that_is_not_a_torch_file(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        create_model(weights=path)


def test_truncated_safetensors(small, tmp_path):
    _, path = small
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match="damaged or truncated"):
        create_model(weights=cut)


def test_foreign_safetensors(tmp_path):
    path = tmp_path / "bert.safetensors"
    save_file({"embeddings.word_embeddings.weight": torch.ones(4, 2)}, path)
    with pytest.raises(ValueError, match="not an Xception this library knows"):
        create_model(weights=path)


def test_missing_paths_and_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_model(weights=tmp_path / "nothing.pth")
    with pytest.raises(IsADirectoryError, match="is a directory"):
        create_model(weights=tmp_path)


def test_a_failed_conversion_writes_nothing(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError):
        convert_weights(bad, tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pth"]

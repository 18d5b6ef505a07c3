"""Keras weights give Keras's logits: random Keras models, written in the legacy HDF5 layout of the official
files (Keras-2-style names), loaded here and compared with Keras itself (KERAS_BACKEND=torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from weights_helpers import assert_same_state, keras_predict, max_abs_diff, randomise_keras, tolerance, write_keras2_h5  # noqa: E402
from xception import create_model, save_weights  # noqa: E402
from xception.fileio import sha256_file  # noqa: E402
from xception.preprocessing import KERAS  # noqa: E402
from xception.weights import (  # noqa: E402
    HeadReplacedWarning,
    WeightsMismatchError,
    imagenet_class_names,
    load_pretrained,
)

# Keras's torch backend converts tensors the NumPy-1 way; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def keras_top(tmp_path_factory):
    """A Keras Xception with every weight and BN statistic randomised, its .h5 files and its logits."""
    model = keras.applications.Xception(weights=None, classifier_activation=None)
    randomise_keras(model, seed=0)
    folder = tmp_path_factory.mktemp("keras")
    top = write_keras2_h5(folder / "xception_top.h5", model, offset=1)
    notop = write_keras2_h5(folder / "xception_notop.h5", model, top=False, offset=5)
    x = np.random.default_rng(1).normal(size=(2, 3, 299, 299)).astype(np.float32)
    return {"model": model, "top": top, "notop": notop, "x": x, "logits": keras_predict(model, x)}


@pytest.fixture(scope="module")
def loaded_top(keras_top):
    return create_model(weights=keras_top["top"])


def test_keras_weights_give_keras_logits(keras_top, loaded_top):
    ours = logits(loaded_top, keras_top["x"])
    assert ours.shape == (2, 1000)
    assert max_abs_diff(ours, keras_top["logits"]) <= tolerance(keras_top["logits"])


def test_no_top_file_gives_keras_pooled_features(keras_top):
    # Keras's own legacy loader reads the file into include_top=False, pooling='avg': the file is in its layout.
    reference = keras.applications.Xception(weights=None, include_top=False, pooling="avg", input_shape=(299, 299, 3))
    reference.load_weights(str(keras_top["notop"]))
    x = keras_top["x"][:1]
    expected = keras_predict(reference, x)
    model = create_model(weights=keras_top["notop"])
    assert model.config.num_classes == 0 and model.class_names is None
    features = logits(model, x)
    assert features.shape == (1, 2048)
    assert max_abs_diff(features, expected) <= tolerance(expected)


@pytest.mark.parametrize("change", [{"bn_eps": 1e-5}, {"padding": "symmetric"}], ids=["eps_1e-5", "symmetric_pad"])
def test_the_comparison_detects_wrong_eps_or_padding(keras_top, change):
    """timm's settings on Keras's weights are measurably off: the tolerance is tight enough to notice."""
    model = create_model("xception", weights=keras_top["top"], **change)
    x, expected = keras_top["x"][:1], keras_top["logits"][:1]
    assert max_abs_diff(logits(model, x), expected) > 10 * tolerance(expected)


def test_loaded_model_carries_keras_preprocessing_and_metadata(keras_top, loaded_top):
    model = loaded_top
    assert not model.training
    assert model.config.padding == "tf" and model.config.bn_eps == 1e-3
    assert model.preprocessing == KERAS
    assert model.preprocessing.mean == (0.5, 0.5, 0.5) and model.preprocessing.std == (0.5, 0.5, 0.5)
    assert model.preprocessing.input_size == 299
    assert model.class_names == imagenet_class_names()
    meta = model.weights_meta
    assert meta.model == "xception" and meta.sha256 == sha256_file(keras_top["top"])
    report = load_pretrained(keras_top["top"]).report
    assert report.format == "keras-h5" and report.skipped == () and not report.new_head


def test_layers_matched_by_structure_not_by_generated_names(keras_top, loaded_top, tmp_path):
    """Keras 2 interleaved the unnamed shortcut layers with the main branch and numbered them from wherever
    its counter stood: neither may matter."""
    model = keras_top["model"]
    names = [layer.name for layer in model.layers]
    convs = [n for n in names if n.startswith("conv2d")]
    norms = [n for n in names if n.startswith("batch_normalization")]
    order = [n for n in names if n not in convs + norms]
    for block, conv, norm in zip((2, 3, 4, 13), convs, norms, strict=True):
        order.insert(order.index(f"block{block}_sepconv1"), conv)
        order.insert(order.index(f"block{block}_sepconv2_bn") + 1, norm)
    assert order != names
    shuffled = write_keras2_h5(tmp_path / "reordered.h5", model, offset=17, order=order)
    with h5py.File(shuffled) as f:
        assert "conv2d_17" in f and "batch_normalization_20" in f
        assert f["conv2d_17"].attrs["weight_names"][0] == b"conv2d_17/kernel:0"
    assert_same_state(create_model(weights=shuffled), loaded_top)


def test_keras3_model_save_h5_loads_too(keras_top, loaded_top, tmp_path):
    """model.save('x.h5') keeps the layout under 'model_weights', with Keras 3 names (no ':0')."""
    path = tmp_path / "whole_model.h5"
    keras_top["model"].save(str(path))
    assert_same_state(create_model(weights=path), loaded_top)


def test_a_fine_tuned_keras_model_with_nested_xception(tmp_path):
    """The usual Keras transfer-learning model: Xception(include_top=False) inside another model, a new Dense."""
    base = keras.applications.Xception(weights=None, include_top=False, pooling="avg", input_shape=(96, 96, 3))
    model = keras.Sequential([keras.Input((96, 96, 3)), base, keras.layers.Dense(7, name="flowers")])
    randomise_keras(model, seed=8)
    path = tmp_path / "finetuned.h5"
    model.save(str(path))
    x = np.random.default_rng(10).normal(size=(2, 3, 96, 96)).astype(np.float32)
    expected = keras_predict(model, x)
    ours = create_model(weights=path)
    assert ours.config.num_classes == 7 and ours.class_names is None
    assert max_abs_diff(logits(ours, x), expected) <= tolerance(expected)


def test_different_num_classes_keeps_backbone_and_reports_skipped_head(keras_top, loaded_top):
    with pytest.warns(HeadReplacedWarning, match=r"predictions/kernel, predictions/bias"):
        model, report = load_pretrained(keras_top["top"], num_classes=10)
    assert report.skipped == ("predictions/kernel", "predictions/bias")
    assert report.new_head and model.class_names is None and model.weights_meta.metrics == {}
    assert model.head.fc.weight.shape == (10, 2048)
    model.reset_classifier(1000)  # same shapes again, so that the backbones can be compared tensor by tensor
    assert_same_state(model, loaded_top, except_prefix="head.")


def test_no_top_file_into_a_classifier_model_reports_new_head(keras_top):
    with pytest.warns(HeadReplacedWarning, match="no classifier"):
        model, report = load_pretrained(keras_top["notop"], num_classes=1000)
    assert report.new_head and report.skipped == ()
    assert model.class_names is None


def test_asking_for_another_model_is_an_error(keras_top):
    with pytest.raises(ValueError, match=r"keras-h5 weights for 'xception', but 'legacy_xception'.*symmetric"):
        create_model("legacy_xception", weights=keras_top["top"])


def test_round_trip_through_our_format_is_exact(keras_top, loaded_top, tmp_path):
    path = tmp_path / "xception.safetensors"
    save_weights(loaded_top, path)
    again = create_model(weights=path)
    assert again.weights_meta.source == str(keras_top["top"])
    assert again.weights_meta.sha256 == sha256_file(keras_top["top"])
    assert again.class_names == loaded_top.class_names and again.preprocessing == KERAS
    assert again.config == loaded_top.config
    assert_same_state(again, loaded_top)
    # and once in our format, saving again reproduces the file byte for byte
    save_weights(again, tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()


def test_another_keras_architecture_is_rejected_with_a_listing(tmp_path):
    small = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3, name="stem_conv"),
        keras.layers.BatchNormalization(name="stem_bn"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10, name="logits"),
    ])
    path = write_keras2_h5(tmp_path / "other.h5", small)
    with pytest.raises(WeightsMismatchError) as err:
        create_model(weights=path)
    message = str(err.value)
    assert "missing from the file" in message and "entry_flow.block1.conv1.weight" in message
    assert "unexpected in the file" in message and "stem_conv" in message


def test_an_hdf5_file_in_neither_keras_layout_is_explained(tmp_path):
    path = tmp_path / "arrays.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("conv1/kernel", data=np.ones((3, 3, 3, 32), dtype=np.float32))
    with pytest.raises(ValueError, match=r"not Keras weights: neither the legacy layout.*nor Keras 3's"):
        create_model(weights=path)


def test_truncated_h5_is_a_clear_error(keras_top, tmp_path):
    data = Path(keras_top["notop"]).read_bytes()
    path = tmp_path / "truncated.h5"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged or truncated"):
        create_model(weights=path)

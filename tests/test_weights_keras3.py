"""Keras 3's own files give Keras's logits: Xceptions built by Keras itself (KERAS_BACKEND=torch), with
random weights, saved with ``model.save("x.keras")`` and ``model.save_weights("x.weights.h5")``, loaded here
and compared with Keras's ``predict`` on the same images."""

from __future__ import annotations

import io
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")

from weights_helpers import assert_same_state, max_abs_diff, randomise_keras, tolerance  # noqa: E402
from xception import create_model  # noqa: E402
from xception.errors import WeightsError, XceptionError  # noqa: E402
from xception.preprocessing import KERAS  # noqa: E402
from xception.weights import WeightsMismatchError, detect_format, imagenet_class_names, load_pretrained  # noqa: E402
from xception.weights.keras3 import network_order  # noqa: E402

# Keras's torch backend converts tensors the NumPy-1 way; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SIZE = 96  # fine-tuned models: small inputs keep Keras fast; every stride is still crossed


def keras_logits(model, x_nchw: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x_nchw.transpose(0, 2, 3, 1), verbose=0))


def our_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def save(model, folder: Path, stem: str, kinds: tuple[str, ...]) -> dict[str, Path]:
    """The model saved as Keras 3 saves it: ``model.save`` (.keras) and/or ``model.save_weights`` (.weights.h5)."""
    files = {}
    if "keras" in kinds:
        files["keras"] = folder / f"{stem}.keras"
        model.save(str(files["keras"]))
    if "weights" in kinds:
        files["weights"] = folder / f"{stem}.weights.h5"
        model.save_weights(str(files["weights"]))
    return files


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """keras.applications.Xception with its 1000-class top, every weight and BN statistic randomised."""
    model = randomise_keras(keras.applications.Xception(weights=None, classifier_activation=None), seed=0)
    files = save(model, tmp_path_factory.mktemp("keras3"), "xception", ("weights",))
    x = np.random.default_rng(1).normal(size=(2, 3, 299, 299)).astype(np.float32)
    return {**files, "x": x, "logits": keras_logits(model, x), "classes": 1000}


class FineTuned(keras.Model):
    """A subclassed fine-tuned model: Keras saves what it holds under its attributes' names."""

    def __init__(self, base, classes: int) -> None:
        super().__init__()
        self.base, self.drop, self.fc = base, keras.layers.Dropout(0.3), keras.layers.Dense(classes)

    def call(self, x, training=False):
        return self.fc(self.drop(self.base(x, training=training), training=training))


def fine_tuned(style: str, classes: int, folder: Path, kinds: tuple[str, ...], *, base_file: bool = False) -> dict:
    """The usual transfer-learning models: Xception(include_top=False, pooling='avg') and a new Dense."""
    base = keras.applications.Xception(weights=None, include_top=False, pooling="avg", input_shape=(SIZE, SIZE, 3))
    if style == "functional":  # the base as one layer of another model, with dropout before the classifier
        inputs = keras.Input((SIZE, SIZE, 3))
        outputs = keras.layers.Dense(classes)(keras.layers.Dropout(0.3)(base(inputs)))
        model = keras.Model(inputs, outputs)
        # saved as after training: with the optimizer's state in the file
        model.compile(optimizer=keras.optimizers.SGD(), loss="mse")
        model.optimizer.build(model.trainable_variables)
    elif style == "sequential":
        model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.Dense(classes)])
    elif style == "subclassed":
        model = FineTuned(base, classes)
        model(np.zeros((1, SIZE, SIZE, 3), np.float32))  # builds it
    else:  # "flattened": the classifier on base.output, so the base's layers become the new model's own
        model = keras.Model(base.input, keras.layers.Dense(classes)(base.output))
    randomise_keras(model, seed=classes)
    files = save(model, folder, style, kinds)
    x = np.random.default_rng(2).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32)
    built = {**files, "classes": classes, "x": x, "logits": keras_logits(model, x)}
    if base_file:
        base.save_weights(str(folder / "base.weights.h5"))
        built.update(base=folder / "base.weights.h5", features=keras_logits(base, x))
    return built


@pytest.fixture(scope="module")
def functional(tmp_path_factory):
    return fine_tuned("functional", 5, tmp_path_factory.mktemp("functional"), ("keras", "weights"), base_file=True)


@pytest.fixture(scope="module")
def sequential(tmp_path_factory):
    return fine_tuned("sequential", 7, tmp_path_factory.mktemp("sequential"), ("keras",))


@pytest.fixture(scope="module")
def flattened(tmp_path_factory):
    return fine_tuned("flattened", 3, tmp_path_factory.mktemp("flattened"), ("weights",))


@pytest.fixture(scope="module")
def subclassed(tmp_path_factory):
    return fine_tuned("subclassed", 4, tmp_path_factory.mktemp("subclassed"), ("weights",))


CASES = [("full", "weights"), ("functional", "keras"), ("functional", "weights"), ("sequential", "keras"),
         ("flattened", "weights"), ("subclassed", "weights")]


@pytest.mark.parametrize(("model", "kind"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_keras3_files_give_keras_logits(request, model, kind):
    built = request.getfixturevalue(model)
    loaded, report = load_pretrained(built[kind])
    assert report.format == "keras3" and report.model == "xception"
    assert report.skipped == () and not report.new_head
    assert loaded.config.padding == "tf" and loaded.config.bn_eps == 1e-3
    assert loaded.num_classes == built["classes"]
    assert loaded.class_names == (imagenet_class_names() if built["classes"] == 1000 else None)
    ours = our_logits(loaded, built["x"])
    assert ours.shape == (2, built["classes"])
    assert max_abs_diff(ours, built["logits"]) <= tolerance(built["logits"])


def test_both_files_of_one_model_load_the_same(functional):
    with h5py.File(functional["weights"]) as f:
        assert "optimizer" in f  # state beside the weights, passed over
    assert_same_state(create_model(weights=functional["keras"]), create_model(weights=functional["weights"]))


def test_a_keras_archive_carries_the_input_size_it_was_built_for(functional, full):
    assert create_model(weights=functional["keras"]).preprocessing == KERAS.replace(input_size=SIZE)
    assert create_model(weights=full["weights"]).preprocessing == KERAS  # a bare weights file does not say


def test_the_base_without_top_gives_keras_pooled_features(functional):
    model = create_model(weights=functional["base"])
    assert model.num_classes == 0
    features = our_logits(model, functional["x"])
    assert features.shape == (2, 2048)
    assert max_abs_diff(features, functional["features"]) <= tolerance(functional["features"])


def test_a_new_classifier_on_keras3_weights_reports_the_skipped_head(flattened):
    with pytest.warns(UserWarning, match=r"3 classes, the model 2; skipped dense/kernel, dense/bias"):
        model, report = load_pretrained(flattened["weights"], num_classes=2)
    assert report.new_head and report.skipped == ("dense/kernel", "dense/bias") and model.num_classes == 2


def test_layers_are_matched_by_position_not_by_recorded_names(functional, tmp_path):
    """Files of older Keras 3 versions record no layer names; the shortcut layers' names count whatever the
    process built before. Neither may matter: without any name the file loads the same."""
    bare = tmp_path / "no-names.weights.h5"
    shutil.copy(functional["weights"], bare)
    removed = []
    with h5py.File(bare, "r+") as f:
        f.visititems(lambda name, obj: removed.append(name) if "name" in obj.attrs else None)
        for name in removed:
            del f[name].attrs["name"]
    assert_same_state(create_model(weights=bare), create_model(weights=functional["weights"]))


def test_a_file_ordered_otherwise_is_refused(full, tmp_path):
    """A recorded keras.applications name that disagrees with its position means another layer order."""
    swapped = tmp_path / "swapped.weights.h5"
    shutil.copy(full["weights"], swapped)
    with h5py.File(swapped, "r+") as f:
        a, b = f["layers/batch_normalization_2/vars"], f["layers/batch_normalization_3/vars"]
        if "name" not in a.attrs:
            pytest.skip("this Keras version records no layer names")
        a.attrs["name"], b.attrs["name"] = b.attrs["name"], a.attrs["name"]
    with pytest.raises(WeightsError, match=r"called 'block2_sepconv2_bn', but its position is that of "
                                           r"block2_sepconv1_bn.*ordered otherwise"):
        create_model(weights=swapped)


def test_format_comes_from_content_not_extension(sequential, tmp_path):
    disguised = tmp_path / "weights.pth"
    os.link(sequential["keras"], disguised)
    assert detect_format(disguised) == "keras"
    assert_same_state(create_model(weights=disguised), create_model(weights=sequential["keras"]))


def test_a_truncated_keras_archive_is_a_clear_error(sequential, tmp_path):
    data = Path(sequential["keras"]).read_bytes()
    cut = tmp_path / "cut.keras"
    cut.write_bytes(data[: len(data) // 2])
    assert detect_format(cut) == "keras"
    with pytest.raises(WeightsError, match=r"damaged or truncated \.keras file"):
        create_model(weights=cut)


def test_another_keras3_network_is_rejected_with_a_listing(tmp_path):
    small = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(8, 3),
        keras.layers.BatchNormalization(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    path = tmp_path / "other.weights.h5"
    small.save_weights(str(path))
    with pytest.raises(WeightsMismatchError) as err:
        create_model(weights=path)
    message = str(err.value)
    assert "keras3 weights for xception" in message and "missing from the file" in message
    assert "unexpected in the file (2)" in message and "conv2d (conv2d layer)" in message
    assert "batch_normalization (batch_normalization layer)" in message


# -- damaged files ----------------------------------------------------------------------------------------

def write_keras3_layout(file, model: torch.nn.Module) -> None:
    """A model of ours written in Keras 3's layout, as a fine-tuned model is: the network's layers under
    ``layers/functional/layers/`` by class and position, its classifier as ``layers/dense``."""
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    order = network_order()
    layers: dict[str, list[list[np.ndarray]]] = {
        "conv2d": [[state[f"{m}.weight"].transpose(2, 3, 1, 0)] for m, _ in order["stem"] + order["shortcut"]],
        "separable_conv2d": [[state[f"{m}.depthwise.weight"].transpose(2, 3, 0, 1),
                              state[f"{m}.pointwise.weight"].transpose(2, 3, 1, 0)]
                             for m, _ in order["separable_conv2d"]],
        "batch_normalization": [[state[f"{m}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]
                                for m, _ in order["batch_normalization"]],
    }
    with h5py.File(file, "w") as f:
        for kind, values_of_each in layers.items():
            for i, values in enumerate(values_of_each):
                variables = f.create_group(f"layers/functional/layers/{kind}{f'_{i}' if i else ''}/vars")
                for j, value in enumerate(values):
                    variables.create_dataset(str(j), data=value)
        dense = f.create_group("layers/dense/vars")
        dense.create_dataset("0", data=state["head.fc.weight"].T)
        dense.create_dataset("1", data=state["head.fc.bias"])


def mutations(blob: bytes, count: int, seed: int) -> list[bytes]:
    """Truncations, flipped bytes (as often near the ends, where HDF5 and zip keep their structure) and
    zeroed chunks."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        data = bytearray(blob)
        kind = i % 3
        if kind == 0:
            out.append(bytes(data[: int(rng.integers(1, len(data)))]))
            continue
        for _ in range(int(rng.integers(1, 8))):
            low = max(0, len(data) - 4096) if rng.random() < 0.5 else 0
            at = int(rng.integers(low, len(data)))
            if kind == 1:
                data[at] ^= 1 << int(rng.integers(0, 8))
            else:
                n = min(int(rng.integers(1, 256)), len(data) - at)
                data[at : at + n] = bytes(n)
        out.append(bytes(data))
    return out


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("xception", width=0.0625, num_classes=3).eval()
    folder = tmp_path_factory.mktemp("tiny")
    weights = folder / "tiny.weights.h5"
    write_keras3_layout(weights, model)
    buffer = io.BytesIO()
    write_keras3_layout(buffer, model)
    archive = folder / "tiny.keras"
    config = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 96, 96, 3]}}]}}
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
        z.writestr("config.json", json.dumps(config), compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("model.weights.h5", buffer.getvalue())
    return model, {"weights": weights, "keras": archive}


def test_the_hand_written_files_load(tiny_files):
    model, files = tiny_files
    for path in files.values():
        assert_same_state(create_model(weights=path, width=0.0625), model)


@pytest.mark.parametrize("kind", ["weights", "keras"])
def test_damaged_keras3_files_raise_the_librarys_own_error(tiny_files, kind, tmp_path):
    _, files = tiny_files
    blob = files[kind].read_bytes()
    loaded = 0
    for i, damaged in enumerate(mutations(blob, 45, seed=len(kind))):
        path = tmp_path / f"{i}{files[kind].suffix}"
        path.write_bytes(damaged)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged classifier may only be replaced, with a warning
            try:
                load_pretrained(path, width=0.0625)
                loaded += 1
            except XceptionError:
                pass
    assert loaded < 45  # the damage was noticed at least sometimes

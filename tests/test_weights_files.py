"""Our own format, format detection from content, and files that are not what they claim to be."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from weights_helpers import assert_same_state
from xception import create_model, save_weights
from xception.errors import WeightsError
from xception.preprocessing import Preprocessing
from xception.weights import (
    HeadReplacedWarning,
    WeightsMismatchError,
    convert_weights,
    detect_format,
    load_native,
    load_pretrained,
)

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
    with pytest.raises(ValueError, match="without metadata: the file's tensors are those of 'xception41'"):
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


# -- the model surface --------------------------------------------------------------------------------------

def test_num_classes_as_timm_users_read_it(small):
    _, path = small
    loaded = create_model(weights=path)
    assert loaded.num_classes == 10 == loaded.head.fc.out_features
    loaded.reset_classifier(4)
    assert loaded.num_classes == 4 == loaded.head.fc.out_features
    loaded.reset_classifier(0)
    assert loaded.num_classes == 0 and loaded(torch.randn(1, 3, 64, 64)).shape == (1, loaded.num_features)
    with pytest.raises(AttributeError):
        loaded.num_classes = 3  # the config says it; reset_classifier changes it


# -- RGB weights into other channel counts ------------------------------------------------------------------

def logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def assert_same_logits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 rounding through the network."""
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))


def test_rgb_weights_into_a_grayscale_model(small):
    """The first conv summed over R, G, B: a gray image gives what the same image as RGB (g, g, g) gives."""
    model, path = small
    gray, report = load_pretrained(path, in_chans=1)
    assert report.adapted == "first conv adapted from 3 to 1 input channels (summed over R, G and B)"
    assert gray.config.in_chans == 1 and gray.class_names == [f"c{i}" for i in range(10)]  # the head is intact
    assert gray.preprocessing == Preprocessing(input_size=64, mean=(0.5,), std=(0.5,), channels=1)
    g = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert_same_logits(logits(gray, g), logits(model, g.expand(-1, 3, -1, -1)))


def test_rgb_weights_into_six_channels(small):
    """R, G, B repeated and scaled by 3/6: an RGB image given twice gives the RGB logits."""
    model, path = small
    six, report = load_pretrained(path, in_chans=6)
    assert report.adapted == "first conv adapted from 3 to 6 input channels (R, G, B repeated over 6 channels and " \
                             "scaled by 3/6)"
    assert six.preprocessing.channels == 6 and six.preprocessing.mean == (0.5,) * 6
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert_same_logits(logits(six, torch.cat([x, x], 1)), logits(model, x))


def test_rgb_weights_into_four_channels_follow_the_formula(small):
    model, path = small
    four = create_model(weights=path, in_chans=4)
    rgb = model.state_dict()["entry_flow.block1.conv1.weight"].double()
    expected = (rgb[:, [0, 1, 2, 0]] * 0.75).float()  # R, G, B, R, scaled by 3/4
    torch.testing.assert_close(four.state_dict()["entry_flow.block1.conv1.weight"], expected)


def test_only_rgb_weights_are_adapted(tmp_path):
    one = create_model("xception", in_chans=1, width=0.25, middle_repeats=1, num_classes=2)
    save_weights(one, tmp_path / "gray.safetensors")
    assert load_pretrained(tmp_path / "gray.safetensors").report.adapted is None
    with pytest.raises(WeightsError, match=r"for 1-channel images and the model for 3-channel ones; only RGB "
                                           r"weights .* in_chans=1"):
        create_model(weights=tmp_path / "gray.safetensors", in_chans=3)


# -- mismatches: summarised, with the model the file fits ---------------------------------------------------

@pytest.fixture(scope="module")
def bare41(tmp_path_factory):
    """A bare state dict of a narrow xception41 (no metadata: nothing in the file names its model)."""
    model = create_model("xception41", width=0.25).eval()
    path = tmp_path_factory.mktemp("bare") / "xception41.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_a_bare_state_dict_says_which_model_it_fits(bare41):
    model, path = bare41
    with pytest.raises(WeightsError, match=r"without metadata: the file's tensors are those of 'xception41': "
                                           r'pass name="xception41", width=0.25; save it'):
        create_model(weights=path)
    assert_same_state(create_model("xception41", weights=path, width=0.25), model)


def test_a_mismatch_is_counted_listed_briefly_and_says_what_to_pass(bare41):
    """xception65 has eight more middle-flow modules than the file's xception41: hundreds of tensors."""
    model, path = bare41
    with pytest.raises(WeightsMismatchError) as err:
        create_model("xception65", weights=path, width=0.25)
    lines = str(err.value).splitlines()
    ours, theirs = create_model("xception65", width=0.25).state_dict(), model.state_dict()
    missing = [k for k in ours if k not in theirs and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in theirs if k not in ours]
    misshaped = [k for k in theirs if k in ours and theirs[k].shape != ours[k].shape]
    assert len(missing) > 100
    assert lines[0].endswith(f"does not fit xception65: {len(missing)} tensors missing, {len(unexpected)} "
                             f"unexpected, {len(misshaped)} misshaped")
    shown = ", ".join(missing[:5])
    assert lines[1] == f"  missing from the file ({len(missing)}): {shown}, … ({len(missing) - 5} more)"
    assert len(lines) == 2 + bool(unexpected) + bool(misshaped) + 1
    assert lines[-1] == """  the file's tensors are those of 'xception41': pass name="xception41", width=0.25"""


def test_the_hint_tells_xception_from_legacy_xception(tmp_path):
    path = tmp_path / "paper.pth"
    torch.save(create_model("legacy_xception", width=0.25).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        create_model(weights=path)
    assert re.search(r"those of 'xception' or 'legacy_xception': pass name=\"xception\", width=0.25 or "
                     r"name=\"legacy_xception\", width=0.25 \('xception' computes as Keras does", str(err.value))


def test_a_loaded_model_copies_and_optimizes_with_its_metadata(small):
    """deepcopy (which optimize() does) and pickle must carry the frozen metadata across."""
    import copy
    import pickle

    import xception

    model, path = small
    loaded = create_model(weights=path)
    assert copy.deepcopy(loaded).weights_meta == loaded.weights_meta
    assert pickle.loads(pickle.dumps(loaded.weights_meta)).metrics == {"top1": 50.0}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
    got = xception.optimize(loaded)(x)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-4

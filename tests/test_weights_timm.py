"""timm's weights give timm's logits: every timm Xception variant, randomised, saved as a state dict,
loaded here and compared with timm itself."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

timm = pytest.importorskip("timm")

from weights_helpers import assert_same_state, max_abs_diff, randomise_torch, tolerance  # noqa: E402
from xception import create_model  # noqa: E402
from xception.cli import main  # noqa: E402
from xception.weights import (  # noqa: E402
    HeadReplacedWarning,
    WeightsMismatchError,
    imagenet_class_names,
    load_pretrained,
)
from xception.weights.timm import PREPROCESSING  # noqa: E402

# The aligned variants are large: a small input keeps the test fast and still crosses every stride.
VARIANTS = [("xception41", 96), ("xception65", 96), ("xception71", 96), ("xception41p", 96), ("xception65p", 96)]


def timm_bn_eps(model: torch.nn.Module) -> float:
    return next(m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory):
    """timm's legacy_xception (Cadene's port) with random weights and BN statistics, saved as a .pth."""
    reference = randomise_torch(timm.create_model("legacy_xception"), seed=3)
    path = tmp_path_factory.mktemp("timm") / "xception-cadene.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(2, 3, 299, 299, generator=torch.Generator().manual_seed(4))
    return {"reference": reference, "path": path, "x": x, "logits": run(reference, x),
            "model": create_model(weights=path)}


def test_legacy_xception_weights_give_timm_logits_at_299(legacy):
    model = legacy["model"]
    report = load_pretrained(legacy["path"]).report
    assert report.model == "legacy_xception" and report.format == "timm"
    assert model.config.padding == "symmetric" and model.config.bn_eps == timm_bn_eps(legacy["reference"])
    assert max_abs_diff(run(model, legacy["x"]), legacy["logits"]) <= tolerance(legacy["logits"])


@pytest.mark.parametrize(("name", "size"), VARIANTS, ids=[name for name, _ in VARIANTS])
def test_aligned_weights_give_timm_logits(name, size, tmp_path):
    reference = randomise_torch(timm.create_model(name), seed=5)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model, report = load_pretrained(path)
    assert report.model == name
    assert model.config.padding == "symmetric" and model.config.bn_eps == timm_bn_eps(reference)
    assert model.preprocessing == PREPROCESSING[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(6))
    expected = run(reference, x)
    assert max_abs_diff(run(model, x), expected) <= tolerance(expected)


def test_the_comparison_detects_a_wrong_eps(legacy):
    model = create_model("legacy_xception", weights=legacy["path"], bn_eps=1e-3)
    x, expected = legacy["x"][:1], legacy["logits"][:1]
    assert max_abs_diff(run(model, x), expected) > 10 * tolerance(expected)


def test_legacy_weights_carry_timm_preprocessing_and_class_names(legacy):
    model = legacy["model"]
    assert not model.training
    assert model.preprocessing.crop_pct == 0.8975 and model.preprocessing.mean == (0.5, 0.5, 0.5)
    assert model.class_names == imagenet_class_names()


def test_pooled_features_match_timm_pre_logits(legacy):
    with pytest.warns(HeadReplacedWarning, match=r"no classifier \(num_classes=0\); skipped the file's fc.weight"):
        model, report = load_pretrained(legacy["path"], num_classes=0)
    assert report.skipped == ("fc.weight", "fc.bias")
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    reference = legacy["reference"]
    with torch.no_grad():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert max_abs_diff(run(model, x), expected) <= tolerance(expected)


def test_different_num_classes_keeps_backbone_and_reports_skipped_head(legacy):
    with pytest.warns(HeadReplacedWarning, match=r"1000 classes, the model 10; skipped fc.weight, fc.bias"):
        model, report = load_pretrained(legacy["path"], name="legacy_xception", num_classes=10)
    assert report.skipped == ("fc.weight", "fc.bias") and report.new_head
    assert model.class_names is None and model.head.fc.out_features == 10
    model.reset_classifier(1000)  # same shapes again, so that the backbones can be compared tensor by tensor
    assert_same_state(model, legacy["model"], except_prefix="head.")


def test_timm_safetensors_and_wrapped_checkpoints_load_the_same(legacy, tmp_path):
    state = legacy["reference"].state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    # A training checkpoint from DataParallel, with Cadene's original (out, in) pointwise matrices.
    wrapped = {f"module.{k}": (v[:, :, 0, 0] if k.endswith("pointwise.weight") else v) for k, v in state.items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "checkpoint.pth")
    for name in ("model.safetensors", "checkpoint.pth"):
        assert_same_state(create_model(weights=tmp_path / name), legacy["model"])


def test_features_only_backbone_from_weights(legacy):
    backbone = create_model(weights=legacy["path"], features_only=True, out_indices=(1, 4))
    maps = run(backbone, torch.randn(1, 3, 128, 128))
    assert [m.shape[1] for m in maps] == [128, 2048]


def test_mismatch_lists_missing_unexpected_and_misshaped(legacy, tmp_path):
    state = dict(legacy["reference"].state_dict())
    del state["block3.rep.1.conv1.weight"]
    state["bn1.weight"] = torch.ones(31)
    state["extra.weight"] = torch.ones(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(WeightsMismatchError) as err:
        create_model(weights=path)
    message = str(err.value)
    assert "missing from the file (1): entry_flow.block4.main.sepconv1.depthwise.weight" in message
    assert "unexpected in the file (1): extra.weight" in message
    assert "shape differs (file vs model) (1): bn1.weight (31,) vs (32,)" in message


def test_asking_for_another_variant_is_an_error(legacy):
    with pytest.raises(ValueError, match=r"weights for 'legacy_xception', but 'xception41' was requested"):
        create_model("xception41", weights=legacy["path"])


def test_predict_reads_the_variant_from_a_timm_file(tmp_path, capsys):
    """No --model needed: the keys say xception41. A uniform image stays uniform through resize and crop, so
    timm's probabilities on the constant [-1, 1] input are the reference."""
    reference = randomise_torch(timm.create_model("xception41", num_classes=3), seed=9)
    path = tmp_path / "xception41-finetuned.pth"
    torch.save(reference.state_dict(), path)
    colour = (200, 30, 90)
    Image.new("RGB", (50, 40), colour).save(tmp_path / "flat.png")
    assert main(["predict", "--weights", str(path), str(tmp_path / "flat.png"), "--json", "--top-k", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    x = (torch.tensor(colour, dtype=torch.float32) / 127.5 - 1).view(1, 3, 1, 1).expand(1, 3, 299, 299)
    expected = run(reference, x).softmax(1)[0]
    assert [int(t["class"]) for t in top] == expected.argsort(descending=True).tolist()
    assert max(abs(t["probability"] - float(expected[int(t["class"])])) for t in top) < 1e-4
    assert main(["predict", "--weights", str(path), str(tmp_path / "flat.png"), "--model", "xception"]) == 1
    assert "Leave --model out or pass --model xception41" in capsys.readouterr().err


def test_a_foreign_state_dict_is_rejected(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.ones(64, 3, 7, 7), "layer1.0.conv1.weight": torch.ones(64, 64, 3, 3)}, path)
    with pytest.raises(ValueError, match=r"not an Xception this library knows"):
        create_model(weights=path)


CODE_RAN: list[str] = []


def _payload() -> None:
    CODE_RAN.append("ran")


class Malicious:
    def __reduce__(self):
        return (_payload, ())


def test_a_pickle_that_runs_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": torch.ones(1), "payload": Malicious()}, path)
    with pytest.raises(ValueError, match=r"refused: it is a pickle that needs Python code.*_payload"):
        create_model(weights=path)
    assert CODE_RAN == []
    torch.load(path, weights_only=False)  # the file really would have run code
    assert CODE_RAN == ["ran"]


def test_a_training_checkpoint_with_objects_is_refused_with_a_recipe(tmp_path):
    path = tmp_path / "train.pth"
    torch.save({"state_dict": {"a": torch.ones(1)}, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(ValueError, match=r"argparse.Namespace.*torch.save\(checkpoint\['state_dict'\]"):
        create_model(weights=path)


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy_pickle"])
def test_truncated_pth_is_a_clear_error(tmp_path, legacy_format):
    path = tmp_path / "weights.pth"
    torch.save({"w": torch.randn(1000)}, path, _use_new_zipfile_serialization=not legacy_format)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        create_model(weights=path)

"""Fine-tuning details: BatchNorm statistics kept frozen, and the learning rate scaled by batch where it is set."""

from pathlib import Path

import pytest
import torch
from torch import nn

import xception
from data_factory import stripes_folder, tiny_recipe
from xception.errors import ConfigError
from xception.preprocessing import Preprocessing
from xception.train import RunSettings, freeze_batchnorm, open_run, train

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = {"stem": "small", "width": 0.25, "middle_repeats": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return stripes_folder(tmp_path_factory.mktemp("stripes"), per_class=8)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    """Weights whose BatchNorm statistics are not the initial ones (mean 0, variance 1): frozen ones must stay."""
    torch.manual_seed(1)
    model = xception.create_model("xception", num_classes=5, **MODEL)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, 3, 32, 32) * 4 + 1)
    path = tmp_path_factory.mktemp("weights") / "pretrained.safetensors"
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    xception.save_weights(model, path, class_names=list("abcde"), preprocessing=pre)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def running_stats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_freeze_batchnorm_puts_the_backbones_bn_in_eval_mode_and_keeps_its_statistics():
    model = xception.create_model("xception", num_classes=3, **MODEL)
    model.train()
    frozen = freeze_batchnorm(model)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert frozen == len(norms) > 0 and not any(m.training for m in norms)
    assert model.training and model.head.training  # everything else still trains (dropout in the head)
    before = {k: v.clone() for k, v in running_stats(model.state_dict()).items()}
    x = torch.rand(4, 3, 32, 32) * 3 + 2
    model(x).sum().backward()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    # Eval-mode BN normalises with the running statistics: the batch's own would give other outputs.
    expected = model.entry_flow.block1.conv1_bn(model.entry_flow.block1.conv1(x))
    bn = model.entry_flow.block1.conv1_bn
    reference = (model.entry_flow.block1.conv1(x) - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + bn.eps) * bn.weight[:, None, None] + bn.bias[:, None, None]
    torch.testing.assert_close(expected, reference)


def test_fine_tuning_with_frozen_bn_trains_the_weights_but_keeps_the_statistics(folder, pretrained, tmp_path):
    path, before = pretrained
    result = train(tiny_recipe(epochs=1, freeze_bn=True), folder, weights=path, out=tmp_path / "run", progress=False)
    after = xception.create_model("xception", weights=result.weights).state_dict()
    for key, value in running_stats(before).items():
        assert torch.equal(value, after[key]), key
    convs = [k for k in before if k.endswith("pointwise.weight")]
    assert not all(torch.equal(before[k], after[k]) for k in convs)  # the backbone did train
    bn_scales = [k for k in before if k.endswith("_bn.weight")]
    assert not all(torch.equal(before[k], after[k]) for k in bn_scales)  # BN's scale and shift train too

    unfrozen = train(tiny_recipe(epochs=1), folder, weights=path, out=tmp_path / "run2", progress=False)
    moved = xception.create_model("xception", weights=unfrozen.weights).state_dict()
    assert not all(torch.equal(v, moved[k]) for k, v in running_stats(before).items())


def test_frozen_bn_without_pretrained_weights_is_refused(folder, tmp_path):
    with pytest.raises(ConfigError, match=r"freeze_bn.*weights"):
        open_run(tiny_recipe(freeze_bn=True), RunSettings(data=str(folder)), out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_learning_rate_scaling_is_said_where_it_happens(folder, tmp_path, capsys):
    recipe = tiny_recipe(optimizer="sgd", lr=0.045, lr_base_batch=32, batch_size=8, accum_steps=2)
    run = open_run(recipe, RunSettings(data=str(folder)), out=tmp_path / "run")
    assert run.peak_lr == pytest.approx(0.045 * 16 / 32)
    assert run.state.optimizer.param_groups[0]["lr"] == pytest.approx(run.peak_lr)
    err = capsys.readouterr().err
    assert ("lr 0.045 for a batch of 32 → 0.0225 for the global batch of 16 (linear scaling; "
            "set lr_base_batch = 0 to turn it off)") in err
    run.close()
    open_run(recipe.replace(lr_base_batch=0), RunSettings(data=str(folder)), out=tmp_path / "run2").close()
    assert "linear scaling" not in capsys.readouterr().err

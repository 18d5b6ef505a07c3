"""Small datasets learn with the default settings: BatchNorm statistics measured for the weights that are
validated and saved ("precise BN"), a learning-rate rule that suits the optimiser, and a warning when
validation sits at chance while training accuracy climbs."""

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from data_factory import assert_same_training, stripes_folder, tiny_recipe
from xception.distributed import DistEnv
from xception.evaluate import Counts
from xception.train import (
    Recipe,
    RunSettings,
    fit,
    freeze_batchnorm,
    load_checkpoint,
    load_recipe,
    open_log,
    open_run,
    resume_settings,
    train,
)
from xception.train.precise_bn import recompute_batchnorm, settle_updates, statistics_due, trained_norms
from xception.train.validation import warn_at_chance

pytestmark = pytest.mark.usefixtures("one_thread")


def direction_stripes(root: Path, per_class: int = 80, size: int = 32, seed: int = 0) -> Path:
    """Two classes told apart only by the direction of their stripes (random period, phase and noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(size)
    for name in ("horizontal", "vertical"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            wave = 0.5 + 0.5 * np.sin(2 * np.pi * t / rng.integers(4, 9) + rng.uniform(0, 2 * np.pi))
            image = np.tile(wave[:, None], (1, size)) if name == "horizontal" else np.tile(wave, (size, 1))
            image = np.clip(image + rng.normal(0, 0.1, image.shape), 0, 1)
            Image.fromarray((np.stack([image] * 3, -1) * 255).astype(np.uint8)).save(root / name / f"{i:03d}.png")
    return root


def small_run_recipe(**changes: object) -> Recipe:
    """`xception train DIR --epochs 8 --input-size 32 --set model.width=0.125 --set model.stem=small`: the
    folder default (modern), in process, without decoding workers."""
    recipe = load_recipe("modern").replace(epochs=8, input_size=32, workers=0, device="cpu",
                                           model_options={"drop_rate": 0.2, "width": 0.125, "stem": "small"})
    return recipe.replace(**changes)


@pytest.fixture(scope="module")
def stripes(tmp_path_factory) -> Path:
    return direction_stripes(tmp_path_factory.mktemp("stripes"))  # 144 training images: 2 updates per epoch


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# -- the whole story ---------------------------------------------------------------------------------------


def test_a_small_folder_learns_with_the_default_recipe(stripes, tmp_path, capsys):
    result = train(small_run_recipe(), stripes, out=tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert "0.0005 for the global batch of 64" in err  # AdamW: square-root scaling from 1e-3 at 256
    assert result.best is not None and result.best["val_top1"] >= 0.8, records(result.run_dir)
    assert "is at chance" not in err
    # The exported model is the validated one: EMA weights with their recomputed statistics.
    best = load_checkpoint(result.run_dir / "best.pt")
    running_var = [v for k, v in best["ema"].items() if k.endswith("running_var")]
    assert running_var and all(torch.isfinite(v).all() for v in running_var)


def test_without_precise_bn_it_validates_at_chance_and_says_what_to_try(stripes, tmp_path, capsys):
    # The same images and weights as a run that learns (lr 1e-3, no EMA), evaluated with running statistics
    # that have seen 16 updates: every image gets the same answer.
    recipe = small_run_recipe(lr=1e-3, lr_base_batch=0, ema_decay=0.0, precise_bn="off")
    result = train(recipe, stripes, out=tmp_path / "off", progress=False)
    err = capsys.readouterr().err
    assert max(r["train_acc"] for r in records(result.run_dir)) > 0.9
    assert all(r["val_top1"] == 0.5 for r in records(result.run_dir))
    warnings = [line for line in err.splitlines() if line.startswith("warning: validation top-1")]
    assert warnings and "--set precise_bn=on" in warnings[0]
    assert "is at chance (50.00 %) while training accuracy is" in warnings[0]

    again = train(recipe.replace(precise_bn="auto"), stripes, out=tmp_path / "auto", progress=False)
    assert again.best is not None and again.best["val_top1"] >= 0.8
    assert "is at chance" not in capsys.readouterr().err


# -- precise BN --------------------------------------------------------------------------------------------


def test_precise_bn_on_part_of_an_epoch_resumes_exactly(tmp_path):
    # Every epoch ends by recomputing from 2 of its 3 batches, with dropout, flips and an EMA: a run cut
    # mid-epoch and resumed from its folder ends with the same weights and statistics as an uninterrupted one.
    folder = stripes_folder(tmp_path / "data", per_class=12)  # 27 training images: 3 updates of 8 per epoch
    recipe = tiny_recipe(epochs=2, deterministic=True, ema_decay=0.5, hflip=0.5, precise_bn="on",
                         precise_bn_images=16, model_options={"stem": "small", "width": 0.25, "middle_repeats": 1,
                                                              "drop_rate": 0.3})
    reference = train(recipe, folder, out=tmp_path / "reference", progress=False).run_dir
    run = open_run(recipe, RunSettings(data=str(folder)), out=tmp_path / "cut")
    with open_log(run) as run_log:
        assert fit(run, run_log, steps=4).interrupted
    run.close()
    stored, _ = resume_settings(tmp_path / "cut")
    assert stored == recipe
    run = open_run(stored, resume=tmp_path / "cut")
    with open_log(run) as run_log:
        done = fit(run, run_log)
    run.close()
    assert_same_training(reference / "last.pt", tmp_path / "cut" / "last.pt")
    assert done.records[-1]["val_top1"] == records(reference)[-1]["val_top1"]
    before = load_checkpoint(tmp_path / "cut" / "last.pt")["ema"]
    plain = train(recipe.replace(precise_bn="off"), folder, out=tmp_path / "plain", progress=False).run_dir
    after = load_checkpoint(plain / "last.pt")["ema"]
    assert not torch.equal(before["module.entry_flow.block1.conv1_bn.running_var"],
                           after["module.entry_flow.block1.conv1_bn.running_var"])  # it did recompute


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, groups=2), nn.BatchNorm2d(6),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6, 4), nn.BatchNorm1d(4),
    )


def float64_statistics(model: nn.Module, batches: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm layer's mean over ``batches`` of the batch mean and unbiased variance of its input in
    train mode, computed in float64."""
    reference = copy.deepcopy(model).double().train()
    for m in reference.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    norms = [m for m in reference.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    seen: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {m: [] for m in norms}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)  # channels × (batch, positions)
        seen[module].append((x.mean(1), x.var(1, unbiased=True)))

    hooks = [m.register_forward_pre_hook(record) for m in norms]
    with torch.no_grad():
        for x in batches:
            reference(x.double())
    for h in hooks:
        h.remove()
    return [(torch.stack([s[0] for s in seen[m]]).mean(0), torch.stack([s[1] for s in seen[m]]).mean(0))
            for m in norms]


def test_precise_statistics_are_the_float64_average_of_the_batch_statistics():
    model = small_net()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(n, 3, 9, 9, generator=g) * 3 + 2 for n in (16, 16, 7)]
    expected = float64_statistics(model, batches)
    weights = {k: v.clone() for k, v in model.named_parameters()}
    rng = torch.get_rng_state()
    model.train()
    model[1].eval()  # modes and momenta are put back as they were
    model[4].momentum = 0.3

    assert recompute_batchnorm(model, iter(batches)) == 3
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, (mean, var) in zip(norms, expected, strict=True):
        assert torch.allclose(m.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        assert torch.allclose(m.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert model[0].training and not model[1].training and model[4].training and model[8].training
    assert model[4].momentum == 0.3 and model[1].momentum == 0.1
    assert all(int(m.num_batches_tracked) == 0 for m in norms)
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout stayed off: no random numbers drawn


def test_precise_statistics_are_deterministic_and_leave_frozen_layers_alone():
    model = small_net()
    batches = [torch.randn(8, 3, 9, 9, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    twin = copy.deepcopy(model)
    recompute_batchnorm(model, batches)
    recompute_batchnorm(twin, batches)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True))

    model.train()
    model[4].eval()  # as freeze_bn leaves a layer: its statistics are kept
    before = model[4].running_var.clone()
    ema_copy = copy.deepcopy(model)
    norms = trained_norms(model, ema_copy)
    assert ema_copy[4] not in norms and ema_copy[1] in norms and ema_copy[10] in norms
    recompute_batchnorm(ema_copy, [b * 5 for b in batches], norms)
    assert torch.equal(ema_copy[4].running_var, before) and not torch.equal(ema_copy[1].running_var,
                                                                          model[1].running_var)
    # With no batches nothing changes.
    kept = {k: v.clone() for k, v in ema_copy.state_dict().items()}
    assert recompute_batchnorm(ema_copy, []) == 0
    assert all(torch.equal(v, kept[k]) for k, v in ema_copy.state_dict().items())


def test_freeze_bn_leaves_no_layer_of_the_backbone_to_recompute():
    from xception import create_model

    model = create_model("xception", num_classes=3, stem="small", width=0.125, middle_repeats=1)
    model.train()
    freeze_batchnorm(model)
    assert trained_norms(model, model) == []


@pytest.mark.parametrize("setting, ema, step, due", [
    ("auto", 0.0, 0, True), ("auto", 0.0, 99, True), ("auto", 0.0, 100, False),
    ("auto", 0.9998, 199, True), ("auto", 0.9998, 200, False),
    ("on", 0.0, 10**6, True), ("off", 0.0, 0, False),
])
def test_auto_recomputes_while_the_running_statistics_cannot_have_settled(setting, ema, step, due):
    norms = [nn.BatchNorm2d(4)]  # PyTorch's momentum 0.1: (0.9)^100 ≈ 3e-5 of the start remains
    assert statistics_due(Recipe(precise_bn=setting, ema_decay=ema), step, norms) is due
    assert settle_updates([nn.BatchNorm2d(4, momentum=0.01)]) == pytest.approx(1000)
    assert settle_updates([nn.BatchNorm2d(4, momentum=None)]) == math.inf  # a cumulative average never forgets
    assert not statistics_due(Recipe(precise_bn="on"), 0, [])  # no layer that training updated


# -- the learning-rate rule --------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer, rule, at_64", [
    ("adamw", "sqrt", 1e-3 * 0.5), ("rmsprop", "sqrt", 1e-3 * 0.5), ("sgd", "linear", 1e-3 * 0.25),
])
def test_the_lr_follows_the_batch_by_the_optimisers_rule(optimizer, rule, at_64):
    recipe = Recipe(optimizer=optimizer, lr=1e-3, lr_base_batch=256)
    assert recipe.lr_scaling == "auto" and recipe.lr_rule() == rule
    assert recipe.scaled_lr(64) == pytest.approx(at_64)
    assert recipe.scaled_lr(256) == pytest.approx(1e-3)
    assert recipe.replace(lr_scaling="linear").scaled_lr(8) == pytest.approx(1e-3 / 32)
    assert recipe.replace(lr_scaling="sqrt").scaled_lr(1024) == pytest.approx(2e-3)
    assert recipe.replace(lr_base_batch=0).scaled_lr(8) == 1e-3


def test_the_modern_recipe_on_a_batch_of_8_keeps_a_usable_rate():
    modern = load_recipe("modern")
    assert modern.scaled_lr(8) == pytest.approx(1e-3 / math.sqrt(32))  # 1.8e-4, not 3.1e-5
    assert load_recipe("paper").lr_rule() == load_recipe("fashion-mnist").lr_rule() == "linear"


def documented(toml: str, key: str) -> str:
    """A setting's value and its documentation in --show-recipe's output, the wrapped lines joined."""
    lines = toml.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{key} = "))
    text = [lines[start].removeprefix(f"{key} = ")]
    for line in lines[start + 1:]:
        if not line.startswith(" "):
            break
        text.append(line.strip().removeprefix("# "))
    return " ".join(" ".join(text).replace(" # ", " ").split())


def test_show_recipe_documents_the_rules_and_old_stored_recipes_keep_theirs():
    shown = load_recipe("modern").to_toml()
    scaling, precise = documented(shown, "lr_scaling"), documented(shown, "precise_bn")
    assert scaling.startswith('"auto"') and "(here: sqrt)" in scaling
    assert "linear for sgd, sqrt for adamw and rmsprop" in scaling
    assert precise.startswith('"auto"') and "training batches" in precise
    assert documented(shown, "precise_bn_images").startswith("4096")
    # A checkpoint's recipe from before these settings ran with linear scaling and running statistics.
    stored = load_recipe("modern").to_dict()
    for key in ("lr_scaling", "precise_bn", "precise_bn_images"):
        del stored[key]
    old = Recipe.from_dict(stored)
    assert (old.lr_scaling, old.precise_bn) == ("linear", "off") and old.scaled_lr(64) == pytest.approx(2.5e-4)
    with pytest.raises(ValueError, match="lr_scaling must be one of"):
        Recipe(lr_scaling="cubic")
    with pytest.raises(ValueError, match="precise_bn must be one of"):
        Recipe(precise_bn="yes")


# -- the warning -------------------------------------------------------------------------------------------


def fake_run(precise_bn: str = "auto") -> SimpleNamespace:
    return SimpleNamespace(world=DistEnv(), recipe=Recipe(precise_bn=precise_bn))


def counts(confusion: list[list[int]]) -> Counts:
    c = Counts.zeros(len(confusion))
    c.confusion += torch.tensor(confusion)
    return c


@pytest.mark.parametrize("confusion, train_acc, warned", [
    ([[50, 0], [50, 0]], 0.99, True),  # one answer for every image
    ([[27, 23], [22, 28]], 0.95, True),  # 55 %: within two standard deviations of a guess on 100 images
    ([[40, 10], [10, 40]], 0.95, False),  # 80 %: learning
    ([[50, 0], [50, 0]], 0.60, False),  # training is near chance too: nothing learnt yet, nothing to say
    ([[70, 0], [30, 0]], 0.99, True),  # unbalanced: chance is answering the larger class, 70 %
    ([[10, 0, 0], [10, 0, 0], [10, 0, 0]], 0.9, True),
])
def test_a_warning_says_when_validation_sits_at_chance_while_training_climbs(confusion, train_acc, warned, capsys):
    validated = counts(confusion)
    record = {"val_top1": validated.top1, "train_acc": train_acc}
    warn_at_chance(fake_run(), record, validated, recomputed=False)  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert (err.count("\n") == 1 and err.startswith("warning: validation top-1")) if warned else err == ""
    if warned:
        assert "precise_bn=on" in err
        warn_at_chance(fake_run(), record, validated, recomputed=True)  # type: ignore[arg-type]
        assert "more images per class" in capsys.readouterr().err

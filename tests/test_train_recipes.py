"""Recipes: the shipped files load, their schedules give the stated values, overrides and errors are clear."""

import dataclasses
import math

import pytest
import torch
from torch import nn

from xception.train import ModelEma, Recipe, apply_overrides, list_recipes, load_recipe, lr_at, note_changes


def test_the_three_recipes_ship_with_the_package():
    assert list_recipes() == ["fashion-mnist", "modern", "paper"]
    for name in list_recipes():
        recipe = load_recipe(name)
        assert recipe.name == name and recipe.description


def test_paper_recipe_matches_the_paper():
    r = load_recipe("paper")
    assert (r.optimizer, r.momentum, r.lr, r.weight_decay) == ("sgd", 0.9, 0.045, 1e-5)
    assert r.model_options["drop_rate"] == 0.5 and r.ema_decay > 0  # dropout 0.5, Polyak averaging
    for epoch in (0, 0.5, 1, 1.99, 2, 3, 4, 10, 11.5, 57):
        assert lr_at(r, epoch) == pytest.approx(0.045 * 0.94 ** (math.floor(epoch) // 2), rel=1e-12)


def test_modern_recipe_warms_up_linearly_then_follows_a_cosine():
    r = load_recipe("modern")
    assert (r.optimizer, r.warmup_epochs, r.epochs, r.label_smoothing) == ("adamw", 5, 100, 0.1)
    assert lr_at(r, 0) == 0.0
    assert lr_at(r, 2.5) == pytest.approx(r.lr / 2)
    assert lr_at(r, 5) == pytest.approx(r.lr)
    assert lr_at(r, 52.5) == pytest.approx((r.lr + r.min_lr) / 2)  # half-way through the cosine
    assert lr_at(r, 100) == pytest.approx(r.min_lr)
    t = (30 - 5) / 95
    assert lr_at(r, 30) == pytest.approx(r.min_lr + (r.lr - r.min_lr) * (1 + math.cos(math.pi * t)) / 2)


def test_fashion_mnist_recipe_is_the_small_input_model_and_ends_at_zero():
    r = load_recipe("fashion-mnist")
    assert r.model_options["stem"] == "small" and r.input_size == 28 and len(r.mean) == 1
    assert lr_at(r, r.warmup_epochs) == pytest.approx(r.lr)
    assert lr_at(r, r.epochs) == pytest.approx(r.min_lr)
    values = [lr_at(r, r.warmup_epochs + i / 10 * (r.epochs - r.warmup_epochs)) for i in range(11)]
    assert values == sorted(values, reverse=True)


def test_peak_lr_scales_linearly_with_the_global_batch():
    r = load_recipe("paper")
    assert r.scaled_lr(32) == pytest.approx(0.045) and r.scaled_lr(256) == pytest.approx(0.36)
    assert lr_at(r, 4, peak_lr=0.36) == pytest.approx(0.36 * 0.94**2)
    assert Recipe(lr_base_batch=0).scaled_lr(4096) == Recipe().lr


def test_resolved_toml_round_trips_and_reads_back_as_a_recipe(tmp_path):
    for name in list_recipes():
        recipe = load_recipe(name)
        (tmp_path / f"{name}.toml").write_text(recipe.to_toml() + "\n[run]\ndata = 'ignored'\n")
        again = load_recipe(tmp_path / f"{name}.toml")
        assert again.replace(name=name) == recipe


def test_overrides_set_any_setting_and_model_option():
    r = apply_overrides(load_recipe("fashion-mnist"), ["lr=0.05", "model.width=0.75", "scale=[0.5, 1.0]",
                                                        "nesterov=false", "optim.epochs=3"])
    assert (r.lr, r.model_options["width"], r.scale, r.nesterov, r.epochs) == (0.05, 0.75, (0.5, 1.0), False, 3)
    assert r.model_options["stem"] == "small"  # the other model options stay
    # The recipe's description no longer fits it: the run's config.toml says what changed.
    base = load_recipe("fashion-mnist")
    assert note_changes(base, r).description == base.description + (
        "; changed: scale=[0.5, 1.0], epochs=3, lr=0.05, nesterov=false, model.width=0.75")
    assert note_changes(base, base) == base


@pytest.mark.parametrize("text, message", [
    ('[optim]\nepoch = 3\n', "belongs in no section"),
    ('[data]\nlr = 0.1\n', r"lr belongs in \[optim\]"),
    ('[optim]\nepochs = "three"\n', "epochs must be a whole number"),
    ('[optim]\nlr = -1\n', "lr must be > 0"),
    ('[optim]\noptimizer = "lion"\n', "optimizer must be one of"),
    ('[optim\n', "not valid TOML"),
])
def test_bad_recipes_are_explained(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe.from_toml(text, "mine")


def test_unknown_recipe_names_list_the_shipped_ones(tmp_path):
    with pytest.raises(ValueError, match="fashion-mnist, modern, paper"):
        load_recipe("imagenet-in-an-hour")
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        apply_overrides(Recipe(), ["lr"])


def test_ema_follows_the_formula_with_its_warm_up():
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEma(model, decay=0.9)
    expected = 1.0
    for n, value in enumerate([3.0, -1.0, 5.0, 2.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        d = min(0.9, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
        ema.update(model)
        assert ema.module.weight[0, 0].item() == pytest.approx(expected, rel=1e-6)
    assert not ema.module.weight.requires_grad


def test_train_command_lists_and_shows_recipes_with_flag_overrides(capsys):
    from xception.cli import main

    assert main(["train", "--list-recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in ("paper", "modern", "fashion-mnist"))
    # No data argument: the Fashion-MNIST recipe; flags and --set override it.
    assert main(["train", "--show-recipe", "--epochs", "3", "--lr", "0.05", "--set", "model.width=0.5"]) == 0
    shown = Recipe.from_toml(capsys.readouterr().out, "shown")
    base = load_recipe("fashion-mnist")
    expected = note_changes(base, apply_overrides(base, ["epochs=3", "lr=0.05", "model.width=0.5"]))
    assert shown == expected.replace(name="shown")
    assert main(["train", "some/folder", "--show-recipe"]) == 0
    assert Recipe.from_toml(capsys.readouterr().out, "modern") == load_recipe("modern")


def test_show_recipe_spells_out_every_model_option_with_its_documentation(capsys):
    from xception.cli import main
    from xception.models import XceptionConfig
    from xception.train.recipe import FROM_RUN, model_option_docs

    docs = model_option_docs()
    assert list(docs) == [f.name for f in dataclasses.fields(XceptionConfig)] and all(docs.values())
    for name in list_recipes():
        assert main(["train", "--recipe", name, "--show-recipe"]) == 0
        shown = capsys.readouterr().out
        model_section = shown.split("[model]\n", 1)[1].split("\n[", 1)[0]
        recipe = load_recipe(name)
        for option in docs:
            if option in recipe.model_options:  # set: a setting
                prefix = f"{option} = "
            elif option not in FROM_RUN:  # unset: the model's default, commented out
                prefix = f"# {option} = "
            else:
                continue
            line = next(s for s in model_section.splitlines() if s.startswith(prefix))
            comment = line.partition(" # ")[2]
            assert len(comment) > 20 and docs[option].startswith(comment)  # its documentation beside it
        assert Recipe.from_toml(shown, name) == recipe  # and it reads back as the same recipe
    assert main(["train", "--show-recipe", "--set", "model.width=0.5"]) == 0
    assert "\nwidth = 0.5 " in capsys.readouterr().out


def test_show_recipe_round_trips_every_setting_changed(capsys):
    from xception.cli import main

    changes = ["erase=0.5", "erase_scale=[0.05, 0.3]", "erase_ratio=[0.5, 2.0]", "input_size=32", "ema_decay=0.999",
               "model.residual=false", "model.output_stride=8", "model.global_pool=\"max\"", "warmup_epochs=2"]
    assert main(["train", "--show-recipe", *[a for c in changes for a in ("--set", c)]]) == 0
    shown = Recipe.from_toml(capsys.readouterr().out, "fashion-mnist")
    base = load_recipe("fashion-mnist")
    assert shown == note_changes(base, apply_overrides(base, changes))
    assert shown.model_options["output_stride"] == 8 and shown.erase_scale == (0.05, 0.3)


def test_random_erasing_is_a_recipe_setting_that_reaches_the_augmentation():
    r = apply_overrides(load_recipe("fashion-mnist"), ["erase=0.4", "erase_scale=[0.1, 0.2]", "erase_ratio=[0.5, 2]"])
    aug = r.augmentation()
    assert (aug.erase, aug.erase_scale, aug.erase_ratio) == (0.4, (0.1, 0.2), (0.5, 2.0))
    assert Recipe().augmentation().erase == 0.0  # off unless a recipe asks
    with pytest.raises(ValueError, match="erase is a probability"):
        Recipe(erase=2.0)
    with pytest.raises(ValueError, match="erase_scale needs two values"):
        Recipe(erase_scale=(0.1,))


def test_model_options_are_checked_when_the_recipe_is_read():
    with pytest.raises(ValueError, match=r"recipe 'mine': unknown model option\(s\) \['widht'\]"):
        Recipe.from_toml('[model]\nwidht = 0.5\n', "mine")
    with pytest.raises(ValueError, match="recipe 'mine': width must be in"):
        Recipe.from_toml('[model]\nwidth = 0\n', "mine")
    with pytest.raises(ValueError, match="unknown model 'xception99'"):
        Recipe.from_toml('[model]\nname = "xception99"\n', "mine")

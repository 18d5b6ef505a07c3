"""Mixup and CutMix: the mixed images and the mixed loss against direct computations, reproducible draws,
the recipe's checks, and a training run that mixes (its resume is covered by test_train_resume.py)."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xception.errors import ConfigError
from xception.train import Recipe
from xception.train.mixing import Mixed, Mixing, batch_generator, mix_batch


def batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 12, 10, generator=torch.Generator().manual_seed(seed))


def test_mixup_blends_each_image_with_its_partner_by_lambda():
    x = batch()
    given = x.clone()
    mixed = mix_batch(given, Mixing(mixup=0.4), batch_generator(0, 0, 0, 1))
    assert torch.equal(given, x), "the batch given is left as it was"
    assert mixed.partner is not None and 0.0 <= mixed.lam <= 1.0
    assert sorted(mixed.partner.tolist()) == list(range(6))
    expected = mixed.lam * x + (1.0 - mixed.lam) * x[mixed.partner]
    torch.testing.assert_close(mixed.images, expected)


def test_cutmix_pastes_one_box_of_the_partner_and_lambda_is_the_share_left():
    x = batch()
    for step in range(20):
        mixed = mix_batch(x.clone(), Mixing(cutmix=1.0), batch_generator(0, 0, 0, step))
        assert mixed.partner is not None
        pasted = mixed.images != x  # where the image changed (partners differ from the image almost surely)
        own = mixed.partner == torch.arange(6)
        box = pasted[~own].any(0).any(0) if (~own).any() else torch.zeros(12, 10, dtype=torch.bool)
        rows, cols = box.any(1).nonzero().flatten(), box.any(0).nonzero().flatten()
        area = 0 if len(rows) == 0 else (int(rows[-1] - rows[0]) + 1) * (int(cols[-1] - cols[0]) + 1)
        assert int(box.sum()) == area, "one rectangle"
        assert mixed.lam == pytest.approx(1.0 - area / 120)
        inside = box.expand_as(x[0])
        for i in range(6):
            j = int(mixed.partner[i])
            assert torch.equal(mixed.images[i][inside], x[j][inside])
            assert torch.equal(mixed.images[i][~inside], x[i][~inside])


def test_the_loss_weighs_both_labels_as_the_images_were_weighed():
    logits = torch.randn(6, 5, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    partner = torch.tensor([5, 4, 3, 2, 1, 0])
    lam = 0.3
    loss = Mixed(batch(), partner, lam).loss(logits, labels, label_smoothing=0.1)
    # The soft target λ·onehot(y) + (1 − λ)·onehot(y_pair), each smoothed, by the definition of cross-entropy.
    def smoothed(y: torch.Tensor) -> torch.Tensor:
        return F.one_hot(y, 5).double() * 0.9 + 0.1 / 5
    target = lam * smoothed(labels) + (1 - lam) * smoothed(labels[partner])
    expected = -(target * logits.double().log_softmax(1)).sum(1).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert Mixed(batch()).loss(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_draws_are_those_of_the_batch_not_of_the_global_random_state():
    x = batch()
    a = mix_batch(x.clone(), Mixing(mixup=0.2, cutmix=1.0), batch_generator(7, 1, 2, 30))
    torch.manual_seed(123)
    np.random.seed(5)
    b = mix_batch(x.clone(), Mixing(mixup=0.2, cutmix=1.0), batch_generator(7, 1, 2, 30))
    assert torch.equal(a.images, b.images) and torch.equal(a.partner, b.partner) and a.lam == b.lam
    c = mix_batch(x.clone(), Mixing(mixup=0.2, cutmix=1.0), batch_generator(7, 1, 2, 31))
    assert not torch.equal(a.images, c.images)


def test_with_both_on_each_mixed_batch_takes_one_and_mix_prob_leaves_the_rest_alone():
    x = batch()
    kinds = []
    for step in range(200):
        mixed = mix_batch(x.clone(), Mixing(mixup=0.4, cutmix=1.0, prob=0.5), batch_generator(0, 0, 0, step))
        if mixed.partner is None:
            assert torch.equal(mixed.images, x) and mixed.lam == 1.0
            kinds.append("none")
        else:
            changed = (mixed.images != x).any(0).any(0)  # which pixels changed in some image
            kinds.append("cutmix" if not changed.all() else "mixup")
    counts = {k: kinds.count(k) for k in ("none", "mixup", "cutmix")}
    # 200 draws at 1/2, 1/4, 1/4: each count lies well inside ±5 standard deviations.
    assert abs(counts["none"] - 100) < 5 * math.sqrt(50)
    assert abs(counts["mixup"] - 50) < 5 * math.sqrt(37.5) and abs(counts["cutmix"] - 50) < 5 * math.sqrt(37.5)
    off = mix_batch(x.clone(), Mixing(), batch_generator(0, 0, 0, 0))
    assert off.partner is None and torch.equal(off.images, x)


def test_the_mixing_weight_follows_beta_alpha_alpha():
    lams = [mix_batch(batch(), Mixing(mixup=0.4), batch_generator(1, 0, 0, s)).lam for s in range(2000)]
    # Beta(0.4, 0.4): mean 1/2, variance 1 / (4 (2α + 1)) = 1/7.2.
    assert statistics.fmean(lams) == pytest.approx(0.5, abs=0.03)
    assert statistics.variance(lams) == pytest.approx(1 / 7.2, rel=0.1)


@pytest.mark.parametrize("changes, message", [
    ({"mixup": -0.1}, "mixup is the α"), ({"cutmix": float("nan")}, "cutmix is the α"),
    ({"mix_prob": 1.5}, "mix_prob is a probability"),
])
def test_the_recipe_refuses_impossible_settings(changes, message):
    with pytest.raises(ConfigError, match=message):
        Recipe(**changes)


def test_a_stored_recipe_without_the_settings_reads_as_unmixed():
    stored = Recipe().to_dict()
    for name in ("mixup", "cutmix", "mix_prob"):
        del stored[name]
    recipe = Recipe.from_dict(stored)
    assert not recipe.mixing().on

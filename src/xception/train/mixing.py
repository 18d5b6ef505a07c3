"""Mixing pairs of training images within a batch: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019).

Each mixed batch pairs every image with another one of the same batch (a random permutation) and draws a
weight λ from Beta(α, α): mixup blends the two images, ``λ·x + (1 − λ)·x_pair``; CutMix pastes a box of the
pair into the image, the box covering a share 1 − λ of it (λ is then recomputed from the box as clipped by
the border). The loss weighs the two labels the same way: ``λ·CE(y) + (1 − λ)·CE(y_pair)``.

The draws come from a generator seeded by the run's seed, the process and the batch's place in the run, not
from the global random state: a resumed run mixes its batches exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError


@dataclass(frozen=True)
class Mixing:
    """How a batch is mixed. ``mixup`` and ``cutmix``: the α of their Beta(α, α) weight (0: off); ``prob``: the
    share of batches mixed; with both on, each mixed batch takes one of the two at random."""

    mixup: float = 0.0
    cutmix: float = 0.0
    prob: float = 1.0

    def __post_init__(self) -> None:
        for name, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)):
            if not (math.isfinite(alpha) and alpha >= 0.0):
                raise ConfigError(f"{name} is the α of a Beta(α, α) distribution: ≥ 0 (0: off), got {alpha}")
        if not 0.0 <= self.prob <= 1.0:
            raise ConfigError(f"mix_prob is a probability, got {self.prob}")

    @property
    def on(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.prob > 0


@dataclass
class Mixed:
    """A batch after mixing: the images, the partner of each image (None: not mixed) and the weight λ of
    each image's own label."""

    images: torch.Tensor
    partner: torch.Tensor | None = None
    lam: float = 1.0

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Cross-entropy against the labels mixed as the images were."""
        own = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
        if self.partner is None:
            return own
        other = F.cross_entropy(logits, labels[self.partner], label_smoothing=label_smoothing)
        return self.lam * own + (1.0 - self.lam) * other


def batch_generator(seed: int, rank: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of one batch's mixing: the same batch of the same run always mixes the same way."""
    return np.random.default_rng((seed, rank, epoch, batch))


def mix_batch(images: torch.Tensor, mixing: Mixing, generator: np.random.Generator) -> Mixed:
    """``images`` (N, C, H, W) mixed as ``mixing`` says (a new tensor), or as they are."""
    n = images.shape[0]
    if not mixing.on or n < 2 or generator.random() >= mixing.prob:
        return Mixed(images)
    use_cutmix = mixing.cutmix > 0 and (mixing.mixup <= 0 or generator.random() < 0.5)
    alpha = mixing.cutmix if use_cutmix else mixing.mixup
    lam = float(generator.beta(alpha, alpha))
    partner = torch.from_numpy(generator.permutation(n)).to(images.device)
    if not use_cutmix:
        return Mixed(images * lam + images[partner] * (1.0 - lam), partner, lam)
    h, w = images.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    box_h, box_w = round(h * cut), round(w * cut)
    cy, cx = int(generator.integers(h)), int(generator.integers(w))
    top, bottom = max(cy - box_h // 2, 0), min(cy + (box_h - box_h // 2), h)
    left, right = max(cx - box_w // 2, 0), min(cx + (box_w - box_w // 2), w)
    mixed = images.clone()
    mixed[..., top:bottom, left:right] = images[partner, ..., top:bottom, left:right]  # the box alone is gathered
    return Mixed(mixed, partner, 1.0 - (bottom - top) * (right - left) / (h * w))

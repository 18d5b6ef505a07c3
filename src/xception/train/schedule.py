"""Learning-rate schedules as pure functions of the (fractional) epoch: easy to test, plot and resume."""

from __future__ import annotations

import math

from .recipe import Recipe


def lr_at(recipe: Recipe, epoch: float, peak_lr: float | None = None) -> float:
    """The learning rate after ``epoch`` epochs (fractions allowed: the schedule advances every step).

    * ``step``: ``lr × decay_rate ** floor(epoch / decay_epochs)`` (the paper: 0.045 × 0.94 every 2 epochs);
    * ``cosine``: half a cosine from ``lr`` down to ``min_lr`` at the last epoch;
    * ``constant``: ``lr``.

    A linear warm-up from 0 over the first ``warmup_epochs`` comes first in every schedule (the decay
    counts from the start of training, not from the end of the warm-up). ``peak_lr`` replaces
    ``recipe.lr``, e.g. after batch-size scaling.
    """
    lr = recipe.lr if peak_lr is None else peak_lr
    if recipe.warmup_epochs > 0 and epoch < recipe.warmup_epochs:
        return lr * epoch / recipe.warmup_epochs
    if recipe.schedule == "step":
        return lr * recipe.decay_rate ** math.floor(epoch / recipe.decay_epochs + 1e-9)
    if recipe.schedule == "cosine":
        span = max(recipe.epochs - recipe.warmup_epochs, 1e-9)
        progress = min(max((epoch - recipe.warmup_epochs) / span, 0.0), 1.0)
        floor = recipe.min_lr * (lr / recipe.lr)
        return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return lr

"""Validation of a run: the evaluation model's loss, top-1 and top-5 on the whole validation set, counted as
:mod:`xception.evaluate` counts, and the warning when it sits at chance while training accuracy does not."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from ..data import Batches
from ..distributed import all_reduce_sum
from ..evaluate import Counts, count_batches  # validation counts exactly as evaluation does
from .run import Run, _say


def validate(run: Run, *, progress: bool = False) -> dict[str, float]:
    """Loss, top-1 and top-5 of the run's evaluation model (the EMA's when averaging) on the whole
    validation set, counted as :mod:`xception.evaluate` counts and summed over the processes (every
    process calls it); ``{}`` when the run has no validation set. :func:`~xception.train.loop.end_epoch` first
    recomputes the BatchNorm statistics when the recipe's ``precise_bn`` says so
    (:mod:`xception.train.precise_bn`)."""
    return validation_metrics(validation_counts(run, progress=progress))


def validation_counts(run: Run, *, progress: bool = False) -> Counts | None:
    """The evaluation model's counts on the whole validation set, over all processes (None: no such set)."""
    if run.data.val_batches is None:
        return None
    state = run.state
    model = state.ema.module if state.ema is not None else state.model
    return count_batches(
        model, _whole_epoch(run.data.val_batches), len(state.class_names), device=run.compute.device,
        autocast=run.compute.autocast, channels_last=run.compute.channels_last, on_skipped=state.skipped.add,
        progress=progress and run.world.is_main, desc="validating", total=len(run.data.val_batches),
    ).all_reduce(all_reduce_sum)


def validation_metrics(counts: Counts | None) -> dict[str, float]:
    if counts is None:
        return {}
    return {"val_loss": counts.loss, "val_top1": counts.top1, "val_top5": counts.top5}


def warn_at_chance(run: Run, record: dict[str, Any], counts: Counts | None, recomputed: bool) -> None:
    """One line on stderr when validation sits at chance while training accuracy is well above it: what
    it means and what to try. Chance is always answering the largest validation class (1 / classes when
    balanced); "at" it is within two standard deviations of a guess's accuracy on that many images, "well
    above" it is more than half-way from chance to 100 %."""
    if counts is None or counts.total == 0 or counts.num_classes < 2:
        return
    chance = int(counts.confusion.sum(1).max()) / counts.total
    noise = math.sqrt(chance * (1 - chance) / counts.total)
    top1, train_acc = record["val_top1"], record["train_acc"]
    if top1 > chance + 2 * noise or train_acc < chance + (1 - chance) / 2:
        return
    if recomputed or run.recipe.precise_bn == "on":
        advice = ("the model fits the training images without learning what tells the classes apart: try more "
                  "images per class, pretrained --weights, stronger augmentation or fewer epochs, and check that "
                  "the validation images are labelled as the training ones are")
    else:
        advice = ("the BatchNorm statistics used in evaluation may not describe the trained weights (they "
                  "settle over about 100 updates): try --set precise_bn=on, which measures them on training "
                  "batches; if it stays at chance, more images per class or pretrained --weights")
    _say(run.world, f"warning: validation top-1 {100 * top1:.2f} % is at chance ({100 * chance:.2f} %) while "
                    f"training accuracy is {100 * train_acc:.2f} %: {advice}", bar_safe=True)


def _whole_epoch(batches: Batches) -> Iterator[Any]:
    batches.set_epoch(0)
    yield from batches

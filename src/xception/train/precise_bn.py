"""Precise BatchNorm statistics: measured for the weights that are evaluated, from training batches.

In eval mode a BatchNorm layer normalises with running averages of the batch statistics training saw,
``running = (1 − m)·running + m·batch`` per update (PyTorch's momentum ``m``, 0.1 by default). Those
describe the weights being evaluated only once the averages have forgotten where they started: after
``n`` updates ``(1 − m)ⁿ`` of the initial values (mean 0, variance 1) remain, and the rest comes from
weights that have moved on since. A short run on a small dataset ends before that: 16 updates leave 19 %
of the initial variance of 1 in layers whose activations vary far less, so the deepest layers' running
variance is tens of times their real one, every input is squashed to the same output, and validation sits
at chance while training accuracy climbs. An EMA of the weights doubles the problem: its buffers are
averages of those running averages, for weights it never ran.

:func:`recompute_batchnorm` measures the statistics instead (Wu & Johnson 2021, "precise BN"): forward
passes over training batches with the BatchNorm layers in train mode (everything else in eval mode: no
dropout, no random numbers drawn), no gradients, each layer averaging the batches' means and unbiased
variances with equal weight (momentum ``1 / k`` for the k-th batch: the cumulative average of
``momentum=None``, set explicitly so that synchronised BatchNorm layers average the same way).

:func:`update_statistics` does it for a training run when its recipe's ``precise_bn`` says so: always
(``on``) or while the running statistics cannot have settled (``auto``; :func:`settle_updates`), from at
most ``precise_bn_images`` images of the epoch just trained, in the same order and with the same
augmentation, so a resumed run recomputes exactly what an uninterrupted one did.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..distributed import all_reduce_sum

if TYPE_CHECKING:
    from .recipe import Recipe
    from .run import Run

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
SETTLED = 10.0  # updates × momentum after which (1 − m)ⁿ ≈ e⁻¹⁰ of the start remains: settled


def settle_updates(norms: Sequence[nn.Module], ema_decay: float = 0.0) -> float:
    """Updates after which the running statistics of ``norms`` describe the weights that made them:
    ``10 / momentum`` (100 at PyTorch's 0.1), ``inf`` for a cumulative average (``momentum=None``). With an
    EMA of the weights (``ema_decay`` > 0) twice that: the EMA's warm-up, ``min(d, (1 + n) / (10 + n))``,
    keeps about 0.1 % of what it averaged over the first half of the run, so its buffers settle once the
    model's have been settled for as long again."""
    momenta = [getattr(m, "momentum", None) for m in norms]
    if not momenta:
        return 0.0
    if any(not m for m in momenta):
        return math.inf
    updates = SETTLED / min(float(m) for m in momenta if m)
    return 2 * updates if ema_decay > 0 else updates


def statistics_due(recipe: Recipe, step: int, norms: Sequence[nn.Module]) -> bool:
    """Whether the recipe recomputes the statistics of ``norms`` after ``step`` updates: ``precise_bn`` on,
    or auto while they cannot have settled."""
    if not norms or recipe.precise_bn == "off":
        return False
    return recipe.precise_bn == "on" or step < settle_updates(norms, recipe.ema_decay)


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, batches: Iterable[torch.Tensor], norms: Sequence[nn.Module] | None = None, *,
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    average: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> int:
    """Replace the running statistics of ``norms`` (default: every BatchNorm layer of ``model``) by the
    average over ``batches`` (input tensors) of each batch's mean and unbiased variance, as the layers see
    them in train mode. The other layers run in eval mode; every module's mode, each layer's momentum and
    batch counter are as they were afterwards. ``average``: makes a tensor the mean over the processes of a
    data-parallel job (each process measured its own batches). Returns the number of batches measured; with
    none, the statistics stay as they were."""
    norms = [m for m in (model.modules() if norms is None else norms) if _tracks(m)]
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    kept = [(m.momentum, m.num_batches_tracked.clone(), m.running_mean.clone(), m.running_var.clone())
            for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.train()
    measured = 0
    try:
        for images in batches:
            for m in norms:
                m.momentum = 1.0 / (measured + 1)  # cumulative average: every batch counts the same
            with autocast() if autocast is not None else contextlib.nullcontext():
                model(images)
            measured += 1
    finally:
        for m, (momentum, tracked, mean, var) in zip(norms, kept, strict=True):
            m.momentum = momentum
            m.num_batches_tracked.copy_(tracked)
            if measured == 0:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
        for module, training in modes.items():
            module.train(training)
    if average is not None and measured:
        for m in norms:
            for buffer in (m.running_mean, m.running_var):
                buffer.copy_(average(buffer))
    return measured


def trained_norms(trained: nn.Module, evaluated: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``evaluated`` (the model itself or its EMA copy) whose counterparts in
    ``trained`` are in train mode: the ones training updated. Layers kept in eval mode (``freeze_bn``, a
    frozen backbone) keep the statistics they came with."""
    training = {name for name, m in trained.named_modules() if _tracks(m) and m.training}
    return [m for name, m in evaluated.named_modules() if _tracks(m) and name in training]


def _tracks(module: nn.Module) -> bool:
    """A BatchNorm layer that keeps running statistics."""
    return isinstance(module, NORMS) and module.track_running_stats


def update_statistics(run: Run) -> bool:
    """Recompute the BatchNorm statistics of ``run``'s evaluated weights (the EMA's when averaging) when its
    recipe says so (:func:`statistics_due`), from the epoch just trained: at most ``precise_bn_images``
    images over all processes, in that epoch's order and augmentation. Call it where the epoch ends, before
    validating (every process, as the model is still in the modes training set). Returns whether it did."""
    state, recipe, compute = run.state, run.recipe, run.compute
    evaluated = state.ema.module if state.ema is not None else state.model
    norms = trained_norms(state.model, evaluated)
    if not statistics_due(recipe, state.step, norms):
        return False
    batches = run.data.train_batches
    limit = math.ceil(recipe.precise_bn_images / (recipe.batch_size * run.world.world_size))
    batches.set_epoch(state.epoch)  # the epoch's batches again; training sets its position itself
    inputs = (images.to(compute.dtype, memory_format=compute.layout)
              for images, labels, _ in itertools.islice(batches, limit) if len(labels))
    size = run.world.world_size

    def average(tensor: torch.Tensor) -> torch.Tensor:
        return all_reduce_sum(tensor.clone()) / size

    return recompute_batchnorm(evaluated, inputs, norms, autocast=compute.autocast,
                               average=average if run.world.distributed else None) > 0

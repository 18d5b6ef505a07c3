"""Polyak averaging: an exponential moving average (EMA) of the weights, used for evaluation."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ConfigError


class ModelEma(nn.Module):
    """A copy of a model whose weights follow ``ema = d·ema + (1 − d)·weights`` after each update.

    Early on the average would be dominated by the random initialisation, so the decay ramps up as
    ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates (TensorFlow's ``num_updates`` rule). BatchNorm
    running statistics are averaged too, as TensorFlow's Inception training did, so they stay consistent
    with the averaged weights.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ConfigError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.updates)
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        ema_state = self.module.state_dict()
        averaged: list[torch.Tensor] = []
        current: list[torch.Tensor] = []
        for name, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(ema_state[name])
                current.append(value.detach())
            else:
                ema_state[name].copy_(value)  # counters such as BatchNorm's num_batches_tracked
        torch._foreach_lerp_(averaged, current, 1.0 - d)
        self.updates += 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

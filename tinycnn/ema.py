"""The exponential moving average of a model's weights (train.ema_decay)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    """A frozen copy of the model that update_ema moves towards its weights."""
    return copy.deepcopy(model).eval().requires_grad_(False)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model after optimisation step ``step`` (1-based).

    d = min(decay, (1 + step) / (10 + step)): early on the average follows the weights closely
    (the num_updates warm-up of TensorFlow's ExponentialMovingAverage), so a short run's EMA is
    not stuck near the initialisation. Buffers (batch norm statistics) are copied, not averaged.
    """
    d = min(decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1 - d)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)

"""The exponential moving average of a model's weights (train.ema_decay)."""

from __future__ import annotations

import copy

import numpy as np
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
    not stuck near the initialisation. Buffers (batch norm statistics) are copied, not averaged:
    they are recomputed for the EMA's weights where it is used (Session.model_for_use).
    """
    d = min(decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1 - d)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def ema_bn_rows(count: int, wanted: int, seed: int) -> torch.Tensor:
    """The training rows (sorted) whose views recompute an EMA's batch-norm statistics: the
    same at every point of a run, drawn from its seed without touching the training's RNG."""
    rows = np.random.default_rng(seed).choice(count, min(wanted, count), replace=False)
    return torch.from_numpy(np.sort(rows))


def has_batch_norm(model: nn.Module) -> bool:
    """Whether the model has statistics to recompute for an EMA (batch norm layers)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())

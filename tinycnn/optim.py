"""Optimisers: the paper's classical momentum, Nesterov, AdaGrad, AdamW, and their parameter
groups; the learning rate each step sets comes from schedule.py (a function of the iteration,
so resuming mid-epoch reproduces it with no scheduler state to save)."""

from __future__ import annotations

import torch
from torch import nn

from tinycnn.config import OptimConfig


class ClassicalMomentumSGD(torch.optim.Optimizer):
    """SGD with the paper's (and Caffe's) momentum: v <- mu v - lr (g + lambda w); w <- w + v.

    Unlike torch.optim.SGD (v <- mu v + g; w <- w - lr v), the learning rate sits inside the
    velocity, so a learning-rate drop takes effect gradually, as in the paper's runs.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # the class docstring gives the rule
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            velocities = []
            for p in params:
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                velocities.append(state["velocity"])
            torch._foreach_mul_(velocities, group["momentum"])
            torch._foreach_add_(velocities, grads, alpha=-group["lr"])
            torch._foreach_add_(params, velocities)
        return loss


def _param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Parameter groups by (decayed?, learning-rate multiplier); empty groups left out.

    A group's ``lr_scale`` multiplies the schedule's learning rate (set_lr): biases get
    cfg.bias_lr_multiplier, as Caffe's ``lr_mult: 2`` on a bias blob. Biases are the parameters
    named ``*.bias`` (batch norm's shift included); weight decay spares every 1-d parameter
    (biases, BN, PReLU) when cfg.decay_bias_and_norm is false.
    """
    groups: dict[tuple[bool, float], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decayed = cfg.decay_bias_and_norm or p.ndim > 1
        is_bias = name == "bias" or name.endswith(".bias")
        lr_scale = cfg.bias_lr_multiplier if is_bias else 1.0
        groups.setdefault((decayed, lr_scale), []).append(p)
    return [
        {"params": params, "lr_scale": lr_scale} | ({} if decayed else {"weight_decay": 0.0})
        # weights first: group 0's lr is the schedule's own (the logged lr)
        for (decayed, lr_scale), params in sorted(groups.items(), key=_weights_first)
    ]


def _weights_first(item: tuple[tuple[bool, float], list]) -> tuple[bool, bool]:
    (decayed, lr_scale), _ = item
    return not decayed, lr_scale != 1.0


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser named by cfg.name over the model's trainable parameters."""
    groups = _param_groups(model, cfg)
    if cfg.name == "sgd":
        return ClassicalMomentumSGD(groups, cfg.lr, cfg.momentum, cfg.weight_decay)
    if cfg.name == "nesterov":
        return torch.optim.SGD(
            groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay
        )
    if cfg.name == "adagrad":
        return torch.optim.Adagrad(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to lr times its ``lr_scale`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

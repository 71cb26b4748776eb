"""Optimisers (the paper's classical momentum, Nesterov, AdaGrad, AdamW) and LR schedules.

Schedules are plain functions of the iteration number, so resuming mid-epoch reproduces the
learning rate exactly with no scheduler state to save.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tinycnn.config import OptimConfig, ScheduleConfig


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


def lr_at(
    iteration: int, iters_per_epoch: int, total_iters: int, base_lr: float, cfg: ScheduleConfig
) -> float:
    """Learning rate for one iteration (0-based) of a run of total_iters iterations."""
    warmup = round(cfg.warmup_epochs * iters_per_epoch)
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "step":
        step = max(1, round(cfg.step_epochs * iters_per_epoch))
        return base_lr * cfg.gamma ** (iteration // step)
    floor = base_lr * cfg.final_lr_fraction
    if cfg.name == "cyclic":
        start = warmup
        for end in cycle_ends(iters_per_epoch, total_iters, cfg):
            if iteration < end:
                break
            start = end
        progress = min(1.0, (iteration - start) / max(1, end - start))
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    progress = min(1.0, (iteration - warmup) / max(1, total_iters - warmup))
    if cfg.name == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (base_lr - floor) * (1 - progress)  # onecycle: warm-up, then linear to floor


def cycle_ends(iters_per_epoch: int, total_iters: int, cfg: ScheduleConfig) -> list[int]:
    """Iteration counts at which a cyclic schedule's cycles end (the last is total_iters).

    The iterations after the warm-up are split into cfg.cycles cycles as evenly as whole
    iterations allow; a schedule that is not cyclic is one cycle. Snapshots are taken once an
    end's iteration is done.
    """
    warmup = min(round(cfg.warmup_epochs * iters_per_epoch), total_iters)
    cycles = cfg.cycles if cfg.name == "cyclic" else 1
    return [warmup + round((k + 1) * (total_iters - warmup) / cycles) for k in range(cycles)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to lr times its ``lr_scale`` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)

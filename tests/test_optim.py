"""optim.py: each optimiser follows the rule its name stands for, with its parameter groups."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import StepWatch, small_config
from tinycnn.optim import ClassicalMomentumSGD
from tinycnn.training import train


def _reference_step(name: str, state: dict, w, g, lr: float, decay: float, o) -> torch.Tensor:
    """One update of one parameter by the rule the optimiser's name stands for."""
    t = state["t"] = state.get("t", 0) + 1
    if name == "adamw":  # decoupled: the decay shrinks w, it is not part of the gradient
        w = w * (1 - lr * decay)
        b1, b2 = o["betas"]
        m = state["m"] = b1 * state.get("m", 0) + (1 - b1) * g
        v = state["v"] = b2 * state.get("v", 0) + (1 - b2) * g * g
        return w - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + o["eps"])
    d = g + decay * w  # coupled L2
    if name == "sgd":  # the paper's classical momentum: v <- mu v - lr d; w <- w + v
        v = state["v"] = o["momentum"] * state.get("v", 0) - lr * d
        return w + v
    if name == "nesterov":  # b <- mu b + d; w <- w - lr (d + mu b)
        b = state["b"] = o["momentum"] * state["b"] + d if "b" in state else d
        return w - lr * (d + o["momentum"] * b)
    assert name == "adagrad"  # s <- s + d^2; w <- w - lr d / (sqrt(s) + eps)
    s = state["s"] = state.get("s", 0) + d * d
    return w - lr * d / (s.sqrt() + o["eps"])


@pytest.mark.parametrize(
    ("name", "decay_all", "bias_lr"),
    [
        ("sgd", True, 1.0),
        ("sgd", False, 1.0),
        ("sgd", True, 2.0),  # Caffe's lr_mult 2 on biases
        ("sgd", False, 2.0),
        ("nesterov", True, 1.0),
        ("adagrad", True, 1.0),
        ("adagrad", True, 0.5),
        ("adamw", True, 1.0),
        ("adamw", False, 1.0),
    ],
)
def test_the_optimiser_follows_the_rule_its_name_stands_for(
    cache: Path, tmp_path: Path, name: str, decay_all: bool, bias_lr: float
) -> None:
    # Values unlike the defaults, so that each must reach the optimiser; the learning rate halves
    # every iteration, which tells the paper's momentum from torch.optim.SGD's. Biases (the 1-d
    # parameters of this model, which has no batch norm) learn at bias_lr times the rate.
    lr, decay = 0.05, 0.02
    options = {"momentum": 0.8, "betas": [0.8, 0.95], "eps": 1e-3}
    cfg = small_config(
        cache,
        "train.epochs=1",
        'train.precision="fp32"',
        f'optim.name="{name}"',
        f"optim.lr={lr}",
        f"optim.weight_decay={decay}",
        f"optim.decay_bias_and_norm={str(decay_all).lower()}",
        f"optim.bias_lr_multiplier={bias_lr}",
        f"optim.momentum={options['momentum']}",
        f"optim.betas={options['betas']}",
        f"optim.eps={options['eps']}",
        'schedule.name="step"',
        "schedule.step_epochs=0.34",  # 1 iteration of 3
        "schedule.gamma=0.5",
    )
    with StepWatch() as watch:
        result = train(cfg, tmp_path / "run", progress=False)
    trainable = [p for p in result.model.parameters() if p.requires_grad]
    assert len(watch.steps) == 3
    assert sorted(map(id, watch.steps[0]["params"])) == sorted(map(id, trainable))
    states: dict[int, dict] = {}
    for i, step in enumerate(watch.steps):
        step_lr = lr * 0.5**i
        assert step["lr"][0] == pytest.approx(step_lr)  # the weights' group: the logged lr
        for p, w, g, after in zip(step["params"], step["w"], step["g"], step["after"], strict=True):
            p_decay = decay if decay_all or p.ndim > 1 else 0.0  # biases are 1-d
            p_lr = step_lr * (bias_lr if p.ndim == 1 else 1.0)
            expected = _reference_step(
                name, states.setdefault(id(p), {}), w, g, p_lr, p_decay, options
            )
            assert torch.allclose(after, expected, rtol=1e-5, atol=1e-7), (name, i, p.shape)


def test_classical_momentum_follows_the_papers_rule() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = ClassicalMomentumSGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    v = torch.zeros(2)
    expected = w.detach().clone()
    for lr in (0.1, 0.1, 0.01):  # a learning-rate drop acts through the velocity
        optimizer.param_groups[0]["lr"] = lr
        w.grad = torch.tensor([0.5, 0.25])
        optimizer.step()
        v = 0.9 * v - lr * (torch.tensor([0.5, 0.25]) + 0.01 * expected)
        expected = expected + v
        assert torch.allclose(w.detach(), expected)

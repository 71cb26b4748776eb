"""What ``train`` builds is what the config names: checked on what the model and optimiser see.

Each test watches a real (tiny) run through hooks and compares it with a truth written here: the
normalised pixels of the first layer's input, the optimiser's update rule applied to the observed
gradients, the label-smoothed loss of the observed logits, the split best.pt was chosen on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import tinycnn.session
from tests.helpers import FP32, StepWatch, normalised, small_config
from tinycnn.checkpoint import load_checkpoint, model_from_checkpoint
from tinycnn.data.cache import load_cache
from tinycnn.data.splits import holdout_split
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate
from tinycnn.training import read_metrics, train

# Whole 64x64 images, no mirror, no photometric noise: every input the model sees is one
# training image, normalised, so it can be recognised and checked pixel by pixel.
WHOLE_IMAGES = ["augment.crop=0", "augment.flip=false", 'train.precision="fp32"']


class Watch:
    """Records the first layer's inputs and the model's outputs during a run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[tuple[bool, torch.Tensor]] = []  # (training, (B, 3, H, W))
        self.outputs: list[tuple[bool, torch.Tensor]] = []  # (training, (B, C) logits)
        original = tinycnn.session.build_model

        def build_and_watch(*args, **kwargs):
            model = original(*args, **kwargs)
            first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            first.register_forward_pre_hook(
                lambda m, inputs: self.inputs.append((m.training, inputs[0].detach().clone()))
            )
            model.register_forward_hook(
                lambda m, _, out: self.outputs.append((m.training, out.detach().float().clone()))
            )
            return model

        monkeypatch.setattr(tinycnn.session, "build_model", build_and_watch)


def _match(seen: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each seen input (B, 3, H, W), the index of the candidate it equals; fails otherwise."""
    diff = (seen[:, None] - candidates[None]).abs().flatten(2).amax(dim=2)  # (B, N)
    closest = diff.min(dim=1)
    assert bool((closest.values < 1e-3).all()), f"inputs differ by {closest.values.max():.3g}"
    return closest.indices


@pytest.mark.parametrize("kind", ["mean_image", "channel", "none"])
def test_the_first_layer_sees_the_configured_normalisation(
    cache: Path, tmp_path: Path, monkeypatch, kind: str
) -> None:
    watch = Watch(monkeypatch)
    cfg = small_config(cache, *WHOLE_IMAGES, "train.epochs=1", f'data.normalization="{kind}"')
    train(cfg, tmp_path / "run", progress=False)
    data = load_cache(cache)
    expected = {
        True: normalised(data.split("train").images, kind, cache),
        False: normalised(data.split("val").images, kind, cache),
    }
    assert {training for training, _ in watch.inputs} == {True, False}
    for training, seen in watch.inputs:  # training batches, then the val evaluation
        _match(seen, expected[training])
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert payload["normalization"]["kind"] == kind  # what evaluation will apply


def test_label_smoothing_is_in_the_training_loss(cache: Path, tmp_path: Path, monkeypatch) -> None:
    eps = 0.3
    watch = Watch(monkeypatch)
    cfg = small_config(cache, *WHOLE_IMAGES, "train.epochs=1", f"optim.label_smoothing={eps}")
    train(cfg, tmp_path / "run", progress=False)
    split = load_cache(cache).split("train")
    candidates = normalised(split.images, "channel", cache)
    inputs = [x for training, x in watch.inputs if training]
    outputs = [y for training, y in watch.outputs if training]
    losses = []
    for x, logits in zip(inputs, outputs, strict=True):
        labels = torch.from_numpy(split.labels.astype(np.int64))[_match(x, candidates)]
        log_p = logits.log_softmax(dim=1)
        nll = -log_p.gather(1, labels[:, None]).squeeze(1)
        losses.append(((1 - eps) * nll + eps * -log_p.mean(dim=1)).mean().item())
    assert len(losses) == 3  # 60 images, batches of 16
    assert read_metrics(tmp_path / "run")[0]["train_loss"] == pytest.approx(
        sum(losses) / len(losses), rel=1e-5
    )


def test_label_smoothing_stays_out_of_the_logged_val_and_tune_loss(
    cache: Path, tmp_path: Path
) -> None:
    # Smoothing is a training objective; the logged val_loss and tune_loss are the plain
    # cross-entropy -log p(label) of the saved model, computed here on the centre crop.
    eps = 0.3
    cfg = small_config(
        cache,
        "train.epochs=3",
        'train.precision="fp32"',
        "data.holdout_per_class=2",
        f"optim.label_smoothing={eps}",
    )
    train(cfg, tmp_path / "run", progress=False)
    row = read_metrics(tmp_path / "run")[-1]
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pt"
    model = model_from_checkpoint(load_checkpoint(checkpoint)).eval()
    data = load_cache(cache)
    _, tune_rows = holdout_split(data.split("train").labels, 2, cfg.data.holdout_seed)
    splits = {
        "val": (data.split("val").images, data.split("val").labels),
        "tune": (data.split("train").images[tune_rows], data.split("train").labels[tune_rows]),
    }
    for name, (images, labels) in splits.items():
        x = normalised(images, "channel", cache)[:, :, 4:60, 4:60]  # the 56x56 centre
        with torch.no_grad():
            log_p = model(x.contiguous()).log_softmax(dim=1)
        labels = torch.from_numpy(labels.astype(np.int64))
        nll = -log_p[torch.arange(len(labels)), labels]
        smoothed = ((1 - eps) * nll + eps * -log_p.mean(dim=1)).mean().item()
        plain = nll.mean().item()
        # The case must tell the two losses apart, far beyond the tolerance below.
        assert abs(smoothed - plain) > 1e-3 * plain, name
        assert row[f"{name}_loss"] == pytest.approx(plain, rel=1e-5), name
        (evaluation,) = evaluate(checkpoint, cache, split=name, runtime=FP32)
        assert evaluation.loss == pytest.approx(plain, rel=1e-5), name


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


def test_clip_grad_norm_rescales_the_whole_gradient_to_its_bound(
    cache: Path, tmp_path: Path
) -> None:
    # The first step's gradient (same weights, same batch in both runs) reaches the optimiser
    # as g * bound / |g| when |g| exceeds the bound, and unchanged when it does not.
    def first_gradient(clip: float, name: str) -> list[torch.Tensor]:
        cfg = small_config(
            cache, "train.epochs=1", 'train.precision="fp32"', f"optim.clip_grad_norm={clip}"
        )
        with StepWatch() as watch:
            train(cfg, tmp_path / name, progress=False)
        return watch.steps[0]["g"]

    plain = first_gradient(0.0, "plain")
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in plain])).item()
    bound = norm / 4
    clipped = first_gradient(bound, "clipped")
    for g, c in zip(plain, clipped, strict=True):
        assert torch.allclose(c, g * bound / norm, rtol=1e-4, atol=1e-9)
    loose = first_gradient(norm * 2, "loose")
    for g, c in zip(plain, loose, strict=True):
        assert torch.equal(c, g)


def test_best_checkpoint_is_chosen_on_the_tuning_split(
    disagreeing_cache: Path, tmp_path: Path
) -> None:
    cfg = small_config(disagreeing_cache, "train.epochs=6", "data.holdout_per_class=2")
    train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")

    def first_best(key: str) -> dict:
        return min(rows, key=lambda r: (r[key], r["iteration"]))  # ties: the earlier epoch

    by_tune, by_val = first_best("tune_top1_error"), first_best("val_top1_error")
    assert by_tune["iteration"] != by_val["iteration"], "the case must tell the splits apart"
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert best["iteration"] == by_tune["iteration"]
    assert best["best_error"] == by_tune["tune_top1_error"]


def test_best_checkpoint_after_a_resume_is_still_chosen_on_the_tuning_split(
    disagreeing_cache: Path, tmp_path: Path
) -> None:
    # Stopped after epoch 4 and resumed: the resume rebuilds the best from the metrics log, and
    # must rebuild it on tune, as the uninterrupted run chose it. The truth is the log's tune
    # column: best.pt is its first lowest row, and each checkpoint remembers the lowest tune
    # error up to and including it.
    cfg = small_config(disagreeing_cache, "train.epochs=6", "data.holdout_per_class=2")
    run = tmp_path / "run"
    assert train(cfg, run, progress=False, stop_at_iteration=12).stopped == "interrupted"
    before = read_metrics(run)
    assert [r["iteration"] for r in before] == [3, 6, 9, 12]

    def first_best(rows: list[dict], key: str) -> dict:
        return min(rows, key=lambda r: (r[key], r["iteration"]))  # ties: the earlier epoch

    by_tune, by_val = first_best(before, "tune_top1_error"), first_best(before, "val_top1_error")
    assert by_tune["iteration"] != by_val["iteration"], "the case must tell the splits apart"
    assert by_tune["tune_top1_error"] != by_val["val_top1_error"]
    # One step past the resume point, then stopped again: what the resume rebuilt, whatever the
    # epochs after it do.
    train(None, run, resume=True, progress=False, stop_at_iteration=13)
    assert (
        load_checkpoint(run / "checkpoints" / "last.pt")["best_error"]
        == (by_tune["tune_top1_error"])
    )
    assert load_checkpoint(run / "checkpoints" / "best.pt")["iteration"] == by_tune["iteration"]
    train(None, run, resume=True, progress=False)
    rows = read_metrics(run)
    assert [r["iteration"] for r in rows] == [3, 6, 9, 12, 15, 18]
    for k, row in enumerate(rows):
        payload = load_checkpoint(run / "checkpoints" / f"epoch-{row['epoch']:03d}.pt")
        best_so_far = min(r["tune_top1_error"] for r in rows[: k + 1])
        assert payload["best_error"] == best_so_far, row["epoch"]
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["iteration"] == first_best(rows, "tune_top1_error")["iteration"]


def test_tensorboard_gets_every_logged_number(cache: Path, tmp_path: Path) -> None:
    # The test extra installs tensorboard, so this branch runs in CI.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(
        small_config(cache, "train.tensorboard=true", "train.epochs=2"),
        tmp_path / "r",
        progress=False,
    )
    events = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    events.Reload()
    rows = read_metrics(tmp_path / "r")
    for key in ("val_top1_error", "val_top5_error", "train_loss", "lr"):
        logged = [(e.step, e.value) for e in events.Scalars(key)]
        assert logged == [(r["iteration"], pytest.approx(r[key], rel=1e-6)) for r in rows], key


def test_tensorboard_missing_is_one_clear_error(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        train(small_config(cache, "train.tensorboard=true"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()

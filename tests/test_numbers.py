"""Reported numbers from small hand-made cases: schedules, ensemble averages, greedy selection.

Fast (no training): these are the tests the mutation run (CONTRIBUTING.md) leans on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tinycnn.config import ScheduleConfig
from tinycnn.data.augment import center_crop, ten_crop
from tinycnn.data.normalization import Normalization
from tinycnn.ensembles import average, greedy_select
from tinycnn.errors import ConfigError
from tinycnn.metrics import error_rates, per_class_accuracy
from tinycnn.schedule import cycle_ends, lr_at

# (schedule options, iteration, iterations per epoch, total iterations, expected lr for lr 1.0)
SCHEDULES = [
    ({"name": "constant"}, 57, 10, 100, 1.0),
    ({"name": "constant", "warmup_epochs": 1}, 4, 10, 100, 0.5),  # warm-up: (4 + 1) / 10
    ({"name": "constant", "warmup_epochs": 1}, 10, 10, 100, 1.0),
    ({"name": "step", "step_epochs": 1, "gamma": 0.5}, 9, 10, 100, 1.0),
    ({"name": "step", "step_epochs": 1, "gamma": 0.5}, 10, 10, 100, 0.5),
    ({"name": "step", "step_epochs": 1, "gamma": 0.5}, 35, 10, 100, 0.125),
    ({"name": "step", "step_epochs": 0.05, "gamma": 0.5}, 2, 10, 100, 0.25),  # < 1 it.: every it.
    # The step schedule behind a warm-up (the paper's shape, made to start): 5 warm-up
    # iterations of 10 an epoch climb (i + 1) / 5; the steps still fall at whole step_epochs.
    ({"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0.5}, 0, 10, 100, 0.2),
    ({"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0.5}, 3, 10, 100, 0.8),
    ({"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0.5}, 4, 10, 100, 1.0),
    ({"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0.5}, 19, 10, 100, 1.0),
    ({"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0.5}, 20, 10, 100, 0.1),
    ({"name": "step", "step_epochs": 2, "gamma": 0.1, "warmup_epochs": 0.5}, 45, 10, 100, 0.01),
    ({"name": "cosine", "final_lr_fraction": 0.1}, 0, 10, 100, 1.0),
    ({"name": "cosine", "final_lr_fraction": 0.1}, 50, 10, 100, 0.1 + 0.9 * 0.5),
    ({"name": "cosine", "final_lr_fraction": 0.1}, 25, 10, 100, 0.1 + 0.9 * (1 + 2**-0.5) / 2),
    ({"name": "cosine", "final_lr_fraction": 0.1}, 150, 10, 100, 0.1),  # past the end: the floor
    ({"name": "cosine", "warmup_epochs": 1}, 60, 10, 110, 0.5),  # half-way after the warm-up
    ({"name": "onecycle", "warmup_epochs": 1, "final_lr_fraction": 0.1}, 9, 10, 110, 1.0),
    ({"name": "onecycle", "warmup_epochs": 1, "final_lr_fraction": 0.1}, 60, 10, 110, 0.55),
    ({"name": "onecycle", "warmup_epochs": 1, "final_lr_fraction": 0.1}, 110, 10, 110, 0.1),
    ({"name": "onecycle", "final_lr_fraction": 0.0}, 75, 10, 100, 0.25),
    # cyclic: 2 cosine cycles of 50 (ends 50, 100), each restarting at lr
    ({"name": "cyclic", "cycles": 2}, 0, 10, 100, 1.0),
    ({"name": "cyclic", "cycles": 2}, 25, 10, 100, 0.5),
    ({"name": "cyclic", "cycles": 2}, 49, 10, 100, 0.5 * (1 + math.cos(math.pi * 49 / 50))),
    ({"name": "cyclic", "cycles": 2}, 50, 10, 100, 1.0),
    ({"name": "cyclic", "cycles": 2}, 75, 10, 100, 0.5),
    ({"name": "cyclic", "cycles": 2, "final_lr_fraction": 0.1}, 75, 10, 100, 0.55),
    # behind 10 warm-up iterations: cycles of 50 from 10 (ends 60, 110)
    ({"name": "cyclic", "cycles": 2, "warmup_epochs": 1}, 4, 10, 110, 0.5),
    ({"name": "cyclic", "cycles": 2, "warmup_epochs": 1}, 35, 10, 110, 0.5),
    ({"name": "cyclic", "cycles": 2, "warmup_epochs": 1}, 60, 10, 110, 1.0),
    ({"name": "cyclic", "cycles": 1}, 50, 10, 100, 0.5),  # one cycle: the cosine schedule
]

# (schedule options, iterations per epoch, total iterations, expected cycle ends)
CYCLE_ENDS = [
    ({"name": "cyclic", "cycles": 3}, 10, 100, [33, 67, 100]),  # 33.3 and 66.7 rounded
    ({"name": "cyclic", "cycles": 2, "warmup_epochs": 1}, 10, 110, [60, 110]),
    ({"name": "cyclic", "cycles": 4}, 10, 2, [0, 1, 2, 2]),  # more cycles than iterations
    ({"name": "cosine"}, 10, 100, [100]),
]


@pytest.mark.parametrize(("options", "per_epoch", "total", "expected"), CYCLE_ENDS)
def test_cycle_ends_by_hand(options, per_epoch, total, expected) -> None:
    assert cycle_ends(per_epoch, total, ScheduleConfig(**options)) == expected


@pytest.mark.parametrize(("options", "iteration", "per_epoch", "total", "expected"), SCHEDULES)
def test_learning_rate_schedules_by_hand(options, iteration, per_epoch, total, expected) -> None:
    cfg = ScheduleConfig(**options)
    assert lr_at(iteration, per_epoch, total, 1.0, cfg) == pytest.approx(expected)
    assert lr_at(iteration, per_epoch, total, 0.01, cfg) == pytest.approx(0.01 * expected)


def test_weighted_average_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    b = np.array([[0.0, 1.0], [0.1, 0.9]], np.float32)
    assert np.allclose(average([a, b], [1, 3]), [[0.25, 0.75], [0.2, 0.8]])  # weights / 4
    assert np.allclose(average([a, b], [2, 2]), (a + b) / 2)
    assert np.allclose(average([a], [5]), a)
    assert np.allclose(average([a, b], [0.25, 0.75]), [[0.25, 0.75], [0.2, 0.8]])  # sum 1 is fine
    assert average([a, b], [1, 3]).dtype == np.float32
    for bad in ([0, 0], [1, -1]):
        with pytest.raises(ConfigError, match="must add up to more than 0"):
            average([a, b], bad)


def _greedy_by_hand(probs: list[np.ndarray], labels: np.ndarray, rounds: int) -> list[int]:
    """Caruana's forward selection with replacement, written out plainly in float64."""
    chosen: list[int] = []
    best_score, best_counts = None, None
    for _ in range(rounds):
        trials = []
        for i in range(len(probs)):
            mean = np.mean([probs[j] for j in [*chosen, i]], axis=0, dtype=np.float64)
            error = float(np.mean(mean.argmax(axis=1) != labels))
            loss = float(-np.mean(np.log(np.maximum(mean[np.arange(len(labels)), labels], 1e-12))))
            trials.append((error, loss, i))
        error, loss, i = min(trials)
        chosen.append(i)
        if best_score is None or (error, loss) < best_score:
            best_score = (error, loss)
            best_counts = [chosen.count(j) for j in range(len(probs))]
    return best_counts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rounds", [1, 2, 5])
def test_greedy_selection_matches_a_plain_implementation(seed: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=30)
    probs = [rng.dirichlet(np.full(6, 0.5), size=30).astype(np.float32) for _ in range(4)]
    expected = _greedy_by_hand(probs, labels, rounds)
    assert greedy_select(probs, torch.from_numpy(labels), rounds) == expected


def test_greedy_selection_of_one_member() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
    assert greedy_select([probs], torch.tensor([0, 0]), rounds=3) == [1]


def test_greedy_selection_keeps_the_best_prefix() -> None:
    # Member 0 alone is best; adding anything after it only makes things worse.
    labels = torch.tensor([0, 1])
    perfect = np.array([[0.9, 0.1], [0.1, 0.9]], np.float32)
    wrong = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    assert greedy_select([wrong, perfect], labels, rounds=4) == [0, 1]


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (2, 8, 8, 3), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def test_channel_normalisation_by_hand() -> None:
    images = _image()
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    got = center_crop(images, 6, Normalization.channel(mean, std))  # (2, 3, 6, 6)
    crop = images[:, 1:7, 1:7, :].float()
    expected = ((crop - torch.tensor(mean)) / torch.tensor(std)).permute(0, 3, 1, 2)
    assert torch.allclose(got, expected)


def test_mean_image_is_subtracted_before_cropping_and_mirroring() -> None:
    images = _image(1)
    mean_image = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(2)) * 255
    got = ten_crop(images, 6, Normalization.from_mean_image(mean_image.numpy()))  # (2, 10, ...)
    centred = images.float() - mean_image  # the full image first (Caffe), then crop and mirror
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for v, (mirrored, (y, x)) in enumerate((m, c) for m in (False, True) for c in corners):
        view = centred[:, y : y + 6, x : x + 6, :]
        view = view.flip(2) if mirrored else view
        assert torch.allclose(got[:, v], view.permute(0, 3, 1, 2), atol=1e-4), v


def test_error_rates_of_no_images_are_nan() -> None:
    rates = error_rates(torch.empty(0, 7), torch.empty(0, dtype=torch.int64))
    assert rates["count"] == 0
    assert all(math.isnan(rates[k]) for k in ("loss", "top1_error", "top5_error"))


def test_confusion_counts_repeated_mistakes() -> None:
    # Three images of class 1 all called class 2, two of class 0 right: cells above 1.
    logits = torch.tensor([[5.0, 0, 0], [5, 0, 0], [0, 0, 5], [0, 0, 5], [0, 0, 5]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    accuracy, confusion = per_class_accuracy(logits, labels, 3)
    assert confusion.tolist() == [[2, 0, 0], [0, 0, 3], [0, 0, 0]]
    assert accuracy[0] == 1.0 and accuracy[1] == 0.0 and math.isnan(accuracy[2])

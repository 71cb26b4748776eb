"""The run's schedule (tinycnn/schedule.py): iteration -> lr, input side, FLOPs; the fits to a
compute and a time budget. Expected values are counted by hand in the comments. Then progressive
resizing through real runs: the sizes trained, evaluated, exported, resumed and budgeted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinycnn.compute import training_flops_per_image
from tinycnn.config import ScheduleConfig, load_config
from tinycnn.data.augment import center_crop
from tinycnn.data.cache import load_cache
from tinycnn.data.normalization import Normalization
from tinycnn.data.prepare import prepare
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate
from tinycnn.export import export_model
from tinycnn.inference import load_model
from tinycnn.models import create_model
from tinycnn.runtime import make_runtime
from tinycnn.schedule import (
    Schedule,
    cycle_ends,
    fit_total_to_time,
    lr_at,
    size_phases,
    step_seconds_by_size,
)
from tinycnn.training import train


def _schedule(
    *overrides: str, per_epoch: int = 3, eval_size: int = 56, flops=None, total=None
) -> Schedule:
    cfg = load_config(None, ["train.batch_size=16", *overrides])
    return Schedule.build(cfg, per_epoch, eval_size, flops or {}, total)


SIZES = ("augment.sizes=[32, 48, 64]", "augment.size_until=[0.2, 0.6]")


@pytest.mark.parametrize(
    ("overrides", "per_epoch", "expected_total"),
    [
        (("train.epochs=2",), 5, 10),  # no budget: epochs x iterations an epoch
        # 16 images x 1e13 FLOPs = 0.16 PFLOP a step: 6 steps fit 1 PFLOP, 7 do not
        (("train.epochs=10", "train.max_pflop=1"), 3, 6),
        (("train.epochs=1", "train.max_pflop=1"), 3, 3),  # the epochs end first
        (("train.epochs=10", "train.max_pflop=0.01"), 3, 1),  # at least one step
    ],
)
def test_the_length_is_the_epochs_cut_to_the_compute_budget(
    overrides, per_epoch, expected_total
) -> None:
    schedule = _schedule(*overrides, per_epoch=per_epoch, flops={56: 1e13})
    assert schedule.total == expected_total


def test_the_compute_budget_counts_each_resizing_phase_at_its_side() -> None:
    # A total n runs round(n / 2) steps at 32 (16 x 1e13 FLOPs) and the rest at 64 (16 x 4e13):
    # n = 4: 2 x 0.16 + 2 x 0.64 = 1.6 PFLOP fits 1.6; n = 5: 2 x 0.16 + 3 x 0.64 = 2.24 does not.
    sizes = ("augment.sizes=[32, 64]", "augment.size_until=[0.5]", "train.epochs=10")
    schedule = _schedule(*sizes, "train.max_pflop=1.6", flops={32: 1e13, 64: 4e13})
    assert schedule.total == 4
    assert schedule.flops_until(4) == pytest.approx(1.6e15)


def test_progressive_resizing_by_iteration() -> None:
    schedule = _schedule(*SIZES, "train.epochs=2", per_epoch=5, flops={32: 1, 48: 2, 64: 4})
    # 10 iterations: until round(0.2 x 10) = 2 at 32, until round(0.6 x 10) = 6 at 48, then 64
    assert schedule.phases() == [(2, 32), (4, 48), (4, 64)]
    assert [schedule.input_size_at(i) for i in range(11)] == [32] * 2 + [48] * 4 + [64] * 5
    assert [schedule.resize_at(i) for i in (0, 2, 9)] == [32, 48, 64]
    # 7 steps of 16 images: 2 at 32 (1 FLOP an image), 4 at 48 (2), 1 at 64 (4)
    assert schedule.flops_until(7) == 16 * (2 * 1 + 4 * 2 + 1 * 4)
    assert schedule.flops_until(0) == 0
    assert schedule.flops_per_image == 4  # at the last side
    stretched = schedule.with_total(20)
    assert stretched.phases() == [(4, 32), (8, 48), (8, 64)]
    assert stretched.batch_size == 16 and schedule.total == 10  # a new value, the old kept


def test_without_resizing_every_step_is_at_the_crops_side() -> None:
    schedule = _schedule("train.epochs=2", per_epoch=5, eval_size=56, flops={56: 3.0})
    assert schedule.phases() == [(10, 56)]
    assert {schedule.input_size_at(i) for i in range(12)} == {56}
    assert schedule.resize_at(4) is None
    assert schedule.flops_until(3) == 3 * 16 * 3.0
    assert _schedule("train.epochs=2").flops_until(5) == 0  # FLOPs not counted


def test_sizes_start_again_in_each_cycle() -> None:
    cyclic = ('schedule.name="cyclic"', "schedule.cycles=2", "train.epochs=2")
    sizes = ("augment.sizes=[32, 64]", "augment.size_until=[0.4]", "augment.sizes_per_cycle=true")
    schedule = _schedule(*cyclic, *sizes, per_epoch=5, flops={32: 1, 64: 4})
    assert schedule.cycle_ends() == [5, 10]
    # each cycle of 5: until round(0.4 x 5) = 2 at 32, then 3 at 64
    assert schedule.phases() == [(2, 32), (3, 64), (2, 32), (3, 64)]
    assert [schedule.input_size_at(i) for i in range(10)] == [32, 32, 64, 64, 64] * 2


def test_more_cycles_than_iterations_is_refused() -> None:
    # 2 epochs of 5 iterations behind a 1-epoch warm-up leave 5 iterations: at most 5 cycles.
    cyclic = ('schedule.name="cyclic"', "train.epochs=2", "schedule.warmup_epochs=1")
    assert _schedule(*cyclic, "schedule.cycles=5", per_epoch=5).cycle_ends() == [6, 7, 8, 9, 10]
    with pytest.raises(ConfigError, match=r"schedule.cycles = 6: .* 5 iterations after its warm"):
        _schedule(*cyclic, "schedule.cycles=6", per_epoch=5)


def test_the_learning_rate_by_iteration() -> None:
    step = ("optim.lr=0.1", "schedule.warmup_epochs=1", "schedule.step_epochs=2", "train.epochs=4")
    schedule = _schedule(*step, per_epoch=4)
    # warm-up over 4 iterations: 0.1 x (i + 1) / 4; then 0.1, divided by 10 every 8 iterations
    expected = [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01]
    assert [schedule.lr_at(i) for i in range(10)] == pytest.approx(expected)
    onecycle = _schedule('schedule.name="onecycle"', "optim.lr=1", "train.epochs=2", per_epoch=5)
    # no warm-up: 1 - i / 10, down to 0 at the end of 10 iterations
    assert [onecycle.lr_at(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert onecycle.with_total(20).lr_at(10) == pytest.approx(0.5)


def test_a_schedule_fitted_to_the_time_left_by_hand() -> None:
    schedule = _schedule("train.epochs=10", flops={56: 1e9})  # 3 iterations an epoch: 30
    step, image, done = 16 * 1e9, 1e9, 4  # FLOPs of a step (16 images), of an image; steps done
    evaluation = 20 * image / 3  # 20 evaluated images' forward passes, a third of a step each
    # At 1e9 FLOP/s, a total of T costs (T - 4) steps plus an evaluation at each epoch end
    # after iteration 4 and one at T if T is mid-epoch: T = 9 -> 5 steps, evaluations at 6, 9.
    rate = 1e9

    def by_hand(total: int) -> float:
        ends = len([e for e in range(5, total + 1) if e % 3 == 0]) + (total % 3 != 0)
        return ((total - 4) * step + ends * evaluation) / rate

    assert by_hand(9) == pytest.approx(5 * 16 + 2 * 20 / 3)
    seconds = {56: step / rate}  # a step's seconds at the one input side

    def fit(seconds_left: float) -> int:
        return fit_total_to_time(schedule, done, seconds, seconds_left, eval_images=20)

    for total in range(5, 30):  # exactly the time of T steps and evaluations fits T, not T + 1
        assert fit(by_hand(total) * (1 + 1e-9)) == total
        if total > 5:
            assert fit(by_hand(total) * (1 - 1e-9)) == total - 1
    assert fit(1e9) == 30  # train.epochs is the ceiling
    assert fit(0.0) == 5  # at least one more step


def test_a_schedule_fitted_to_the_time_left_with_progressive_resizing_by_hand() -> None:
    """Each resizing phase's steps at their own side's step time; the evaluations at the last."""
    sizes = ("augment.sizes=[32, 48]", "augment.size_until=[0.5]", "train.epochs=20")
    schedule = _schedule(*sizes, flops={32: 1.0, 48: 2.0})  # 3 iterations an epoch: 60
    seconds = {32: 1.0, 48: 3.0}  # not in the FLOPs' ratio: the time is what counts

    def by_hand(total: int) -> float:
        small = round(0.5 * total)  # the first half of the steps at 32, the rest at 48
        steps = max(small - 4, 0) * 1.0 + (total - max(small, 4)) * 3.0
        ends = len([e for e in range(5, total + 1) if e % 3 == 0]) + (total % 3 != 0)
        return steps + ends * 20 * 3.0 / 16 / 3  # 20 val images, a third of a step's at 48

    assert by_hand(12) == pytest.approx(2 * 1.0 + 6 * 3.0 + 3 * 20 / 16)
    for total in range(5, 60):
        left = by_hand(total)
        assert fit_total_to_time(schedule, 4, seconds, left * (1 + 1e-9), 20) == total
        if total > 5:
            assert fit_total_to_time(schedule, 4, seconds, left * (1 - 1e-9), 20) == total - 1


def test_step_times_of_other_sides_add_the_probes_difference() -> None:
    probe = {32: 0.5, 48: 1.25, 64: 2.0}  # forward + backward alone
    # The measured step at 32 took 0.8 s: 0.3 s of side-independent work beside the probe's.
    assert step_seconds_by_size({32: 0.8}, probe) == pytest.approx({32: 0.8, 48: 1.55, 64: 2.3})
    assert step_seconds_by_size({64: 2.0}, {32: 1.5, 64: 1.0})[32] > 0  # never zero or less


def test_each_size_runs_from_its_fraction_of_the_run() -> None:
    # 10 iterations: round(2.5) = 2 (banker's rounding, as Python's round) and round(6) = 6.
    assert size_phases([32, 48, 64], [0.25, 0.6], [10]) == [(2, 32), (4, 48), (4, 64)]
    schedule = _schedule("augment.sizes=[32, 48, 64]", "augment.size_until=[0.25, 0.6]", total=10)
    assert [schedule.input_size_at(i) for i in range(10)] == [32] * 2 + [48] * 4 + [64] * 4


def test_the_sizes_start_again_in_each_span_by_hand() -> None:
    # Spans of 4 and 6 iterations (ends 4, 10): half of each at 32, then 64.
    assert size_phases([32, 64], [0.5], [4, 10]) == [(2, 32), (2, 64), (3, 32), (3, 64)]
    # Three sizes, spans of 5 and 5: round(1.25) = 1 and round(3.0) = 3 in each.
    three = size_phases([32, 48, 64], [0.25, 0.6], [5, 10])
    assert three == [(1, 32), (2, 48), (2, 64)] * 2


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
    # one iteration after a 2-iteration warm-up: at its end, the floor
    ({"name": "cosine", "warmup_epochs": 2, "final_lr_fraction": 0.1}, 2, 1, 3, 1.0),
    ({"name": "cosine", "warmup_epochs": 2, "final_lr_fraction": 0.1}, 3, 1, 3, 0.1),
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
    # at and past the last cycle's end: its floor, not a new cycle's start
    (
        {"name": "cyclic", "cycles": 2, "final_lr_fraction": 0.1},
        99,
        10,
        100,
        0.1 + 0.45 * (1 + math.cos(math.pi * 49 / 50)),
    ),
    ({"name": "cyclic", "cycles": 2, "final_lr_fraction": 0.1}, 100, 10, 100, 0.1),
    ({"name": "cyclic", "cycles": 2, "final_lr_fraction": 0.1}, 150, 10, 100, 0.1),
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


def test_schedules_are_per_iteration() -> None:
    step = ScheduleConfig(name="step", step_epochs=2, gamma=0.1)
    assert [lr_at(i, 10, 100, 1.0, step) for i in (0, 19, 20, 45)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.01]
    )
    cosine = ScheduleConfig(name="cosine", warmup_epochs=1)
    assert lr_at(4, 10, 110, 1.0, cosine) == pytest.approx(0.5)
    assert lr_at(10, 10, 110, 1.0, cosine) == pytest.approx(1.0)
    assert lr_at(60, 10, 110, 1.0, cosine) == pytest.approx(0.5)
    onecycle = ScheduleConfig(name="onecycle", warmup_epochs=1, final_lr_fraction=0.1)
    assert lr_at(110, 10, 110, 1.0, onecycle) == pytest.approx(0.1)


# --- progressive resizing through real runs: the sizes trained, evaluated, resumed, budgeted ---


FAST = {"width": 8}  # a small fastnet: the schedule is what is tested, not the net


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("augment.sizes_per_cycle=true",), "needs augment.sizes and schedule.name"),
        (
            ("augment.sizes_per_cycle=true", "augment.sizes=[32, 56]", "augment.size_until=[0.5]"),
            "needs augment.sizes and schedule.name",
        ),
        (
            ('schedule.name="cyclic"', "augment.sizes_per_cycle=1"),
            "augment.sizes_per_cycle = 1: expected bool",
        ),
    ],
)
def test_sizes_per_cycle_without_cycles_or_sizes_is_refused(extra, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(Path("unused"), *extra)


def _cfg(cache: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            "model.name=fastnet",
            "model.width=8",
            'model.init="kaiming"',
            'data.normalization="channel"',
            'optim.name="nesterov"',
            "optim.lr=0.05",
            "train.batch_size=16",
            "train.threads=1",
            "train.deterministic=true",
            "augment.crop=56",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def synth_cache(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("progressive")
    return prepare(synth_sources["folder"], root / "cache", progress=False).path


def _record_training_inputs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The input side of every training forward pass, in order (eval passes left out)."""
    import tinycnn.steps as steps

    sides: list[int] = []
    original = steps.resize_views

    def spy(x: torch.Tensor, size: int) -> torch.Tensor:
        out = original(x, size)
        sides.append(out.shape[-1])
        return out

    monkeypatch.setattr(steps, "resize_views", spy)
    return sides


def test_training_follows_the_sizes_and_counts_each_steps_flops(
    synth_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = _record_training_inputs(monkeypatch)
    sizes = ("augment.sizes=[32, 48, 56]", "augment.size_until=[0.25, 0.5]")
    cfg = _cfg(synth_cache, *sizes, "train.epochs=4")
    result = train(cfg, tmp_path / "run", progress=False)
    # 60 images, batch 16: 3 iterations an epoch, 12 in all; sizes change at 3 and 6.
    assert sides == [32] * 3 + [48] * 3 + [56] * 6
    model = create_model("fastnet", num_classes=5, **FAST)
    per_image = {side: training_flops_per_image(model, side) for side in (32, 48, 56)}
    spent = np.cumsum([16 * per_image[side] for side in sides])
    rows = result.metrics
    assert [row["iteration"] for row in rows] == [3, 6, 9, 12]
    assert [row["input_size"] for row in rows] == [32, 48, 56, 56]
    for row in rows:
        assert row["train_pflop"] == pytest.approx(spent[row["iteration"] - 1] / 1e15)
    # Each epoch's checkpoint holds the size its evaluation used: that of its last step.
    first = tmp_path / "run" / "checkpoints" / "epoch-001.pt"
    assert load_model(first).resize == 32
    (evaluation,) = evaluate(first, synth_cache)
    assert evaluation.top1_error == pytest.approx(rows[0]["val_top1_error"])
    config_text = (tmp_path / "run" / "config.toml").read_text()
    assert f"{per_image[32] / 1e9:.3f} at 32x32" in config_text


def test_the_compute_budget_fits_the_whole_size_schedule(
    synth_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = _record_training_inputs(monkeypatch)
    model = create_model("fastnet", num_classes=5, **FAST)
    per_image = {side: training_flops_per_image(model, side) for side in (32, 56)}

    def cost(total: int) -> float:  # brute force: every step at its own size, 32 for the first half
        return sum(16 * per_image[32 if i < round(0.5 * total) else 56] for i in range(total))

    budget = (cost(7) + cost(8)) / 2  # room for a 7-step schedule, not an 8-step one
    assert cost(7) <= budget < cost(8)
    cfg = _cfg(
        synth_cache,
        "augment.sizes=[32, 56]",
        "augment.size_until=[0.5]",
        'schedule.name="onecycle"',
        "train.epochs=20",
        f"train.max_pflop={budget / 1e15!r}",
    )
    result = train(cfg, tmp_path / "run", progress=False)
    # round(3.5) = 4 steps at 32, then 3 at 56: the budget set the schedule's length.
    assert sides == [32] * 4 + [56] * 3
    last = result.metrics[-1]
    assert last["iteration"] == 7 and last["train_pflop"] == pytest.approx(cost(7) / 1e15)
    assert last["lr"] == pytest.approx(0.05 * (1 - 6 / 7))  # onecycle reaches 0 on step 7


def test_evaluation_prediction_and_export_see_the_models_last_size(
    synth_cache: Path, tmp_path: Path
) -> None:
    # A run stopped at 48 (the last size) with 56-pixel crops: every view is resized to 48.
    # fp32 throughout, on every machine: the by-hand logits below are fp32.
    fp32 = make_runtime(precision="fp32", threads=1)
    extra = ("augment.sizes=[32, 48]", "augment.size_until=[0.5]", "train.epochs=2")
    cfg = _cfg(synth_cache, *extra, 'train.precision="fp32"')
    result = train(cfg, tmp_path / "run", progress=False)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    loaded = load_model(last, fp32)
    assert (loaded.input_size, loaded.resize) == (56, 48)
    cache = load_cache(synth_cache)
    images = torch.from_numpy(np.asarray(cache.split("val").images))
    norm = Normalization.channel(cache.channel_mean, cache.channel_std)
    by_hand = F.interpolate(
        center_crop(images, 56, norm), size=(48, 48), mode="bilinear", antialias=True
    )
    with torch.inference_mode():
        expected = loaded.model(by_hand).float()
    torch.testing.assert_close(loaded.logits(images), expected, atol=1e-4, rtol=1e-4)
    # The same number as the run logged at its end.
    (evaluation,) = evaluate(last, synth_cache, runtime=fp32)
    assert evaluation.top1_error == pytest.approx(result.metrics[-1]["val_top1_error"])
    report = export_model(last, "torchscript", tmp_path / "model.pt")
    assert "resized to 48x48" in json.dumps(report.input_spec) or report.max_abs_logit_diff < 1e-3
    module = torch.jit.load(str(report.path))
    with torch.inference_mode():
        exported = module(images)
    torch.testing.assert_close(exported, expected, atol=1e-3, rtol=1e-3)


def test_a_resume_across_a_size_change_equals_the_uninterrupted_run(
    synth_cache: Path, tmp_path: Path
) -> None:
    extra = ("augment.sizes=[32, 56]", "augment.size_until=[0.5]", "train.epochs=3")
    whole = train(_cfg(synth_cache, *extra), tmp_path / "whole", progress=False)
    train(_cfg(synth_cache, *extra), tmp_path / "cut", progress=False, stop_at_iteration=4)
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    assert [r["val_top1_error"] for r in resumed.metrics] == [
        r["val_top1_error"] for r in whole.metrics
    ]
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_model_with_a_fixed_input_size_refuses_progressive_resizing(
    synth_cache: Path, tmp_path: Path
) -> None:
    cfg = _cfg(synth_cache, "model.name=cnn5", "augment.sizes=[32, 56]", "augment.size_until=[0.5]")
    cfg.model.options = {}
    with pytest.raises(ConfigError, match=r"augment.sizes = \[32, 56\]: model 'cnn5' takes one"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_sizes_per_cycle_restart_the_sizes_in_each_cycle_and_the_budget_counts_them(
    synth_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = _record_training_inputs(monkeypatch)
    model = create_model("fastnet", num_classes=5, **FAST)
    per_image = {side: training_flops_per_image(model, side) for side in (32, 56)}

    def by_hand(i: int, total: int) -> int:  # two cycles, no warm-up, half of each at 32
        first = round(total / 2)
        start, span = (0, first) if i < first else (first, total - first)
        return 32 if i - start < round(span / 2) else 56

    def cost(total: int) -> float:
        return sum(16 * per_image[by_hand(i, total)] for i in range(total))

    # 10 steps: cycles of 5 (2 at 32, 3 at 56: round(2.5) = 2) and 5; 11: 6 (3 + 3) and 5.
    assert [by_hand(i, 10) for i in range(10)] == ([32] * 2 + [56] * 3) * 2
    budget = (cost(10) + cost(11)) / 2  # room for a 10-step schedule, not an 11-step one
    assert cost(10) <= budget < cost(11)
    cfg = _cfg(
        synth_cache,
        "augment.sizes=[32, 56]",
        "augment.size_until=[0.5]",
        "augment.sizes_per_cycle=true",
        'schedule.name="cyclic"',
        "schedule.cycles=2",
        "train.epochs=20",
        f"train.max_pflop={budget / 1e15!r}",
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert sides == [by_hand(i, 10) for i in range(10)]
    assert result.metrics[-1]["train_pflop"] == pytest.approx(cost(10) / 1e15)
    # Each cycle's snapshot ends at the last size, so it is evaluated there, unresized.
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("cycle-01.pt", "cycle-02.pt"):
        loaded = load_model(checkpoints / name)
        assert (loaded.input_size, loaded.resize) == (56, None), name


@pytest.mark.parametrize("name", ["onecycle", "cosine", "step"])
def test_a_run_cut_inside_its_warm_up_warms_for_half_of_it_then_decays(name: str) -> None:
    # 211 warm-up iterations, a budget of 60: the rate had ended partway up its ramp (0.057 of
    # 0.2 at the last step) instead of decaying where the budget ends. Hand values: warm-up of
    # 30, lr (i + 1) / 30 * 0.2; then onecycle linear and cosine to 0 over the other 30.
    from tinycnn.schedule import lr_at

    cfg = ScheduleConfig(name=name, warmup_epochs=0.3, step_epochs=1000.0)
    lrs = [lr_at(i, 703, 60, 0.2, cfg) for i in range(60)]
    assert lrs[:30] == pytest.approx([(i + 1) / 30 * 0.2 for i in range(30)])
    tail = {
        "onecycle": [0.2 * (1 - (i - 30) / 30) for i in range(30, 60)],
        "cosine": [0.1 * (1 + math.cos(math.pi * (i - 30) / 30)) for i in range(30, 60)],
        "step": [0.2] * 30,
    }[name]
    assert lrs[30:] == pytest.approx(tail)
    # A warm-up shorter than the run stays as set: 20 of 60 iterations.
    short = ScheduleConfig(name=name, warmup_epochs=0.2, step_epochs=1000.0)
    assert [lr_at(i, 100, 60, 0.2, short) for i in (9, 19)] == pytest.approx([0.1, 0.2])

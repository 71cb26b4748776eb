"""The run's schedule (tinycnn/schedule.py): iteration -> lr, input side, FLOPs; the fits to a
compute and a time budget. Expected values are counted by hand in the comments."""

from __future__ import annotations

import math

import pytest

from tinycnn.config import ScheduleConfig, load_config
from tinycnn.schedule import (
    Schedule,
    cycle_ends,
    fit_total_to_time,
    lr_at,
    size_phases,
    step_seconds_by_size,
)


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

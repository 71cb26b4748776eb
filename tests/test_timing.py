"""The run's wall clock (tinycnn/timing.py): the time to go, the time budget's stop."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.helpers import RUN
from tinycnn.config import load_config
from tinycnn.schedule import Schedule
from tinycnn.timing import Budget
from tinycnn.training import train


def test_the_time_to_go_counts_each_sides_step_time_once_fitted() -> None:
    sizes = ("augment.sizes=[32, 48]", "augment.size_until=[0.5]", "train.epochs=20")
    cfg = load_config(None, [*sizes, "train.batch_size=16"])
    schedule = Schedule.build(cfg, 3, 56, {32: 1.0, 48: 2.0})  # 60 iterations: 30 at 32, 30 at 48
    budget = Budget(0, time.perf_counter(), 4, batch_size=16, eval_images=20)
    # At iteration 4, by FLOPs at 2 s a step now: 26 steps of 1 FLOP-unit and 30 of 2, 2 s per
    # unit: 172 s (no evaluation timed yet).
    assert budget.remaining(schedule, 4, 2.0) == "00:02:52"
    budget.step_seconds = {32: 1.0, 48: 3.0}  # the fit timed each side: steps now run 2x slower
    expected = time.strftime("%H:%M:%S", time.gmtime((26 + 30 * 3) * 2))
    assert budget.remaining(schedule, 4, 2.0) == expected
    budget.eval_seconds = 10.0  # 19 epoch ends to come (iterations 6, 9, ..., 60)
    expected = time.strftime("%H:%M:%S", time.gmtime((26 + 30 * 3) * 2 + 19 * 10))
    assert budget.remaining(schedule, 4, 2.0) == expected


def test_the_budget_leaves_room_for_the_next_step_and_the_closing_evaluation() -> None:
    origin = time.perf_counter()
    budget = Budget(1, origin - 50, 0, batch_size=10, eval_images=30)  # 50 of 60 s spent
    assert not budget.exhausted(0)  # no step timed yet: 50 s + 0 + 0 < 60 s
    budget.eval_seconds = 9.0
    assert not budget.exhausted(0)  # 59 s
    budget.eval_seconds = 10.5
    assert budget.exhausted(0)  # 60.5 s
    assert not Budget(0, origin - 1e6, 0, batch_size=10, eval_images=30).exhausted(5)  # no budget


def test_the_time_budget_includes_the_evaluations(cache: Path, tmp_path: Path, monkeypatch) -> None:
    import tinycnn.epochs
    import tinycnn.steps

    real = tinycnn.epochs.predict_logits

    def slow_evaluation(*args, **kwargs):
        time.sleep(1.0)  # stands for the 10,000 val images of a real run
        return real(*args, **kwargs)

    def slow_step(*args, **kwargs):
        time.sleep(0.05)  # 25 steps an epoch: an epoch takes longer than its evaluation
        return real_augment(*args, **kwargs)

    real_augment = tinycnn.steps.augment_batch
    monkeypatch.setattr(tinycnn.epochs, "predict_logits", slow_evaluation)
    monkeypatch.setattr(tinycnn.steps, "augment_batch", slow_step)
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=1000"])
    cfg.train.batch_size = 2
    cfg.train.max_minutes = 0.1  # 6 s; each evaluation (val + tune) takes 2 s
    start = time.perf_counter()
    result = train(cfg, tmp_path / "run", progress=False)
    took = time.perf_counter() - start
    assert result.stopped == "time budget" and result.metrics[-1]["iteration"] >= 25
    assert took < 6.0 + 1.0, f"a 6 s budget took {took:.1f} s"

"""The run's wall clock (tinycnn/timing.py): the time to go, the time budget's stop (which counts
the evaluations), the step-time probe, a schedule fitted to the time."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.helpers import RUN, cnn5_config
from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
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


def test_the_time_probe_leaves_the_runs_model_untouched(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    from tinycnn.run_plan import plan_run
    from tinycnn.runtime import make_runtime
    from tinycnn.session import load_session
    from tinycnn.timing import probe_step_seconds

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    sizes = ("augment.sizes=[32, 64]", "augment.size_until=[0.5]")
    cfg = load_config(  # a model with batch norm, whose statistics a forward pass moves
        None,
        [f"data.cache={json.dumps(str(cache))}", "model.name=fastnet", "model.width=4", *sizes],
    )
    runtime = make_runtime("cpu", "fp32")
    plan = replace(plan_run(cfg), runtime=runtime, flops_by_size={32: 1.0, 64: 4.0})
    session = load_session(plan, tmp_path / "run")
    model = session.model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = probe_step_seconds(session, {32, 64}, repeats=1)
    assert sorted(seconds) == [32, 64] and all(t > 0 for t in seconds.values())
    after = model.state_dict()
    for name, tensor in before.items():  # batch-norm statistics and the batch count included
        assert torch.equal(after[name], tensor), name
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


@pytest.mark.slow
def test_a_time_fitted_run_ends_its_schedule_on_the_budget_and_resumes_on_it(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    from tinycnn.schedule import lr_at

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    fitted = ("train.epochs=10000", "train.max_minutes=0.4", "train.fit_to_time=true")
    # Its length is the machine's: thousands of steps on a fast one. cnn5_config's lr 0.05 sits
    # on the edge of stability over that many (measured: some lengths fall to chance, one AMX CI
    # run reached nan), so a gentler lr and clipped gradients keep the run finite everywhere.
    stable = ("optim.lr=0.01", "optim.clip_grad_norm=2.0")
    cfg = cnn5_config(cache, 'schedule.name="onecycle"', *fitted, *stable)
    cut = train(cfg, tmp_path / "run", progress=False, stop_at_iteration=30)
    total = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["fitted_total"]
    assert cut.iteration == 30 and 30 < total < 30_000
    result = train(None, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["fitted_total"] == total
    # The learning rate followed a schedule of the fitted length, from the fit on.
    for row in result.metrics[-3:]:
        i = row["iteration"] - 1
        assert row["lr"] == pytest.approx(lr_at(i, 3, total, cfg.optim.lr, cfg.schedule))
    if result.stopped == "finished":  # else the safety stop of a very noisy machine
        assert result.iteration == total
        assert result.metrics[-1]["lr"] == pytest.approx(cfg.optim.lr / total)
    assert result.stopped in ("finished", "time budget")


class _Clock:
    """A stand-in for time.perf_counter that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("done", "total", "per_epoch", "expected"),
    [
        (0, 10, 7, 2),  # epoch 1's end (7) and the closing one (10)
        (5, 10, 7, 2),
        (7, 10, 7, 2),  # epoch 1's end just reached: its evaluation is still to run
        (8, 10, 7, 1),
        (10, 10, 7, 1),
        (4, 60, 3, 19),  # 6, 9, ..., 60
        (5, 21, 7, 3),
        (5, 4, 7, 1),  # a run shorter than an epoch: its closing one
    ],
)
def test_evaluations_left_by_hand(done: int, total: int, per_epoch: int, expected: int) -> None:
    from tinycnn.schedule import evaluations_left

    assert evaluations_left(done, total, per_epoch) == expected


def test_the_time_to_go_counts_the_evaluation_of_a_mid_epoch_end(monkeypatch) -> None:
    # 7 steps an epoch, 10 in all, 1 s a step, 5 s an evaluation: at iteration 5, 5 steps and
    # 2 evaluations (at 7 and 10) are to come: 15 s (it had counted one: 10 s).
    import tinycnn.timing

    clock = _Clock()
    monkeypatch.setattr(tinycnn.timing.time, "perf_counter", clock)
    schedule = Schedule.build(load_config(None, ["train.epochs=2"]), 7, 56, {}, total=10)
    budget = Budget(0, 0.0, 0, batch_size=16, eval_images=20)
    budget.eval_seconds = 5.0
    assert budget.remaining(schedule, 5, 1.0) == "00:00:15"


def test_the_first_step_and_the_evaluations_are_not_taken_for_the_step_rate(monkeypatch) -> None:
    # A 0.72 s first step (allocation, kernel choices) then 0.01 s steps: the closing
    # evaluation of 2,400 images is estimated from the 0.01 s (2,400 x 0.01 / 8 / 2.5 = 1.2 s),
    # not from the first step (86 s, which had ended a 45 s run after one step).
    import tinycnn.timing

    clock = _Clock()
    monkeypatch.setattr(tinycnn.timing.time, "perf_counter", clock)
    budget = Budget(0.75, 0.0, 0, batch_size=8, eval_images=2400)
    clock.now = 0.72
    budget.stepped(1)
    assert not budget.exhausted(1)
    for i in range(2, 6):
        clock.now += 0.01
        budget.stepped(i)
    assert budget._eval_estimate(5) == pytest.approx(2400 * 0.01 / 8 / 2.5)
    assert not budget.exhausted(5)
    # The training clock stands still during an evaluation.
    before = budget.training_clock()
    budget.evaluating()
    clock.now += 10.0
    budget.evaluated(5)
    assert budget.training_clock() == pytest.approx(before)


def test_a_time_fit_times_the_steps_not_the_evaluations_between_them(monkeypatch) -> None:
    # 7 steps an epoch: 3 evaluations (1 s each) fall among the 22 steps the fit times. The
    # steps' rate is their own (0.067 s a step), and the fitted length spends what is left of
    # 45 s (x 0.95) on 0.067 s steps and 1 s evaluations (by hand, below). Timing the
    # evaluations as steps had fitted a run that used a quarter of its budget.
    from types import SimpleNamespace

    import tinycnn.timing
    from tinycnn.timing import TimeFit

    clock = _Clock()
    monkeypatch.setattr(tinycnn.timing.time, "perf_counter", clock)
    cfg = load_config(None, ["train.epochs=40", "train.batch_size=32"])
    schedule = Schedule.build(cfg, 7, 56, {56: 1e9})
    s = SimpleNamespace(
        iteration=0, flops_done=0.0, schedule=schedule, cfg=cfg,
        runtime=SimpleNamespace(device=torch.device("cpu")), eval_sets={"val": (None, [0] * 2400)},
    )  # fmt: skip
    s.fit_schedule = lambda total: setattr(s, "fitted", total)
    budget = Budget(0.75, 0.0, 0, batch_size=32, eval_images=2400)
    fit = TimeFit(0, budget, progress=False)
    for it in range(1, 23):
        clock.now += 0.067
        s.iteration, s.flops_done = it, s.flops_done + 32 * 1e9
        budget.stepped(it)
        fit.measure(s)
        if it % 7 == 0:
            budget.evaluating()
            clock.now += 1.0
            budget.evaluated(it)
    assert budget.step_seconds == {56: pytest.approx(0.067)}
    left = (45 - (22 * 0.067 + 3 * 1.0)) * 0.95
    expected = 22
    while expected < 280:  # one more step fits while its steps and evaluations fit
        n = expected + 1
        evaluations = len([e for e in range(7, n + 1, 7) if e >= 22]) + bool(n % 7)
        if (n - 22) * 0.067 + evaluations * 1.0 > left:
            break
        expected = n
    assert s.fitted == expected

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

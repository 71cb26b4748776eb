"""A resumed run equals the uninterrupted one: after kill -9 at every phase, a torn metrics line,
SIGTERM, a time or compute budget, --stop-at; its precision, best.pt and step times carry over.

The kill tests run the real CLI in a subprocess. TINYCNN_PAUSE_AT=PHASE@ITERATION makes it wait
at that exact point of the run (see faults.pause_point); the test then kills it with SIGKILL
from outside, resumes it with ``tinycnn train --resume`` in a fresh process, and compares the
run folder with an uninterrupted run's: every metrics line, every checkpoint file, its weights,
and which epoch best.pt holds.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.helpers import (
    RUN,
    paused,
    small_config,
    start_tinycnn,
    train_argv,
)
from tinycnn.checkpoint import load_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config, tomllib
from tinycnn.errors import RunFolderError
from tinycnn.resume import kept_metrics, restore_best_copy
from tinycnn.run_folder import read_metrics
from tinycnn.runtime import keep_threads
from tinycnn.training import train

TIMING = ("seconds", "elapsed_seconds", "images_per_second")

# Where a run can die: (phase, iteration). step: after an optimisation step; snapshot: after an
# iteration snapshot; evaluated: after an epoch's evaluation, before its checkpoint; saved:
# after epoch-NNN.pt and last.pt, before best.pt; best: before the metrics line; logged: after.
PHASES = [
    ("step", 2),
    ("step", 3),
    ("snapshot", 3),
    ("evaluated", 3),
    ("saved", 6),
    ("best", 6),
    ("logged", 6),
    ("snapshot", 9),
    ("saved", 9),
]


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def _kill_at(cache: Path, out: Path, phase: str, iteration: int) -> None:
    """Train into out, killed (SIGKILL: no handler, no cleanup) at phase@iteration."""
    process = paused(train_argv(cache, out), phase, iteration, out.with_suffix(".paused"))
    process.kill()
    process.communicate(timeout=60)


def _resume(out: Path) -> tuple[int, str]:
    return _finish(start_tinycnn(["train", "--resume", str(out), "-q"]))


def _kill_and_resume(cache: Path, out: Path, phase: str, iteration: int) -> str:
    _kill_at(cache, out, phase, iteration)
    code, err = _resume(out)
    assert code == 0, f"resume after a kill at {phase}@{iteration} failed: {err}"
    return err


def _run_record(run: Path) -> dict:
    """What a run leaves that must not depend on interruptions (timings left out)."""
    metrics = [{k: v for k, v in row.items() if k not in TIMING} for row in read_metrics(run)]
    # Every line as written, not read_steps' one per iteration: a resume leaves no repeats.
    lines = (run / "steps.jsonl").read_text().splitlines()
    steps = [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]
    checkpoints = {}
    for path in sorted((run / "checkpoints").glob("*.pt")):
        payload = load_checkpoint(path)
        checkpoints[path.name] = {
            "iteration": payload["iteration"],
            "best_error": payload["best_error"],
            "metrics": payload["metrics"]
            and {k: v for k, v in payload["metrics"].items() if k not in TIMING},
            "state": payload["model"]["state"],
            "fields": sorted(payload),  # best.pt without the resume-only state, as written
        }
    return {"metrics": metrics, "steps": steps, "checkpoints": checkpoints}


def _assert_same_run(got: dict, expected: dict, where: str) -> None:
    assert got["metrics"] == expected["metrics"], f"{where}: metrics differ"
    assert got["steps"] == expected["steps"], f"{where}: steps.jsonl differs"
    assert sorted(got["checkpoints"]) == sorted(expected["checkpoints"]), where
    for name, want in expected["checkpoints"].items():
        have = got["checkpoints"][name]
        for key in ("iteration", "best_error", "metrics", "fields"):
            assert have[key] == want[key], f"{where}: {name} {key}"
        for tensor_name, tensor in want["state"].items():
            assert torch.equal(have["state"][tensor_name], tensor), f"{where}: {name}"


@pytest.fixture(scope="module")
def uninterrupted(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "run"
    code, err = _finish(start_tinycnn(train_argv(cache, out)))
    assert code == 0, err
    record = _run_record(out)
    assert [r["iteration"] for r in record["metrics"]] == [3, 6, 9]
    return record


@pytest.mark.slow
def test_a_kill_at_any_phase_then_resume_equals_the_uninterrupted_run(
    cache: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    def one(phase_iteration: tuple[str, int]) -> tuple[str, dict]:
        phase, iteration = phase_iteration
        out = tmp_path / f"{phase}-{iteration}"
        _kill_and_resume(cache, out, phase, iteration)
        return f"killed at {phase}@{iteration}", _run_record(out)

    with ThreadPoolExecutor(2) as pool:
        for where, record in pool.map(one, PHASES):
            _assert_same_run(record, uninterrupted, where)


@pytest.mark.parametrize(
    ("best_epoch", "source"), [(2, "epoch-002.pt"), (1, "epoch-001.pt"), (2.5, "last.pt")]
)
def test_best_pt_remade_at_a_resume_is_the_file_the_run_would_have_copied(
    tmp_path: Path, best_epoch: float, source: str
) -> None:
    # The run copies a whole epoch's snapshot (no optimiser state) to best.pt, and last.pt only
    # where a budget ended mid-epoch; a kill before that copy leaves it to the resume.
    for name in ("epoch-001.pt", "epoch-002.pt", "last.pt"):
        (tmp_path / name).write_bytes(name.encode())  # stand-ins: only which file is copied
    resume_iteration = 25 if best_epoch == 2.5 else 20
    best = {"epoch": best_epoch, "iteration": int(best_epoch * 10)}
    restore_best_copy(tmp_path, best, resume_iteration)
    assert (tmp_path / "best.pt").read_bytes() == source.encode()


def test_every_checkpoint_remembers_the_best_error_including_its_own(
    uninterrupted: dict,
) -> None:
    # The truth is the metrics log: best.pt is chosen on the tuning split.
    rows = uninterrupted["metrics"]
    for k, row in enumerate(rows):
        name = f"epoch-{row['epoch']:03d}.pt"
        best_so_far = min(r["tune_top1_error"] for r in rows[: k + 1])
        assert uninterrupted["checkpoints"][name]["best_error"] == best_so_far, name
    best_row = min(rows, key=lambda r: (r["tune_top1_error"], r["iteration"]))
    assert uninterrupted["checkpoints"]["best.pt"]["iteration"] == best_row["iteration"]


@pytest.mark.slow
def test_a_torn_metrics_line_is_rebuilt_on_resume(
    cache: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    out = tmp_path / "run"
    # Killed while writing epoch 1's line: its checkpoints are saved, its line is half there.
    _kill_at(cache, out, "best", 3)
    log = out / "metrics.jsonl"
    assert not log.exists()
    line = json.dumps(uninterrupted["metrics"][0])
    log.write_text(line[: len(line) // 2])  # a line cut off by the kill
    assert read_metrics(out) == [], "the torn line is dropped on reading"
    code, err = _resume(out)
    assert code == 0, err
    _assert_same_run(_run_record(out), uninterrupted, "torn metrics line")


@pytest.mark.slow
def test_a_lost_metrics_log_is_rebuilt_from_the_epoch_snapshots(
    cache: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    # Killed after epoch 2's line, the log then lost: its rows come back from epoch-001.pt and
    # epoch-002.pt, which hold their own rows (the resume had taken the history from the log
    # alone: best.pt rewritten to a worse epoch, epoch 1's line gone, exit status 0).
    out = tmp_path / "run"
    _kill_at(cache, out, "logged", 6)
    (out / "metrics.jsonl").unlink()
    code, err = _resume(out)
    assert code == 0, err
    _assert_same_run(_run_record(out), uninterrupted, "metrics.jsonl lost")


def test_a_log_that_cannot_give_the_best_error_seen_is_refused_naming_it(tmp_path: Path) -> None:
    # The checkpoint saw a best tuning error of 0.5 (epoch 1); the log and epoch 1's snapshot
    # are gone, so its rows (epoch 2's own, 0.7) cannot say which model best.pt must hold.
    (tmp_path / "checkpoints").mkdir()
    row = {"iteration": 20, "epoch": 2, "tune_top1_error": 0.7, "val_top1_error": 0.6}
    payload = {"iteration": 20, "epoch": 2, "metrics": row, "best_error": 0.5}
    with pytest.raises(RunFolderError) as caught:
        kept_metrics(tmp_path, payload)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'metrics.jsonl'}: lacks the evaluation with the best")
    assert "(50.0000%; the best of its lines: 70.0000%)" in message
    assert not (tmp_path / "metrics.jsonl").exists()  # nothing rewritten
    # The same checkpoint with the line of its best epoch logged resumes.
    best = {"iteration": 10, "epoch": 1, "tune_top1_error": 0.5, "val_top1_error": 0.55}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(best) + "\n")
    assert kept_metrics(tmp_path, payload) == [best, row]


@pytest.mark.slow
def test_sigterm_at_start_up_then_resume_starts_afresh(
    cache: Path, tmp_path: Path, uninterrupted: dict
) -> None:
    out = tmp_path / "run"
    process = paused(train_argv(cache, out), "started", 0, tmp_path / "flag")
    process.send_signal(signal.SIGTERM)
    code, err = _finish(process)
    assert code == 143 and "interrupted (SIGTERM)" in err, err
    assert not (out / "checkpoints").exists()  # nothing but the config and the lock
    code, err = _finish(start_tinycnn(["train", "--resume", str(out), "-q"]))
    assert code == 0, err
    _assert_same_run(_run_record(out), uninterrupted, "resumed before the first step")


def test_a_resumed_run_goes_on_in_the_precision_it_trained_in(
    cache: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # bf16 measured fast when the run starts, no faster when it resumes: the resumed steps stay
    # in bf16, as the uninterrupted run's would have.
    import tinycnn.runtime

    monkeypatch.setattr(tinycnn.runtime, "bf16_supported", lambda device: True)
    monkeypatch.setattr(tinycnn.runtime, "bf16_speedup", lambda: 2.0)
    settings = [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=2"]
    first = train(load_config(None, settings), tmp_path / "run", stop_at_iteration=4)
    assert first.stopped == "interrupted" and first.metrics[-1]["precision"] == "bf16"
    monkeypatch.setattr(tinycnn.runtime, "bf16_speedup", lambda: 1.0)
    capsys.readouterr()
    resumed = train(None, tmp_path / "run", resume=True, progress=True)
    assert "bf16 autocast: as the run trained so far" in capsys.readouterr().out
    assert [row["precision"] for row in resumed.metrics] == ["bf16"] * len(resumed.metrics)
    assert resumed.iteration == 6


@pytest.mark.slow
def test_a_kill_before_a_compute_budgets_closing_evaluation_resumes_into_it(
    cache: Path, tmp_path: Path
) -> None:
    from tinycnn.compute import training_flops_per_image
    from tinycnn.models import create_model

    model = create_model(
        "cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32], dropout=0.3
    )
    budget = f"train.max_pflop={7.5 * 16 * training_flops_per_image(model, 56) / 1e15!r}"
    # An iteration snapshot exactly at the budget's last step, then a kill before evaluating it.
    settings = ["--set", budget, "--set", "train.snapshot_every=7"]
    whole = tmp_path / "whole"
    code, err = _finish(start_tinycnn(train_argv(cache, whole, *settings)))
    assert code == 0, err
    expected = _run_record(whole)
    assert [r["iteration"] for r in expected["metrics"]] == [3, 6, 7]  # the budget ends at 7
    out = tmp_path / "cut"
    process = paused(train_argv(cache, out, *settings), "snapshot", 7, tmp_path / "flag")
    process.kill()
    process.communicate(timeout=60)
    code, err = _finish(start_tinycnn(["train", "--resume", str(out), "-q"]))
    assert code == 0, err
    _assert_same_run(_run_record(out), expected, "killed before the budget's evaluation")


def test_a_time_budget_stop_then_resume_equals_the_uninterrupted_run(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    import tinycnn.timing

    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN])
    whole = train(cfg, tmp_path / "whole", progress=False)
    # The budget runs out once, at iteration 4 (mid-epoch 2): a partial evaluation, saved.
    monkeypatch.setattr(tinycnn.timing.Budget, "exhausted", lambda self, iteration: iteration == 4)
    cut = train(cfg, tmp_path / "cut", progress=False)
    assert cut.stopped == "time budget" and cut.metrics[-1]["partial_epoch"]
    partial = cut.metrics[-1]
    # Make the partial evaluation look like the best so far: it must not stay the best.
    partial["tune_top1_error"] = -1.0
    log = tmp_path / "cut" / "metrics.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in cut.metrics))
    monkeypatch.undo()
    train(None, tmp_path / "cut", resume=True, progress=False)
    _assert_same_run(
        _run_record(tmp_path / "cut"), _run_record(tmp_path / "whole"), "time budget, resumed"
    )
    assert whole.iteration == 9


def test_resuming_a_run_that_used_its_time_budget_says_how_to_go_on(
    cache: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", "train.max_minutes=0.0001")) == 0
    assert "time budget" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "used its whole train.max_minutes" in err and str(out / "config.toml") in err
    assert f"tinycnn train --resume {out} --set train.max_minutes=M" in err
    # The M it names goes on: past the minutes trained (here more than the 0.0001 budget),
    # not just past the budget (a resume with M = 0.0002 was refused again).
    used = read_metrics(out)[-1]["elapsed_seconds"] / 60
    named = float(re.search(r"\(M > ([0-9.e-]+), the whole run's minutes\)", err).group(1))
    assert named >= used > 0.0001 and named < used + 0.01, (named, used)
    more = f"train.max_minutes={named + 0.01}"
    assert main(["train", "--resume", str(out), "-q", "--set", more]) == 0
    assert "used its whole" not in capsys.readouterr().err


def test_a_run_its_time_budget_ended_resumes_only_with_a_larger_budget(
    cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    # The budget stops a run while time is left (room for a step and the closing evaluation),
    # so a resume had trained one step more past it, and again at each resume; and a resume
    # refused for a spent budget had first rewritten metrics.jsonl without its final row.
    import tinycnn.timing

    out = tmp_path / "run"
    monkeypatch.setattr(tinycnn.timing.Budget, "exhausted", lambda self, iteration: iteration == 4)
    assert main(train_argv(cache, out, "--set", "train.max_minutes=60")) == 0
    monkeypatch.undo()
    assert json.loads((out / "time-budget.json").read_text()) == {
        "iteration": 4,
        "max_minutes": 60.0,
    }
    before = {p.name: p.read_bytes() for p in [out / "metrics.jsonl", *out.glob("checkpoints/*")]}
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "used its whole train.max_minutes = 60 budget" in err, err
    after = {p.name: p.read_bytes() for p in [out / "metrics.jsonl", *out.glob("checkpoints/*")]}
    assert after == before  # nothing rewritten
    config = out / "config.toml"
    written = config.read_bytes()
    # --set gives it more time (as the message says), and only what a resume may change.
    resume = ["train", "--resume", str(out), "-q", "--set"]
    for refused in ("train.max_minutes=60", "optim.lr=0.5", "data.cache=elsewhere"):
        assert main([*resume, refused]) == 1, refused
        err = capsys.readouterr().err
        assert (refused in err or "= 60 budget" in err) and len(err.splitlines()) == 1, err
    assert "--resume takes --set only for" in err and "train.max_minutes" in err, err
    now = {p.name: p.read_bytes() for p in [out / "metrics.jsonl", *out.glob("checkpoints/*")]}
    assert now == before and config.read_bytes() == written  # nothing rewritten
    assert main([*resume, "train.max_minutes=61"]) == 0
    assert read_metrics(out)[-1]["iteration"] == 9  # on to the schedule's end
    # The run's config.toml records the new budget: a plain --resume later keeps it.
    assert tomllib.loads(config.read_text())["train"]["max_minutes"] == 61.0
    assert config.read_text().replace("61.0", "60.0") == written.decode()


def test_a_resumed_epochs_speed_counts_its_time_before_the_stop(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    import tinycnn.timing

    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN])
    real_pause = tinycnn.faults.pause_point

    def slow_step_4(phase: str, iteration: int) -> None:  # epoch 2's first part takes >= 0.5 s
        if (phase, iteration) == ("step", 4):
            time.sleep(0.5)
        real_pause(phase, iteration)

    monkeypatch.setattr(tinycnn.faults, "pause_point", slow_step_4)
    monkeypatch.setattr(tinycnn.timing.Budget, "exhausted", lambda self, iteration: iteration == 4)
    train(cfg, tmp_path / "run", progress=False)
    monkeypatch.undo()
    rows = train(None, tmp_path / "run", resume=True, progress=False).metrics
    epoch_2 = next(r for r in rows if r["epoch"] == 2)
    # 3 steps of 16 images; the first step (with its 0.5 s) ran before the stop.
    assert epoch_2["seconds"] >= 0.5
    assert epoch_2["images_per_second"] == pytest.approx(48 / epoch_2["seconds"])


def test_an_iteration_snapshot_keeps_its_epochs_step_time(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    import tinycnn.timing

    cfg = load_config(
        None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.snapshot_every=2"]
    )
    real_pause = tinycnn.faults.pause_point

    def slow_step_1(phase: str, iteration: int) -> None:
        if (phase, iteration) == ("step", 1):
            time.sleep(0.5)
        real_pause(phase, iteration)

    monkeypatch.setattr(tinycnn.faults, "pause_point", slow_step_1)
    train(cfg, tmp_path / "run", progress=False)
    saved = load_checkpoint(tmp_path / "run" / "checkpoints" / "iter-0000002.pt")
    assert saved["accumulator"]["seen"] == 32
    assert saved["accumulator"]["seconds"] >= 0.5  # mid-epoch 1: its two steps, the slow one


def test_an_epochs_step_time_leaves_out_its_snapshot_saves(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    # A clock that jumps 1,000 s while snapshot iter-2 is saved (with its EMA recompute): the
    # epoch's seconds and images/s time its steps, not the save.
    import types

    import tinycnn.training

    cfg = load_config(
        None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.snapshot_every=2"]
    )
    jump = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + jump[0])
    real_pause = tinycnn.faults.pause_point

    def slow_save(phase: str, iteration: int) -> None:
        if phase == "snapshot" and iteration == 2:
            jump[0] += 1000.0
        real_pause(phase, iteration)

    monkeypatch.setattr(tinycnn.training, "time", clock)
    monkeypatch.setattr(tinycnn.faults, "pause_point", slow_save)
    rows = train(cfg, tmp_path / "run", progress=False).metrics
    epoch_1 = next(r for r in rows if r["epoch"] == 1)
    assert 0 < epoch_1["seconds"] < 1000, epoch_1
    assert epoch_1["images_per_second"] == pytest.approx(48 / epoch_1["seconds"])


@pytest.mark.slow
def test_an_epoch_evaluated_after_a_kill_reports_its_step_time(cache: Path, tmp_path: Path) -> None:
    # Killed after epoch 1's closing snapshot, before its evaluation: the resume evaluates it.
    out = tmp_path / "run"
    _kill_and_resume(cache, out, "snapshot", 3)
    first = read_metrics(out)[0]
    assert first["epoch"] == 1 and first["seconds"] > 0
    assert first["images_per_second"] == pytest.approx(48 / first["seconds"])


def test_an_older_checkpoint_without_step_time_resumes_with_the_speed_unknown(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    import tinycnn.timing
    from tinycnn.checkpoint import save_checkpoint

    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN])
    monkeypatch.setattr(tinycnn.timing.Budget, "exhausted", lambda self, iteration: iteration == 4)
    train(cfg, tmp_path / "run", progress=False)
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    payload = load_checkpoint(last)
    del payload["accumulator"]["seconds"]  # as written before the field existed
    save_checkpoint(last, payload)
    rows = train(None, tmp_path / "run", resume=True, progress=False).metrics
    epoch_2 = next(r for r in rows if r["epoch"] == 2)
    assert epoch_2["images_per_second"] is None and epoch_2["seconds"] is None
    assert next(r for r in rows if r["epoch"] == 3)["images_per_second"] > 0


def test_stop_at_pauses_where_asked_and_resume_equals_the_uninterrupted_run(
    cache: Path, tmp_path: Path, uninterrupted: dict, capsys
) -> None:
    out = tmp_path / "run"
    assert main([*train_argv(cache, out), "--stop-at", "4"]) == 0  # mid epoch 2 (3 an epoch)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 4
    printed = capsys.readouterr()
    assert f"resume with: tinycnn train --resume {out}" in printed.err
    assert f"paused (--stop-at 4): {out} after 4 iterations; val top-1 error" in printed.out
    assert "interrupted" not in printed.out  # a pause asked for, not a Ctrl-C
    assert main(["train", "--resume", str(out), "-q", "--stop-at", "7"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 7
    assert main(["train", "--resume", str(out), "-q"]) == 0
    _assert_same_run(_run_record(out), uninterrupted, "--stop-at 4, then 7")


def test_a_resume_on_fewer_cores_keeps_the_threads_it_trained_with(
    cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    # train.threads = 0 (every core): trained on 2 cores, resumed where 1 is usable. oneDNN
    # splits its sums by thread, so the resume went on with 1 thread and the run's weights
    # differed from the uninterrupted run's; it now keeps the 2 the run trained with.
    import tinycnn.runtime

    wide = ["model.conv_channels=[32, 32, 64]", "model.fc_widths=[64]", "train.threads=0"]
    sets = [a for s in wide for a in ("--set", s)]
    monkeypatch.setattr(tinycnn.runtime, "usable_cores", lambda: 2)
    assert main(train_argv(cache, tmp_path / "whole", *sets)) == 0
    out = tmp_path / "cut"
    assert main([*train_argv(cache, out, *sets), "--stop-at", "4"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["threads"] == 2
    monkeypatch.setattr(tinycnn.runtime, "usable_cores", lambda: 1)
    assert main(["train", "--resume", str(out), "--stop-at", "5"]) == 0
    assert "resumed with 2 threads, as the run trained (this machine's cores give 1)" in (
        capsys.readouterr().out
    )
    assert main(["train", "--resume", str(out), "-q"]) == 0
    _assert_same_run(_run_record(out), _run_record(tmp_path / "whole"), "resumed on 1 core")


def test_a_set_thread_count_is_kept_and_said_to_change_the_sums() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert keep_threads(1, 0) is None and keep_threads(None, 0) is None  # nothing differs
        note = keep_threads(2, 1)  # set: stays as set
        assert torch.get_num_threads() == 1
        assert note == (
            "train.threads = 1: the run trained with 2 threads, so from here its sums differ "
            "from an uninterrupted run's in their last bits"
        )
        assert keep_threads(2, 0).startswith("resumed with 2 threads")  # every core: the run's
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_the_step_log_windows_span_epochs(uninterrupted: dict) -> None:
    """log_every=2 on 3 iterations an epoch: lines at 2, 4, 6, 8, each of 2 batches."""
    steps = uninterrupted["steps"]
    assert [r["iteration"] for r in steps] == [2, 4, 6, 8]
    assert [r["images"] for r in steps] == [32] * 4


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


def _stopped(cache: Path, out: Path, *extra: str) -> None:
    assert main(train_argv(cache, out, *extra, "--stop-at", "4")) == 0


def test_a_resume_refuses_a_config_toml_edited_since_the_run_trained(
    cache: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    _stopped(cache, out)
    config = out / "config.toml"
    text = config.read_text()
    before = next(line for line in text.splitlines() if line.startswith("lr = "))
    config.write_text(text.replace(before, "lr = 0.5", 1))
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert str(config) in err and "optim.lr = 0.5 (the run trained with" in err, err
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 4  # untouched
    # A time budget is the run's to change (as its message on a used budget says).
    config.write_text(text.replace("max_minutes = 0.0", "max_minutes = 30.0", 1))
    assert main(["train", "--resume", str(out), "-q"]) == 0


def test_a_resume_compares_model_options_as_the_model_resolves_them(
    cache: Path, tmp_path: Path, capsys
) -> None:
    # [model] options are the keys a config sets: one deleted or added must not slip through
    # as "not in both files" (the model would rebuild with its default: dropout 0.0, not 0.3).
    out = tmp_path / "run"
    _stopped(cache, out)
    config = out / "config.toml"
    text = config.read_text()
    assert "dropout = 0.3\n" in text and "activation" not in text
    edits = {
        "dropout deleted": (text.replace("dropout = 0.3\n", ""), "model.dropout = 0.0"),
        "activation added": (
            text.replace("[model]\n", '[model]\nactivation = "prelu"\n'),
            "model.activation = 'prelu'",
        ),
    }
    for name, (edited, words) in edits.items():
        config.write_text(edited)
        capsys.readouterr()
        assert main(["train", "--resume", str(out), "-q"]) == 1, name
        err = capsys.readouterr().err
        assert f"{words} (the run trained with" in err, (name, err)
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 4  # untouched
    # Defaults written out resolve to the same model (a list as the default's tuple): it goes on.
    assert "pool_after" not in text
    config.write_text(
        text.replace("[model]\n", '[model]\nactivation = "relu"\npool_after = [0, 1, 2]\n')
    )
    assert main(["train", "--resume", str(out), "-q"]) == 0


def test_a_resume_refuses_an_exclude_list_edited_since_and_reads_it_from_any_folder(
    cache: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = (cache / "train_files.txt").read_text().splitlines()
    work = tmp_path / "work"
    work.mkdir()
    (work / "skip.txt").write_text(names[0] + "\n")
    monkeypatch.chdir(work)  # a relative data.exclude: recorded absolute
    out = tmp_path / "run"
    _stopped(cache, out, "--set", 'data.exclude="skip.txt"')
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--resume", str(out), "-q", "--stop-at", "6"]) == 0
    (work / "skip.txt").write_text(names[0] + "\n" + names[1] + "\n")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "-q"]) == 1
    assert "trained on other training images" in capsys.readouterr().err


def test_a_resume_without_last_pt_refuses_to_start_over_a_trained_run(
    cache: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_argv(cache, out)) == 0
    (out / "checkpoints" / "last.pt").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "last.pt: missing, but the run has trained" in err and "logged" in err, err
    assert len(read_metrics(out)) > 0  # the old run's logs are left as they were


def test_a_resume_on_a_cache_of_smaller_images_says_to_use_the_run_s_own(
    cache: Path, synth_sources: dict[str, Path], tmp_path: Path, capsys
) -> None:
    from tinycnn.data.prepare import prepare

    out = tmp_path / "run"
    _stopped(cache, out)
    small = prepare(synth_sources["folder"], tmp_path / "c32", size=32, resize=True, progress=False)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--data", str(small.path), "-q"]) == 1
    err = capsys.readouterr().err
    assert "its images are 32x32" in err and "trained on crops of" in err, err
    assert "--set" not in err  # a resume takes no --set

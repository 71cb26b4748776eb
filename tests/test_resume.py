"""Runs survive faults: kill -9 at every phase, torn logs, a second writer, failed starts, signals.

The kill tests run the real CLI in a subprocess. TINYCNN_PAUSE_AT=PHASE@ITERATION makes it wait
at that exact point of the run (see faults.pause_point); the test then kills it with SIGKILL
from outside, resumes it with ``tinycnn train --resume`` in a fresh process, and compares the
run folder with an uninterrupted run's: every metrics line, every checkpoint file, its weights,
and which epoch best.pt holds.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.helpers import RUN, paused, start_tinycnn, train_argv
from tinycnn.checkpoint import load_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.run_folder import read_metrics, read_steps
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


def _kill_and_resume(cache: Path, out: Path, phase: str, iteration: int) -> str:
    process = paused(train_argv(cache, out), phase, iteration, out.with_suffix(".paused"))
    process.kill()  # SIGKILL: no handler, no cleanup
    process.communicate(timeout=60)
    code, err = _finish(start_tinycnn(["train", "--resume", str(out), "-q"]))
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
        }
    return {"metrics": metrics, "steps": steps, "checkpoints": checkpoints}


def _assert_same_run(got: dict, expected: dict, where: str) -> None:
    assert got["metrics"] == expected["metrics"], f"{where}: metrics differ"
    assert got["steps"] == expected["steps"], f"{where}: steps.jsonl differs"
    assert sorted(got["checkpoints"]) == sorted(expected["checkpoints"]), where
    for name, want in expected["checkpoints"].items():
        have = got["checkpoints"][name]
        for key in ("iteration", "best_error", "metrics"):
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
    process = paused(train_argv(cache, out), "best", 3, tmp_path / "flag")
    process.kill()
    process.communicate(timeout=60)
    log = out / "metrics.jsonl"
    assert not log.exists()
    line = json.dumps(uninterrupted["metrics"][0])
    log.write_text(line[: len(line) // 2])  # a line cut off by the kill
    assert read_metrics(out) == [], "the torn line is dropped on reading"
    code, err = _finish(start_tinycnn(["train", "--resume", str(out), "-q"]))
    assert code == 0, err
    _assert_same_run(_run_record(out), uninterrupted, "torn metrics line")


def test_a_damaged_metrics_line_is_named(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", "train.epochs=1")) == 0
    log = out / "metrics.jsonl"
    log.write_text("garbage\n" + log.read_text())
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{log} line 1: not a metrics record" in err and "\n" not in err


def test_a_second_process_on_a_run_folder_is_refused(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    first = paused(train_argv(cache, out), "step", 1, tmp_path / "flag")
    try:
        for argv in (train_argv(cache, out), ["train", "--resume", str(out), "-q"]):
            assert main(argv) == 1
            err = capsys.readouterr().err.strip()
            assert f"in use by another tinycnn process (pid {first.pid}," in err, err
            assert "\n" not in err
    finally:
        first.kill()
        first.communicate(timeout=60)
    # The kernel dropped the dead process's lock: its run resumes.
    assert main(["train", "--resume", str(out), "-q"]) == 0
    assert read_metrics(out)[-1]["iteration"] == 9


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.device=cuda:0", "CUDA is not available"),
        ("data.holdout_per_class=12", "data.holdout_per_class = 12: class 0 has only 12"),
    ],
)
def test_a_failed_start_leaves_no_run_folder(
    cache: Path, tmp_path: Path, capsys, setting: str, message: str
) -> None:
    if setting.startswith("train.device") and torch.cuda.is_available():
        setting = "train.device=cuda:99"
        message = "cuda:99"
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", setting)) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


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


def test_ctrl_c_outside_training_names_itself(monkeypatch, capsys) -> None:
    def interrupted(_args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("tinycnn.cli._cmd_models", interrupted)
    assert main(["models"]) == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


def test_training_refuses_a_damaged_cache(cache: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    images = damaged / "train_images.npy"
    data = bytearray(images.read_bytes())
    data[-5000:] = bytes(5000)  # zeroed pixels: same size, so only a checksum can tell
    images.write_bytes(bytes(data))
    out = tmp_path / "run"
    assert main(train_argv(damaged, out)) == 1
    err = capsys.readouterr().err.strip()
    assert str(images) in err and "--force" in err and "\n" not in err, err
    assert not out.exists()


def test_a_full_disk_stops_training_with_one_line_and_keeps_the_last_checkpoint(
    cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    real_fsync, calls = os.fsync, []

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) > 6:  # the first checkpoints and log lines fit, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", "train.snapshot_every=1")) == 1
    err = capsys.readouterr().err.strip()
    assert "cannot write (disk full)" in err and str(out) in err and "\n" not in err, err
    monkeypatch.setattr(os, "fsync", real_fsync)
    last = load_checkpoint(out / "checkpoints" / "last.pt")  # whole and loadable
    assert last["iteration"] >= 1
    assert not [p for p in (out / "checkpoints").iterdir() if ".tmp-" in p.name]


def test_a_full_disk_while_copying_a_snapshot_to_best_names_best(
    cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    if not getattr(shutil, "_USE_CP_SENDFILE", False):
        pytest.skip("shutil copies through os.sendfile on Linux only")

    def sendfile(out_fd: int, in_fd: int, offset: int, count: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")  # shutil adds both file names

    monkeypatch.setattr(os, "sendfile", sendfile)
    out = tmp_path / "run"
    assert main(train_argv(cache, out)) == 1  # epoch 1's snapshot is the best so far
    err = capsys.readouterr().err.strip()
    best = out / "checkpoints" / "best.pt"
    assert err.startswith(f"tinycnn: error: {best}: cannot write (disk full); "), err
    assert "epoch-" not in err and "\n" not in err, err  # not the snapshot it copies from


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


def test_every_evaluation_shows_progress(cache: Path, tmp_path: Path, capsys) -> None:
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=1"])
    train(cfg, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "evaluate val" in err and "evaluate tune" in err


def test_init_from_weights_that_do_not_fit_is_one_line_before_any_work(
    cache: Path, tmp_path: Path, capsys
) -> None:
    first = tmp_path / "first"
    assert main(train_argv(cache, first, "--set", "train.epochs=1")) == 0
    out = tmp_path / "wider"
    checkpoint = first / "checkpoints" / "last.pt"
    argv = train_argv(cache, out, "--set", "model.fc_widths=[64]", "--init-from", str(checkpoint))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert str(checkpoint) in err and "shape of" in err and "(32, " in err and "\n" not in err, err
    assert not out.exists()


def test_train_starts_with_one_banner_line(cache: Path, tmp_path: Path, capsys) -> None:
    cfg = load_config(
        None,
        [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=1", 'train.precision="fp32"'],
    )
    result = train(cfg, tmp_path / "run", progress=True)
    first = capsys.readouterr().out.splitlines()[0]
    params = sum(p.numel() for p in result.model.parameters())
    for part in (
        f"train cnn5 ({params:,} parameters, ",
        "GFLOP per training image) on cpu, 1 thread,",
        "fp32: as configured",
        "50 images an epoch, 3 iterations x 1 epochs = 3",
        f"run folder {tmp_path / 'run'}",
    ):
        assert part in first, (part, first)


def test_the_banner_says_when_bf16_was_measured_no_faster(
    cache: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    import tinycnn.runtime

    monkeypatch.setattr(tinycnn.runtime, "bf16_supported", lambda device: True)
    monkeypatch.setattr(tinycnn.runtime, "bf16_speedup", lambda: 1.04)
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=1"])
    result = train(cfg, tmp_path / "run", progress=True)
    first = capsys.readouterr().out.splitlines()[0]
    why = "fp32: bf16 convolutions measured 1.04x as fast as fp32's; auto takes bf16 from 1.25x"
    assert why in first, first
    assert result.metrics[-1]["precision"] == "fp32"


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


# (top-1 error, images, classes, learning?) after epoch 1 (results/README.md, "The not-learning
# warning"): healthy runs, then stuck ones.
AFTER_EPOCH_1 = [
    (0.7135, 960, 10, True),  # configs/quick.toml on the mini data: train (loss 2.286 ~ ln 10)
    (0.8020, 500, 10, True),  # the same run's val
    (0.8320, 500, 10, True),  # its val with train.seed=1, the weakest of seeds 0-2
    (0.9594, 99_968, 200, True),  # paper8 with batch norm, full data: train
    (0.9474, 10_000, 200, True),  # configs/paper/paper8_l2_5e-4.toml, full data: val
    (0.8781, 960, 10, False),  # quick.toml with optim.lr=10: train (loss 11.8)
    (0.8940, 500, 10, False),  # the same run's val
    (0.8862, 896, 10, False),  # the paper's as-written preset on the mini data: train (loss 5.50)
    (0.8896, 960, 10, False),  # quick.toml with optim.lr=1e-9: train
    (0.9929, 10_000, 200, False),  # the as-written preset on the full data: val
    (0.9936, 10_000, 200, False),  # the same with model.init = "caffe_xavier": val
    (0.9950, 0, 200, False),  # no images: no evidence
]


@pytest.mark.parametrize(("error", "count", "classes", "expected"), AFTER_EPOCH_1)
def test_learning_is_an_error_clearly_below_chance(
    error: float, count: int, classes: int, expected: bool
) -> None:
    from tinycnn.metrics import clearly_below_chance

    assert clearly_below_chance(error, count, classes) is expected


def test_a_run_at_chance_says_so(cache: Path, tmp_path: Path, capsys) -> None:
    settings = [*RUN, "train.epochs=1", "optim.lr=1e-9", 'model.init="gaussian"']
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *settings])
    train(cfg, tmp_path / "run", progress=True)
    out = capsys.readouterr().out
    assert "warning: after an epoch the model is not learning yet: train top-1 error" in out
    assert "none clearly below the 80.0% of guessing among 5 classes" in out
    assert "batch norm (--set model.batch_norm=true), kaiming init" in out


def _advice(settings: list[str], val_loss: float = 1.6) -> str:
    from tinycnn.advice import not_learning_advice

    row = {"train_top1_error": 0.79, "val_top1_error": 0.8, "val_loss": val_loss}
    return not_learning_advice(row, {"train": 48, "val": 20}, load_config(None, settings), 5)


@pytest.mark.parametrize(
    ("settings", "advised"),
    [
        (
            ["model.name=cnn5"],
            ["batch norm", "kaiming", "warm-up", "a higher optim.lr (it is 0.001)"],
        ),
        (["model.name=cnn5", "model.batch_norm=true"], ["kaiming", "warm-up", "higher"]),
        (["model.name=cnn5", "model.init=kaiming"], ["batch norm", "warm-up", "higher"]),
        (["model.name=cnn5", "schedule.warmup_epochs=1"], ["batch norm", "kaiming", "higher"]),
        (["model.name=resnet18", "model.init=kaiming", "schedule.warmup_epochs=0.5"], ["higher"]),
        (  # configs/quick.toml has all three: only the learning rate is left to advise
            [
                "model.name=cnn5",
                "model.batch_norm=true",
                "model.init=kaiming",
                "schedule.warmup_epochs=1",
            ],
            ["higher"],
        ),
    ],
)
def test_the_advice_names_only_what_the_config_does_not_set(
    settings: list[str], advised: list[str]
) -> None:
    text = _advice(settings)
    tried = text.split(". Try ")[1]
    for what in ("batch norm", "kaiming", "warm-up", "higher"):
        assert (what in tried) is any(what in a for a in advised), text
    for a in advised:
        assert a in tried, text


def test_a_run_too_hot_to_learn_is_told_to_lower_the_lr() -> None:
    text = _advice(["model.name=cnn5", "optim.lr=10.0"], val_loss=144_133.1)
    assert "a lower optim.lr (it is 10; val loss 1.44e+05, far above ln 5 = 1.609)" in text
    assert "higher" not in text


def test_exclude_drops_the_listed_training_images(cache: Path, tmp_path: Path, capsys) -> None:
    from tinycnn.data.cache import load_cache

    files = load_cache(cache).split("train").files
    listed = tmp_path / "ambiguous.txt"
    listed.write_text(f"# two images\n{files[0]}\n{files[7]}\n{files[7]}\n")
    out = tmp_path / "run"
    argv = train_argv(cache, out, "--set", "train.epochs=1")
    assert main([*argv, "--exclude", str(listed)]) == 0
    config = (out / "config.toml").read_text()
    assert f'exclude = "{listed}"' in config
    from tinycnn.config import config_from_dict
    from tinycnn.run_folder import read_resolved_config
    from tinycnn.run_plan import training_rows

    cfg = config_from_dict(read_resolved_config(out))
    train_rows, tune_rows = training_rows(cfg, load_cache(cache))
    assert len(train_rows) == 60 - 10 - 2 + len({0, 7} & set(tune_rows.tolist()))
    assert not {0, 7} & set(train_rows.tolist())
    listed.write_text("train/nope.JPEG\n")
    assert main(train_argv(cache, tmp_path / "bad", "--exclude", str(listed))) == 1
    err = capsys.readouterr().err
    assert f"{listed} line 1: 'train/nope.JPEG' is not a training image" in err
    assert not (tmp_path / "bad").exists()


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


def test_init_from_in_a_config_file_is_honoured_and_resolved(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    first = tmp_path / "first"
    assert main(train_argv(cache, first, "--set", "train.epochs=1")) == 0
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    relative = "first/checkpoints/last.pt"
    second = tmp_path / "second"
    settings = ["--set", f'train.init_from="{relative}"', "--set", "optim.lr=1e-12"]
    assert main(train_argv(cache, second, "--set", "train.epochs=1", *settings)) == 0
    assert f'init_from = "{tmp_path / relative}"' in (second / "config.toml").read_text()
    start = load_checkpoint(first / "checkpoints" / "last.pt")["model"]["state"]
    after = load_checkpoint(second / "checkpoints" / "last.pt")["model"]["state"]
    for name, tensor in start.items():  # lr 1e-12: one epoch moves nothing measurable
        assert torch.allclose(after[name], tensor, atol=1e-6), name


def test_resuming_a_run_that_used_its_time_budget_says_how_to_go_on(
    cache: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", "train.max_minutes=0.0001")) == 0
    assert "time budget" in capsys.readouterr().out
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert "used its whole train.max_minutes" in err and str(out / "config.toml") in err


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
    assert f"resume with: tinycnn train --resume {out}" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "-q", "--stop-at", "7"]) == 0
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 7
    assert main(["train", "--resume", str(out), "-q"]) == 0
    _assert_same_run(_run_record(out), uninterrupted, "--stop-at 4, then 7")


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_stop_at_needs_a_positive_iteration_count(cache: Path, tmp_path: Path, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*train_argv(cache, tmp_path / "run"), "--stop-at", value])
    assert exit_info.value.code == 2
    assert f"{value!r} is not a number of iterations >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_step_log_adds_up_to_the_epochs_training_loss(cache: Path, tmp_path: Path) -> None:
    """steps.jsonl every iteration, weighted by images, gives each epoch's train_loss/error."""
    settings = [f"data.cache={json.dumps(str(cache))}", *RUN, "train.log_every=1"]
    train(load_config(None, settings), tmp_path / "run", progress=False)
    steps, epochs = read_steps(tmp_path / "run"), read_metrics(tmp_path / "run")
    assert [r["iteration"] for r in steps] == list(range(1, 10))
    assert [r["images"] for r in steps] == [16] * 9  # 50 images, batch 16: 3 whole batches
    assert [r["epoch"] for r in steps] == [round(i / 3, 4) for i in range(1, 10)]
    for epoch in epochs:
        rows = [r for r in steps if epoch["iteration"] - 3 < r["iteration"] <= epoch["iteration"]]
        for key in ("train_loss", "train_top1_error"):
            mean = sum(r[key] * r["images"] for r in rows) / sum(r["images"] for r in rows)
            assert mean == pytest.approx(epoch[key], rel=1e-12), key
    assert all(r["lr"] > 0 and r["train_pflop"] > 0 for r in steps)
    pflop = [r["train_pflop"] for r in steps]
    assert pflop == sorted(pflop) and pflop[-1] == pytest.approx(epochs[-1]["train_pflop"])


def test_the_step_log_windows_span_epochs(uninterrupted: dict) -> None:
    """log_every=2 on 3 iterations an epoch: lines at 2, 4, 6, 8, each of 2 batches."""
    steps = uninterrupted["steps"]
    assert [r["iteration"] for r in steps] == [2, 4, 6, 8]
    assert [r["images"] for r in steps] == [32] * 4


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant_temporaries(out: Path) -> tuple[list[Path], list[Path]]:
    """(temporaries left by a killed process, files to keep) in a run folder and its checkpoints.

    Kept: a temporary of a live process (this one: it may be writing it) and a user's file that
    only looks like a temporary.
    """
    dead, live = _dead_pid(), os.getpid()
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    stale = [
        checkpoints / f".last.pt.tmp-{dead}-1a2b3c",
        checkpoints / f".best.pt.tmp-{dead}-4d5e6f7a",
        checkpoints / f".epoch-002.pt.tmp-{dead}-0a1b2c",
        out / f".config.toml.tmp-{dead}-abcdef",
    ]
    kept = [checkpoints / f".last.pt.tmp-{live}-99aa88bb", out / ".notes.tmp-mine"]
    for path in stale + kept:
        path.write_bytes(b"half a file")
    return stale, kept


def test_start_and_resume_remove_the_temporaries_of_killed_processes_only(
    cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    for argv in (
        [*train_argv(cache, out), "--stop-at", "1"],
        ["train", "--resume", str(out), "-q", "--stop-at", "2"],
    ):
        stale, kept = _plant_temporaries(out)
        assert main(argv) == 0, argv[1]
        assert [p.name for p in stale if p.exists()] == [], argv[1]
        assert all(p.exists() for p in kept), argv[1]
        for path in kept:
            path.unlink()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 2

"""The training engine: learning, exact resume, fine-tuning, divergence, checkpoints, the CLI, the
banner line, a full disk."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import RUN, SMALL, train_argv
from tinycnn.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.augment import AugmentConfig
from tinycnn.data.prepare import prepare
from tinycnn.errors import ConfigError, TrainingDivergedError
from tinycnn.evaluation import evaluate
from tinycnn.models import create_model
from tinycnn.training import read_metrics, train


def _cfg(cache: Path, *overrides: str):
    return load_config(None, [f"data.cache={json.dumps(str(cache))}", *SMALL, *overrides])


def test_tiny_model_overfits_a_tiny_batch(cache: Path) -> None:
    from tinycnn.data.cache import load_cache

    torch.manual_seed(0)
    split = load_cache(cache).split("train")
    x = torch.from_numpy(np.array(split.images[:32])).permute(0, 3, 1, 2).float() / 255
    x = x[:, :, 4:60, 4:60].contiguous()
    y = torch.from_numpy(split.labels[:32].astype(np.int64))
    model = create_model("cnn5", num_classes=5, conv_channels=[16, 16, 16], fc_widths=[64])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy == 1.0 and loss.item() < 0.05


def test_training_learns_and_writes_the_run_folder(cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(_cfg(cache, "train.epochs=6", "data.holdout_per_class=2"), run, progress=False)
    metrics = read_metrics(run)
    assert len(metrics) == 6 and metrics == result.metrics
    for row in metrics:
        for key in (
            "epoch",
            "iteration",
            "train_loss",
            "train_top1_error",
            "val_top1_error",
            "val_top5_error",
            "tune_top1_error",
            "lr",
            "seconds",
        ):
            assert key in row
        assert all(0 <= row[k] <= 1 for k in row if k.endswith("_error"))
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"]
    assert metrics[-1]["val_top1_error"] < 0.6  # chance is 0.8 on 5 classes
    names = {p.name for p in (run / "checkpoints").iterdir()}
    assert {"last.pt", "best.pt", "epoch-001.pt", "epoch-006.pt"} <= names
    resolved = load_config(run / "config.toml")
    assert resolved.train.epochs == 6 and resolved.model.options["conv_channels"] == [8, 8, 8]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoints_are_self_describing_and_weights_only(cache: Path, tmp_path: Path) -> None:
    result = train(_cfg(cache, "train.epochs=1"), tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    torch.load(path, weights_only=True)  # no pickled code needed
    payload = load_checkpoint(path)
    assert payload["model"]["name"] == "cnn5" and len(payload["classes"]) == 5
    assert payload["normalization"]["kind"] == "channel" and payload["input_size"] == 56
    assert payload["config"]["optim"]["name"] == "nesterov"
    assert payload["epoch"] == 1 and payload["iteration"] == 3
    # No random-generator state: every step reseeds from (seed, iteration), so none is needed.
    assert "optimizer" in payload and "rng" not in payload
    model = model_from_checkpoint(payload)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor.cpu())
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(os.system))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(evil)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("stop_at", [2, 3, 7])  # mid-epoch, at an epoch end, late
def test_interrupted_and_resumed_equals_uninterrupted(
    cache: Path, tmp_path: Path, stop_at: int
) -> None:
    cfg = _cfg(
        cache, "train.epochs=3", "augment.tint=10.0", "augment.noise_std=1.0", "model.dropout=0.3"
    )
    whole = train(cfg, tmp_path / "whole", progress=False)
    cut = train(cfg, tmp_path / "cut", progress=False, stop_at_iteration=stop_at)
    assert cut.stopped == "interrupted" and cut.iteration == stop_at
    torch.manual_seed(12345)  # the process's generator wherever it is: the resume must not care
    torch.rand(stop_at)
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    assert resumed.iteration == whole.iteration == 9
    expected = _weights(whole.model)
    for name, tensor in _weights(resumed.model).items():
        assert torch.equal(tensor, expected[name]), name
    strip = ("seconds", "elapsed_seconds", "images_per_second")
    assert [
        {k: v for k, v in r.items() if k not in strip} for r in read_metrics(tmp_path / "cut")
    ] == [{k: v for k, v in r.items() if k not in strip} for r in whole.metrics]


def test_init_from_applies_new_hyperparameters(cache: Path, tmp_path: Path) -> None:
    from tinycnn.run_plan import plan_run
    from tinycnn.runtime import make_runtime
    from tinycnn.session import load_session

    train(_cfg(cache, "train.epochs=1"), tmp_path / "a", progress=False)
    snapshot = tmp_path / "a" / "checkpoints" / "epoch-001.pt"
    cfg = _cfg(
        cache,
        "train.epochs=1",
        "optim.lr=5e-6",
        "optim.weight_decay=1e-5",
        "model.dropout=0.1",
        'model.init="default"',
    )
    plan = replace(plan_run(cfg, init_from=snapshot), runtime=make_runtime(threads=1))
    session = load_session(plan, tmp_path / "b")
    saved = load_checkpoint(snapshot)["model"]["state"]
    for name, tensor in session.model.state_dict().items():
        assert torch.equal(tensor, saved[name]), "starts from the snapshot's weights"
    assert session.optimizer.param_groups[0]["weight_decay"] == 1e-5
    dropouts = [m.p for m in session.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.1]
    result = train(cfg, tmp_path / "b", init_from=snapshot, progress=False)
    assert read_metrics(tmp_path / "b")[0]["lr"] == 5e-6
    assert result.iteration == 3  # epochs count afresh: the new run's own schedule


def test_init_from_a_different_class_list_is_an_error(
    cache: Path, tmp_path: Path, mini_archive: Path
) -> None:
    other = prepare(mini_archive, tmp_path / "mini", progress=False).path
    train(_cfg(other, "train.epochs=1", "train.batch_size=250"), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="different class list"):
        train(
            _cfg(cache, "train.epochs=1"),
            tmp_path / "b",
            init_from=tmp_path / "a" / "checkpoints" / "last.pt",
            progress=False,
        )


def test_divergence_stops_and_keeps_the_last_good_checkpoint(cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(
        cache,
        "train.epochs=50",
        "optim.lr=1e6",
        'optim.name="sgd"',
        "train.snapshot_every=1",
        'data.normalization="none"',
    )
    with pytest.raises(TrainingDivergedError, match=r"loss became (nan|inf) at iteration"):
        train(cfg, tmp_path / "run", progress=False)
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert all(torch.isfinite(t).all() for t in last["model"]["state"].values())


def test_time_budget_stops_with_an_evaluated_checkpoint(cache: Path, tmp_path: Path) -> None:
    result = train(
        _cfg(cache, "train.epochs=1000", "train.max_minutes=0.02"), tmp_path / "r", progress=False
    )
    assert result.stopped == "time budget" and result.iteration < 3000
    assert "val_top1_error" in result.metrics[-1]
    assert (
        load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")["iteration"] == result.iteration
    )


def test_snapshots_every_n_iterations_with_retention(cache: Path, tmp_path: Path) -> None:
    train(
        _cfg(cache, "train.epochs=4", "train.snapshot_every=2", "train.keep_snapshots=3"),
        tmp_path / "r",
        progress=False,
    )
    # Iteration snapshots at 2, 4, ..., 12: the 3 newest stay; epoch snapshots are never pruned.
    kept = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir())
    epochs = [f"epoch-{k:03d}.pt" for k in (1, 2, 3, 4)]
    iters = ["iter-0000008.pt", "iter-0000010.pt", "iter-0000012.pt"]
    assert kept == ["best.pt", *epochs, *iters, "last.pt"]


def _argv(cache: Path, out: Path, *extra: str) -> list[str]:
    sets = [a for item in SMALL for a in ("--set", item)]
    return ["train", "--data", str(cache), *sets, *extra, "--out", str(out), "-q"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "model.dropuot=0.1"], "has no option 'dropuot' (did you mean 'dropout'?)"),
        (["--set", "optim.lr=0"], "optim.lr = 0.0: must be a positive number"),
        (["--set", "train.epochs=two"], "train.epochs = 'two': expected int"),
        (["--set", "model.input_size=3"], "input_size"),
    ],
)
def test_bad_train_arguments_fail_before_any_work(
    cache: Path, tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    out = tmp_path / "run"
    assert main(_argv(cache, out, *extra)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tinycnn: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_augment_config_is_checked_once_at_load_not_per_step(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    cfg = _cfg(cache, "train.epochs=2")  # 6 steps
    bad = _cfg(cache, "train.epochs=1")
    bad.augment.tint = -1.0  # set in Python after load_config checked the config
    checked = []
    validate = AugmentConfig.validate

    def counted(self: AugmentConfig, image_size: tuple[int, int] | None = None) -> None:
        checked.append(image_size)
        validate(self, image_size)

    monkeypatch.setattr(AugmentConfig, "validate", counted)
    train(cfg, tmp_path / "run", progress=False)
    assert checked == [(64, 64)]  # plan_run, for the cache's images
    with pytest.raises(ConfigError, match=r"augment\.tint must be a number >= 0, got -1.0"):
        train(bad, tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad" / "checkpoints" / "last.pt").exists()


def test_cli_train_then_refuse_to_overwrite(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(_argv(cache, out, "--set", "train.epochs=1")) == 0
    assert "val top-1 error" in capsys.readouterr().out
    assert main(_argv(cache, out, "--set", "train.epochs=1")) == 1
    assert "already holds a run; continue it with --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_saves_and_resume_finishes(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    argv = _argv(cache, out, "--set", "train.epochs=40")
    code = f"from tinycnn.cli import main; raise SystemExit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoints" / "epoch-002.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err  # 128 + SIGTERM
    assert f"resume with: tinycnn train --resume {out}" in err
    stopped_at = load_checkpoint(out / "checkpoints" / "last.pt")["iteration"]
    assert 6 <= stopped_at < 120, "stopped mid-run, with its position saved"
    assert main(["train", "--resume", str(out), "--set", "train.epochs=2", "-q"]) == 1
    err = capsys.readouterr().err
    assert "--resume takes --set only for" in err and "train.max_minutes" in err, err
    assert main(["train", "--resume", str(out), "--config", "x.toml", "-q"]) == 1
    assert "takes no --config, --init-from, --exclude or --out" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "-q"]) == 0
    assert len(read_metrics(out)) == 40 and read_metrics(out)[-1]["iteration"] == 120


def test_tensorboard_option_needs_the_package(cache: Path, tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the tensorboard package"):
            train(_cfg(cache, "train.tensorboard=true"), tmp_path / "r", progress=False)
        assert not (tmp_path / "r").exists()
    else:
        train(
            _cfg(cache, "train.tensorboard=true", "train.epochs=1"), tmp_path / "r", progress=False
        )
        assert any((tmp_path / "r" / "tensorboard").iterdir())


def test_a_cyclic_schedule_restarts_and_snapshots_each_cycle_end(
    cache: Path, tmp_path: Path
) -> None:
    from tinycnn.members import resolve_members

    # 4 epochs of 3 iterations, 3 cycles: ends after iterations 4, 8 and 12; within a cycle of
    # 4 the cosine factors are 1, (1 + cos(pi/4)) / 2, 1/2, (1 + cos(3 pi/4)) / 2.
    cfg = _cfg(
        cache, "train.epochs=4", 'schedule.name="cyclic"', "schedule.cycles=3", "train.log_every=1"
    )
    train(cfg, tmp_path / "r", progress=False)
    steps = [json.loads(line) for line in (tmp_path / "r" / "steps.jsonl").read_text().splitlines()]
    factors = [1, (1 + 2**-0.5) / 2, 0.5, (1 - 2**-0.5) / 2] * 3
    assert [row["lr"] for row in steps] == pytest.approx([0.02 * f for f in factors])
    checkpoints = tmp_path / "r" / "checkpoints"
    ends = [checkpoints / f"cycle-{k:02d}.pt" for k in (1, 2, 3)]
    assert [load_checkpoint(p)["iteration"] for p in ends] == [4, 8, 12]
    assert resolve_members(f"{tmp_path / 'r'}@cycles") == ends
    assert resolve_members(f"{tmp_path / 'r'}@cycles:2") == ends[1:]
    final, last = (
        load_checkpoint(ends[-1])["model"],
        load_checkpoint(checkpoints / "last.pt")["model"],
    )
    assert all(torch.equal(final["state"][k], v) for k, v in last["state"].items())


def test_snapshots_due_on_one_step_write_the_resume_point_once(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    import tinycnn.session

    written: list[str] = []
    real = tinycnn.session.save_checkpoint

    def recording(path, payload):
        written.append(Path(path).name)
        return real(path, payload)

    monkeypatch.setattr(tinycnn.session, "save_checkpoint", recording)
    # 4 epochs of 3 iterations, cycles ending after 4, 8 and 12, a snapshot every 4: at each
    # of those steps iter-N and cycle-NN fall together.
    cycles = ('schedule.name="cyclic"', "schedule.cycles=3", "train.snapshot_every=4")
    train(_cfg(cache, "train.epochs=4", *cycles), tmp_path / "r", progress=False)
    assert written[:5] == ["epoch-001.pt", "last.pt", "iter-0000004.pt", "cycle-01.pt", "last.pt"]
    # Resume points: epoch ends 3, 6, 9, 12 and the snapshot steps 4, 8, 12: 7, not 10.
    assert written.count("last.pt") == 7


def test_cycles_need_the_cyclic_schedule(cache: Path) -> None:
    with pytest.raises(ConfigError, match=r'schedule\.cycles = 3 needs schedule\.name = "cyclic"'):
        _cfg(cache, 'schedule.name="cosine"', "schedule.cycles=3")


def test_apart_takes_snapshots_n_iterations_back_from_the_final_model(
    cache: Path, tmp_path: Path
) -> None:
    from tinycnn.members import resolve_members

    # 4 epochs of 3 iterations: iteration snapshots at 2, 4, ..., 12 and epoch ones at 3, 6, 9,
    # 12 (epoch-004 stands for iteration 12). Targets 12, 7, 2: 7 is as near 6 as 8 (the later
    # one is taken); with spacing 3, targets 12, 9, 6 are epoch ends.
    train(_cfg(cache, "train.epochs=4", "train.snapshot_every=2"), tmp_path / "r", progress=False)
    checkpoints = tmp_path / "r" / "checkpoints"
    assert resolve_members(f"{tmp_path / 'r'}@apart:5:3") == [
        checkpoints / "iter-0000002.pt",
        checkpoints / "iter-0000008.pt",
        checkpoints / "epoch-004.pt",
    ]
    assert resolve_members(f"{tmp_path / 'r'}@apart:3:3") == [
        checkpoints / f"epoch-{e:03d}.pt" for e in (2, 3, 4)
    ]
    # as many members as snapshots: each snapshot once (iter 2, 4, 8, 10 and the 4 epochs)
    every = resolve_members(f"{tmp_path / 'r'}@apart:1:8")
    assert len(every) == len(set(every)) == 4 + 4
    with pytest.raises(ConfigError, match="selects 8 of the 9 snapshots asked for"):
        resolve_members(f"{tmp_path / 'r'}@apart:1:9")  # more: an error, not a smaller ensemble
    with pytest.raises(ConfigError, match="is not a positive whole number"):
        resolve_members(f"{tmp_path / 'r'}@apart:0:3")


def test_a_run_stores_absolute_paths_and_resumes_where_its_cache_moved(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch, capsys
) -> None:
    from PIL import Image

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    source = Path(os.path.relpath(synth_sources["zip"], work))  # relative, as a user types
    prepare(source, Path("cache"), progress=False)
    argv = ["train", "--data", "cache", "--out", "run", "-q", "--stop-at", "3"]
    argv += [f"--set={o}" for o in (*SMALL, "train.epochs=2")]
    assert main(argv) == 0
    assert load_config(work / "run" / "config.toml").data.cache == str(work / "cache")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    info = ["info", str(work / "cache"), "--verify"]
    assert main(info) == 0 and str(synth_sources["zip"]) in capsys.readouterr().out
    # The cache moves: the resume says so, and how to point at it; the run is left as it was.
    (work / "cache").rename(tmp_path / "moved")
    before = {p: p.read_bytes() for p in (work / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["train", "--resume", str(work / "run"), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"the run's cache {work / 'cache'} is gone (moved or deleted)" in err
    assert f"tinycnn train --resume {work / 'run'} --data CACHE" in err
    unchanged = {p: p.read_bytes() for p in (work / "run").rglob("*") if p.is_file()}
    assert {p: v for p, v in unchanged.items() if p.name != ".lock"} == {
        p: v for p, v in before.items() if p.name != ".lock"
    }
    # Other data with the same classes is refused; the moved cache is taken and remembered.
    other = Path(shutil.copytree(synth_sources["folder"], tmp_path / "other"))
    image = sorted((other / "train").rglob("*.JPEG"))[0]
    Image.fromarray(255 - np.asarray(Image.open(image))).save(image)  # one image changed
    prepare(other, tmp_path / "other-cache", progress=False)
    resume = ["train", "--resume", str(work / "run"), "-q", "--data"]
    assert main([*resume, str(tmp_path / "other-cache")]) == 1
    assert "not the data" in capsys.readouterr().err
    assert main([*resume, str(tmp_path / "moved")]) == 0
    assert load_config(work / "run" / "config.toml").data.cache == str(tmp_path / "moved")
    assert read_metrics(work / "run")[-1]["iteration"] == 6  # 2 epochs of 3: finished


def test_a_run_on_a_cache_with_whole_file_checksums_resumes_on_its_rebuild(
    synth_sources: dict[str, Path], tmp_path: Path, capsys
) -> None:
    # A run trained on a cache prepared before the row digests (whole-file sha256, another
    # content id), then the cache rebuilt by this tinycnn from the same images: the same data.
    from tests.test_cache import _old_scheme

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    _old_scheme(cache)
    run = tmp_path / "run"
    assert main(train_argv(cache, run, "--stop-at", "3")) == 0
    prepare(synth_sources["folder"], cache, progress=False, force=True)
    assert main(["train", "--resume", str(run), "-q"]) == 0, capsys.readouterr().err


def test_snapshots_hold_the_model_and_last_the_whole_resume_state(
    cache: Path, tmp_path: Path
) -> None:
    cfg = _cfg(cache, "train.epochs=2", "train.ema_decay=0.9", "train.snapshot_every=2")
    result = train(cfg, tmp_path / "run", progress=False)
    checkpoints = tmp_path / "run" / "checkpoints"
    last = load_checkpoint(checkpoints / "last.pt")
    assert {"optimizer", "train_state", "accumulator"} <= set(last)
    names = ["epoch-001.pt", "epoch-002.pt", "iter-0000002.pt", "iter-0000004.pt", "best.pt"]
    for name in names:
        snapshot = load_checkpoint(checkpoints / name)
        assert "optimizer" not in snapshot and "train_state" not in snapshot, name
        assert set(last) - set(snapshot) == {"optimizer", "train_state"}, name
    # The final snapshot's model is the run's EMA, and evaluates to the logged numbers.
    final = load_checkpoint(checkpoints / "epoch-002.pt")["model"]["state"]
    for key, tensor in last["model"]["state"].items():
        assert torch.equal(final[key], tensor), key
    (evaluation,) = evaluate(checkpoints / "epoch-002.pt", cache)
    assert evaluation.top1_error == result.metrics[-1]["val_top1_error"]
    # A snapshot is smaller by the momentum buffers and the raw weights: about two models.
    weights = sum(t.numel() * t.element_size() for t in final.values())
    saved = (checkpoints / "last.pt").stat().st_size - (checkpoints / "epoch-002.pt").stat().st_size
    assert saved > 1.5 * weights


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
    assert "resuming" not in first
    # A resume says where it goes on from, as a part of its own.
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=2"])
    train(cfg, tmp_path / "two", progress=False, stop_at_iteration=2)
    capsys.readouterr()
    train(None, tmp_path / "two", resume=True, progress=True)
    first = capsys.readouterr().out.splitlines()[0]
    assert f"; resuming at iteration 2; run folder {tmp_path / 'two'}" in first, first


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

"""epochs.py: an epoch's end: its evaluation (plain cross-entropy, with progress), best.pt chosen
on the tuning split, TensorBoard, a full disk while copying best.pt."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import FP32, RUN, normalised, small_config, train_argv
from tinycnn.checkpoint import load_checkpoint, model_from_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.splits import holdout_split
from tinycnn.evaluation import evaluate
from tinycnn.training import read_metrics, train


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


def test_every_evaluation_shows_progress(cache: Path, tmp_path: Path, capsys) -> None:
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *RUN, "train.epochs=1"])
    train(cfg, tmp_path / "run", progress=True)
    err = capsys.readouterr().err
    assert "evaluate val" in err and "evaluate tune" in err


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

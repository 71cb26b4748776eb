"""epochs.py: an epoch's end: its evaluation (plain cross-entropy, with progress), best.pt chosen
on the tuning split, TensorBoard, a full disk while copying best.pt."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from tests.helpers import RUN, train_argv
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.training import train


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

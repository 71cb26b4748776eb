"""steps.py: one training step, watched through hooks: what the first layer sees, the
label-smoothed loss, gradient clipping, and the step log (steps.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import RUN
from tinycnn.config import load_config
from tinycnn.run_folder import read_metrics, read_steps
from tinycnn.training import train


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

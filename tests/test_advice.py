"""advice.py: the not-learning warning after the first epoch: when it shows, and what it advises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import tinycnn

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_quick_recipe_is_not_warned_as_stuck(
    mini_archive: Path, tmp_path: Path, capsys
) -> None:
    # Epoch 1 of the README's first real-data recipe: the training loss (2.286 with seed 0)
    # is within 1% of ln 10 behind warm-up and label smoothing, but the errors are far below
    # chance (train 71%, val 80%, chance 90%): a healthy start, not a stuck one.
    cache = tinycnn.prepare(mini_archive, tmp_path / "mini", progress=False).path
    settings = [f"data.cache={json.dumps(str(cache))}", "train.epochs=1", "train.threads=1"]
    cfg = tinycnn.load_config(ROOT / "configs" / "quick.toml", settings)
    result = tinycnn.train(cfg, tmp_path / "run", progress=True)
    assert abs(result.metrics[0]["train_loss"] - np.log(10)) < 0.01 * np.log(10)
    assert "warning" not in capsys.readouterr().out

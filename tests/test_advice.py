"""advice.py: the not-learning warning after the first epoch: when it shows, and what it advises."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import tinycnn
from tests.helpers import RUN
from tinycnn.config import load_config
from tinycnn.training import train

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_quick_recipe_is_not_warned_as_stuck(
    mini_archive: Path, tmp_path: Path, capsys
) -> None:
    # Epoch 1 of the README's first real-data recipe: the training loss (2.257 with seed 0; its
    # warm-up of 1 epoch is half of this 1-epoch run) is within 2% of ln 10 behind warm-up and
    # label smoothing, but the errors are far below chance (chance 90%): a healthy start, not
    # a stuck one.
    cache = tinycnn.prepare(mini_archive, tmp_path / "mini", progress=False).path
    settings = [f"data.cache={json.dumps(str(cache))}", "train.epochs=1", "train.threads=1"]
    cfg = tinycnn.load_config(ROOT / "configs" / "quick.toml", settings)
    result = tinycnn.train(cfg, tmp_path / "run", progress=True)
    assert abs(result.metrics[0]["train_loss"] - np.log(10)) < 0.02 * np.log(10)
    assert "warning" not in capsys.readouterr().out


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

"""Training compute: FLOPs per image checked against hand counts, train_pflop in the log, and
train.max_pflop's budget."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import cnn5_config
from tinycnn.compute import training_flops_per_image
from tinycnn.data.prepare import prepare
from tinycnn.members import resolve_members
from tinycnn.models import create_model
from tinycnn.training import train


def _conv(c_in: int, c_out: int, side: int) -> int:
    return 2 * c_in * 9 * c_out * side * side  # 3x3, padding 1: a multiply-add is 2 FLOPs


def _paper8_forward() -> int:
    convs = _conv(3, 128, 56) + _conv(128, 128, 56) + 2 * _conv(128, 128, 28)
    convs += _conv(128, 128, 14)
    return convs + 2 * (6272 * 400 + 400 * 400 + 400 * 200)


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        # forward: conv 2*27*4*64 + fc 2*256*10; backward: the conv's weight gradient only (the
        # image needs none), the fc's weight and input gradients.
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
            ),
            8,
            2 * (2 * 27 * 4 * 64) + 3 * (2 * 256 * 10),
        ),
        # paper8 at 56x56: forward 1.47 GFLOP; backward twice that, less conv1's input gradient.
        (
            lambda: create_model("paper8", num_classes=200, input_size=56),
            56,
            3 * _paper8_forward() - _conv(3, 128, 56),
        ),
    ],
)
def test_training_flops_per_image_match_a_hand_count(model, size: int, expected: int) -> None:
    assert training_flops_per_image(model(), size) == expected


def test_metrics_log_cumulative_training_pflop(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    cfg = cnn5_config(cache, "train.epochs=2")
    result = train(cfg, tmp_path / "run", progress=False)
    model = create_model("cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32])
    per_image = training_flops_per_image(model, 56)
    steps = [row["iteration"] for row in result.metrics]
    assert steps == [3, 6]  # 60 images, batch 16
    for row in result.metrics:
        assert row["train_pflop"] == pytest.approx(row["iteration"] * 16 * per_image / 1e15)
        # The machine the figures come from, with its vector unit and threads.
        capability = torch.backends.cpu.get_cpu_capability()
        assert f"({capability}, 1 thread), fp32" in row["hardware"] or "bf16" in row["hardware"]
    assert "GFLOP per image" in (tmp_path / "run" / "config.toml").read_text()


def test_max_pflop_ends_the_schedule_on_the_budget(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    import math

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    model = create_model("cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32])
    step = 16 * training_flops_per_image(model, 56)  # one batch of 16
    cfg = cnn5_config(
        cache,
        'schedule.name="cosine"',
        "train.epochs=10",
        f"train.max_pflop={5.5 * step / 1e15!r}",  # room for 5 steps, not 6
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert [row["iteration"] for row in result.metrics] == [3, 5]  # epoch 1, then the budget
    last = result.metrics[-1]
    assert last["epoch"] == pytest.approx(5 / 3) and not last["partial_epoch"]
    assert last["train_pflop"] == pytest.approx(5 * step / 1e15)
    assert last["train_pflop"] <= cfg.train.max_pflop
    # The cosine schedule spans the 5 budgeted steps: step 4 (0-based) has lr 0.05 * (1 +
    # cos(4/5 pi)) / 2, not the 0.05 * (1 + cos(4/30 pi)) / 2 of a 30-step schedule.
    assert last["lr"] == pytest.approx(0.05 * (1 + math.cos(0.8 * math.pi)) / 2)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-001.pt", "last.pt"]
    # The final weights (iteration 5) are only in last.pt: the most recent snapshot for @last:K.
    checkpoints = tmp_path / "run" / "checkpoints"
    chosen = resolve_members(f"{tmp_path / 'run'}@last:2")
    assert chosen == [checkpoints / "epoch-001.pt", checkpoints / "last.pt"]
    assert resolve_members(f"{tmp_path / 'run'}@last:1") == [checkpoints / "last.pt"]
    (tmp_path / "run" / "metrics.jsonl").unlink()  # then the checkpoint says where it is
    assert resolve_members(f"{tmp_path / 'run'}@last:1") == [checkpoints / "last.pt"]


def test_a_budget_ended_run_prints_its_epoch_in_hundredths(
    synth_sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    model = create_model("cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32])
    step = 16 * training_flops_per_image(model, 56)
    budget = f"train.max_pflop={5.5 * step / 1e15!r}"  # 5 steps of 3 an epoch: 1.666... epochs
    result = train(cnn5_config(cache, "train.epochs=10", budget), tmp_path / "run", progress=True)
    assert result.metrics[-1]["epoch"] == pytest.approx(5 / 3)  # the log keeps the fraction
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 1.66"]  # not 1.6666...

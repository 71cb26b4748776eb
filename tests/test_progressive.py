"""Progressive resizing (augment.sizes): the schedule, the resize, FLOPs, evaluation, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinycnn.compute import training_flops_per_image
from tinycnn.config import load_config
from tinycnn.data.augment import AugmentConfig, center_crop, resize_matrix
from tinycnn.data.cache import load_cache
from tinycnn.data.normalization import Normalization
from tinycnn.data.prepare import prepare
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate
from tinycnn.export import export_model
from tinycnn.inference import load_model
from tinycnn.models import create_model
from tinycnn.runtime import make_runtime
from tinycnn.training import train

FAST = {"width": 8}  # a small fastnet: the schedule is what is tested, not the net


def test_sizes_per_cycle_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"AugmentConfig\.sizes_per_cycle must be true or false"):
        AugmentConfig(sizes=[32, 64], size_until=[0.5], sizes_per_cycle=1).validate()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("augment.sizes_per_cycle=true",), "needs augment.sizes and schedule.name"),
        (
            ("augment.sizes_per_cycle=true", "augment.sizes=[32, 56]", "augment.size_until=[0.5]"),
            "needs augment.sizes and schedule.name",
        ),
        (
            ('schedule.name="cyclic"', "augment.sizes_per_cycle=1"),
            "augment.sizes_per_cycle = 1: expected bool",
        ),
    ],
)
def test_sizes_per_cycle_without_cycles_or_sizes_is_refused(extra, message) -> None:
    with pytest.raises(ConfigError, match=message):
        _cfg(Path("unused"), *extra)


@pytest.mark.parametrize(
    ("sizes", "until", "message"),
    [
        ([32, 48], [], "one fraction for each size but the last (1 for"),
        ([32, 48], [0.5, 0.7], "one fraction for each size but the last (1 for"),
        ([32, 48, 64], [0.7, 0.4], "rise strictly"),
        ([32, 48], [0.0], "rise strictly"),
        ([32, 48], [1.0], "rise strictly"),
        ([32, 0], [0.5], "whole numbers > 0"),
        ([32, 48.0], [0.5], "whole numbers > 0"),
    ],
)
def test_impossible_size_schedules_are_named(sizes, until, message) -> None:
    with pytest.raises(ConfigError, match=r"AugmentConfig\.size") as error:
        AugmentConfig(sizes=sizes, size_until=until).validate()
    assert message in str(error.value)


def test_resize_weights_by_hand() -> None:
    # Halving with antialiased bilinear: a triangle filter two input pixels wide on each side of
    # the output pixel's centre (2k + 0.5): weights 1/8, 3/8, 3/8, 1/8 inside; at the border
    # the triangle is cut and renormalised: 0.75, 0.75, 0.25 over 1.75.
    weights = resize_matrix(8, 4)
    assert weights.shape == (8, 4)
    expected = torch.zeros(8, 4)
    expected[0:3, 0] = torch.tensor([3, 3, 1]) / 7
    expected[1:5, 1] = torch.tensor([1, 3, 3, 1]) / 8
    expected[3:7, 2] = torch.tensor([1, 3, 3, 1]) / 8
    expected[5:8, 3] = torch.tensor([1, 3, 3]) / 7
    torch.testing.assert_close(weights, expected)
    assert torch.equal(resize_matrix(6, 6), torch.eye(6))


@pytest.mark.parametrize("side", [24, 32, 48, 80])
def test_resized_views_are_torchs_antialiased_bilinear(side: int) -> None:
    from tinycnn.data.augment import resize_views

    x = torch.randn(3, 3, 56, 56).contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    actual = resize_views(x, side)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert actual.is_contiguous(memory_format=torch.channels_last)


def _cfg(cache: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            "model.name=fastnet",
            "model.width=8",
            'model.init="kaiming"',
            'data.normalization="channel"',
            'optim.name="nesterov"',
            "optim.lr=0.05",
            "train.batch_size=16",
            "train.threads=1",
            "train.deterministic=true",
            "augment.crop=56",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def synth_cache(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("progressive")
    return prepare(synth_sources["folder"], root / "cache", progress=False).path


def _record_training_inputs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The input side of every training forward pass, in order (eval passes left out)."""
    import tinycnn.steps as steps

    sides: list[int] = []
    original = steps.resize_views

    def spy(x: torch.Tensor, size: int) -> torch.Tensor:
        out = original(x, size)
        sides.append(out.shape[-1])
        return out

    monkeypatch.setattr(steps, "resize_views", spy)
    return sides


def test_training_follows_the_sizes_and_counts_each_steps_flops(
    synth_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = _record_training_inputs(monkeypatch)
    sizes = ("augment.sizes=[32, 48, 56]", "augment.size_until=[0.25, 0.5]")
    cfg = _cfg(synth_cache, *sizes, "train.epochs=4")
    result = train(cfg, tmp_path / "run", progress=False)
    # 60 images, batch 16: 3 iterations an epoch, 12 in all; sizes change at 3 and 6.
    assert sides == [32] * 3 + [48] * 3 + [56] * 6
    model = create_model("fastnet", num_classes=5, **FAST)
    per_image = {side: training_flops_per_image(model, side) for side in (32, 48, 56)}
    spent = np.cumsum([16 * per_image[side] for side in sides])
    rows = result.metrics
    assert [row["iteration"] for row in rows] == [3, 6, 9, 12]
    assert [row["input_size"] for row in rows] == [32, 48, 56, 56]
    for row in rows:
        assert row["train_pflop"] == pytest.approx(spent[row["iteration"] - 1] / 1e15)
    # Each epoch's checkpoint holds the size its evaluation used: that of its last step.
    first = tmp_path / "run" / "checkpoints" / "epoch-001.pt"
    assert load_model(first).resize == 32
    (evaluation,) = evaluate(first, synth_cache)
    assert evaluation.top1_error == pytest.approx(rows[0]["val_top1_error"])
    config_text = (tmp_path / "run" / "config.toml").read_text()
    assert f"{per_image[32] / 1e9:.3f} at 32x32" in config_text


def test_the_compute_budget_fits_the_whole_size_schedule(
    synth_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = _record_training_inputs(monkeypatch)
    model = create_model("fastnet", num_classes=5, **FAST)
    per_image = {side: training_flops_per_image(model, side) for side in (32, 56)}

    def cost(total: int) -> float:  # brute force: every step at its own size, 32 for the first half
        return sum(16 * per_image[32 if i < round(0.5 * total) else 56] for i in range(total))

    budget = (cost(7) + cost(8)) / 2  # room for a 7-step schedule, not an 8-step one
    assert cost(7) <= budget < cost(8)
    cfg = _cfg(
        synth_cache,
        "augment.sizes=[32, 56]",
        "augment.size_until=[0.5]",
        'schedule.name="onecycle"',
        "train.epochs=20",
        f"train.max_pflop={budget / 1e15!r}",
    )
    result = train(cfg, tmp_path / "run", progress=False)
    # round(3.5) = 4 steps at 32, then 3 at 56: the budget set the schedule's length.
    assert sides == [32] * 4 + [56] * 3
    last = result.metrics[-1]
    assert last["iteration"] == 7 and last["train_pflop"] == pytest.approx(cost(7) / 1e15)
    assert last["lr"] == pytest.approx(0.05 * (1 - 6 / 7))  # onecycle reaches 0 on step 7


def test_evaluation_prediction_and_export_see_the_models_last_size(
    synth_cache: Path, tmp_path: Path
) -> None:
    # A run stopped at 48 (the last size) with 56-pixel crops: every view is resized to 48.
    # fp32 throughout, on every machine: the by-hand logits below are fp32.
    fp32 = make_runtime(precision="fp32", threads=1)
    extra = ("augment.sizes=[32, 48]", "augment.size_until=[0.5]", "train.epochs=2")
    cfg = _cfg(synth_cache, *extra, 'train.precision="fp32"')
    result = train(cfg, tmp_path / "run", progress=False)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    loaded = load_model(last, fp32)
    assert (loaded.input_size, loaded.resize) == (56, 48)
    cache = load_cache(synth_cache)
    images = torch.from_numpy(np.asarray(cache.split("val").images))
    norm = Normalization.channel(cache.channel_mean, cache.channel_std)
    by_hand = F.interpolate(
        center_crop(images, 56, norm), size=(48, 48), mode="bilinear", antialias=True
    )
    with torch.inference_mode():
        expected = loaded.model(by_hand).float()
    torch.testing.assert_close(loaded.logits(images), expected, atol=1e-4, rtol=1e-4)
    # The same number as the run logged at its end.
    (evaluation,) = evaluate(last, synth_cache, runtime=fp32)
    assert evaluation.top1_error == pytest.approx(result.metrics[-1]["val_top1_error"])
    report = export_model(last, "torchscript", tmp_path / "model.pt")
    assert "resized to 48x48" in json.dumps(report.input_spec) or report.max_abs_logit_diff < 1e-3
    module = torch.jit.load(str(report.path))
    with torch.inference_mode():
        exported = module(images)
    torch.testing.assert_close(exported, expected, atol=1e-3, rtol=1e-3)


def test_a_resume_across_a_size_change_equals_the_uninterrupted_run(
    synth_cache: Path, tmp_path: Path
) -> None:
    extra = ("augment.sizes=[32, 56]", "augment.size_until=[0.5]", "train.epochs=3")
    whole = train(_cfg(synth_cache, *extra), tmp_path / "whole", progress=False)
    train(_cfg(synth_cache, *extra), tmp_path / "cut", progress=False, stop_at_iteration=4)
    resumed = train(None, tmp_path / "cut", resume=True, progress=False)
    assert [r["val_top1_error"] for r in resumed.metrics] == [
        r["val_top1_error"] for r in whole.metrics
    ]
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_model_with_a_fixed_input_size_refuses_progressive_resizing(
    synth_cache: Path, tmp_path: Path
) -> None:
    cfg = _cfg(synth_cache, "model.name=cnn5", "augment.sizes=[32, 56]", "augment.size_until=[0.5]")
    cfg.model.options = {}
    with pytest.raises(ConfigError, match=r"augment.sizes = \[32, 56\]: model 'cnn5' takes one"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_sizes_per_cycle_restart_the_sizes_in_each_cycle_and_the_budget_counts_them(
    synth_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sides = _record_training_inputs(monkeypatch)
    model = create_model("fastnet", num_classes=5, **FAST)
    per_image = {side: training_flops_per_image(model, side) for side in (32, 56)}

    def by_hand(i: int, total: int) -> int:  # two cycles, no warm-up, half of each at 32
        first = round(total / 2)
        start, span = (0, first) if i < first else (first, total - first)
        return 32 if i - start < round(span / 2) else 56

    def cost(total: int) -> float:
        return sum(16 * per_image[by_hand(i, total)] for i in range(total))

    # 10 steps: cycles of 5 (2 at 32, 3 at 56: round(2.5) = 2) and 5; 11: 6 (3 + 3) and 5.
    assert [by_hand(i, 10) for i in range(10)] == ([32] * 2 + [56] * 3) * 2
    budget = (cost(10) + cost(11)) / 2  # room for a 10-step schedule, not an 11-step one
    assert cost(10) <= budget < cost(11)
    cfg = _cfg(
        synth_cache,
        "augment.sizes=[32, 56]",
        "augment.size_until=[0.5]",
        "augment.sizes_per_cycle=true",
        'schedule.name="cyclic"',
        "schedule.cycles=2",
        "train.epochs=20",
        f"train.max_pflop={budget / 1e15!r}",
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert sides == [by_hand(i, 10) for i in range(10)]
    assert result.metrics[-1]["train_pflop"] == pytest.approx(cost(10) / 1e15)
    # Each cycle's snapshot ends at the last size, so it is evaluated there, unresized.
    checkpoints = tmp_path / "run" / "checkpoints"
    for name in ("cycle-01.pt", "cycle-02.pt"):
        loaded = load_model(checkpoints / name)
        assert (loaded.input_size, loaded.resize) == (56, None), name

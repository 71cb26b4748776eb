"""Mixup and CutMix: pixels and label weights checked by counting, not by restating the code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import SMALL
from tinycnn.config import load_config
from tinycnn.data.mixing import mix_batch
from tinycnn.data.prepare import prepare
from tinycnn.training import train


def _constant_images(batch: int, side: int = 16) -> torch.Tensor:
    """Image i is the constant i: every mixed pixel says which image it came from."""
    return (
        torch.arange(batch, dtype=torch.float32).view(batch, 1, 1, 1).expand(batch, 3, side, side)
    )


@pytest.mark.parametrize("seed", range(6))
def test_cutmix_label_weights_are_the_pixel_shares(seed: int) -> None:
    images, labels = _constant_images(8), torch.arange(8)
    mixed, targets, mix = mix_batch(images, labels, 8, mixup=0.0, cutmix=1.0, seed=seed)
    assert mix.kind == "cutmix"
    for i in range(8):
        own = (mixed[i] == i).float().mean().item()  # counted, not computed from the box
        partner = int(mix.partner[i])
        if partner == i:
            assert own == 1.0 and targets[i, i] == pytest.approx(1.0)
            continue
        assert (mixed[i] == partner).float().mean().item() == pytest.approx(1 - own)
        assert targets[i, i].item() == pytest.approx(own)
        assert targets[i, partner].item() == pytest.approx(1 - own)
        assert targets[i].sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(4))
def test_mixup_blends_images_and_labels_in_the_same_proportion(seed: int) -> None:
    torch.manual_seed(seed)
    images, labels = torch.randn(6, 3, 8, 8), torch.arange(6)
    mixed, targets, mix = mix_batch(images, labels, 6, mixup=0.4, cutmix=0.0, seed=seed)
    assert mix.kind == "mixup" and 0 <= mix.keep <= 1
    for i in range(6):
        partner = int(mix.partner[i])
        weight = targets[i, i].item()  # the label weight must be the image weight
        expected = (
            images[i] if partner == i else weight * images[i] + (1 - weight) * images[partner]
        )
        torch.testing.assert_close(mixed[i], expected, rtol=1e-5, atol=1e-5)
        assert targets[i].sum().item() == pytest.approx(1.0)


def test_mixing_is_a_function_of_the_seed_and_both_kinds_are_used() -> None:
    images, labels = torch.randn(4, 3, 8, 8), torch.arange(4)
    first = mix_batch(images, labels, 4, mixup=0.2, cutmix=1.0, seed=7)
    again = mix_batch(images, labels, 4, mixup=0.2, cutmix=1.0, seed=7)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    kinds = {mix_batch(images, labels, 4, 0.2, 1.0, seed)[2].kind for seed in range(20)}
    assert kinds == {"mixup", "cutmix"}


def test_training_with_mixing_uses_soft_targets(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    base = [
        f"data.cache={json.dumps(str(cache))}",
        "model.name=cnn5",
        "model.conv_channels=[8, 8, 8]",
        "model.fc_widths=[32]",
        'data.normalization="channel"',
        "train.batch_size=16",
        "train.epochs=1",
        "train.threads=1",
        "train.deterministic=true",
    ]
    plain = train(load_config(None, base), tmp_path / "plain", progress=False)
    mixed = train(
        load_config(None, [*base, "augment.mixup=0.4", "augment.cutmix=1.0"]),
        tmp_path / "mixed",
        progress=False,
    )
    assert mixed.metrics[0]["train_loss"] != plain.metrics[0]["train_loss"]
    with pytest.raises(Exception, match="mixup must be a number >= 0"):
        load_config(None, [*base, "augment.mixup=-1"])


def test_the_mixed_training_loss_is_the_cross_entropy_with_soft_targets(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    # Each step's logits and mixing (the kind, the share kept, the partners) are recorded; the
    # soft targets are built here from the hard labels, keep * own + (1 - keep) * partner's, and
    # the cross-entropy against them must be the logged train_loss.
    import tinycnn.session
    import tinycnn.steps

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    steps: list[dict] = []
    original_mix, original_build = tinycnn.steps.mix_batch, tinycnn.session.build_model

    def watched_mix(images, labels, *args, **kwargs):
        mixed, targets, mix = original_mix(images, labels, *args, **kwargs)
        steps.append({"labels": labels.clone(), "mix": mix})
        return mixed, targets, mix

    def build_and_watch(*args, **kwargs):
        model = original_build(*args, **kwargs)

        def record(m, _, out) -> None:
            if m.training:
                steps[-1]["logits"] = out.detach().float().clone()

        model.register_forward_hook(record)
        return model

    monkeypatch.setattr(tinycnn.steps, "mix_batch", watched_mix)
    monkeypatch.setattr(tinycnn.session, "build_model", build_and_watch)
    cfg = load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            *SMALL,
            "train.epochs=2",
            'train.precision="fp32"',
            "augment.mixup=0.4",
            "augment.cutmix=1.0",
        ],
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert len(steps) == 6  # 60 images, batches of 16, 2 epochs
    assert {step["mix"].kind for step in steps} == {"mixup", "cutmix"}
    soft, hard = [], []
    for step in steps:
        labels, mix, log_p = step["labels"], step["mix"], step["logits"].log_softmax(dim=1)
        own = -log_p[torch.arange(16), labels]
        partners = -log_p[torch.arange(16), labels[mix.partner]]
        soft.append((mix.keep * own + (1 - mix.keep) * partners).mean().item())
        hard.append(own.mean().item())
    by_epoch = [(sum(soft[e : e + 3]) / 3, sum(hard[e : e + 3]) / 3) for e in (0, 3)]
    # The case must tell soft targets from hard labels apart, far beyond the tolerance below.
    assert all(abs(s - h) > 1e-3 * s for s, h in by_epoch)
    for row, (expected, _) in zip(result.metrics, by_epoch, strict=True):
        assert row["train_loss"] == pytest.approx(expected, rel=1e-5)

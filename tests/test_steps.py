"""steps.py: one training step, watched through hooks: what the first layer sees, the
label-smoothed loss, gradient clipping, and the step log (steps.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import tinycnn.session
from tests.helpers import RUN, StepWatch, normalised, small_config
from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
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


# Whole 64x64 images, no mirror, no photometric noise: every input the model sees is one
# training image, normalised, so it can be recognised and checked pixel by pixel.
WHOLE_IMAGES = ["augment.crop=0", "augment.flip=false", 'train.precision="fp32"']


class Watch:
    """Records the first layer's inputs and the model's outputs during a run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.inputs: list[tuple[bool, torch.Tensor]] = []  # (training, (B, 3, H, W))
        self.outputs: list[tuple[bool, torch.Tensor]] = []  # (training, (B, C) logits)
        original = tinycnn.session.build_model

        def build_and_watch(*args, **kwargs):
            model = original(*args, **kwargs)
            first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
            first.register_forward_pre_hook(
                lambda m, inputs: self.inputs.append((m.training, inputs[0].detach().clone()))
            )
            model.register_forward_hook(
                lambda m, _, out: self.outputs.append((m.training, out.detach().float().clone()))
            )
            return model

        monkeypatch.setattr(tinycnn.session, "build_model", build_and_watch)


def _match(seen: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """For each seen input (B, 3, H, W), the index of the candidate it equals; fails otherwise."""
    diff = (seen[:, None] - candidates[None]).abs().flatten(2).amax(dim=2)  # (B, N)
    closest = diff.min(dim=1)
    assert bool((closest.values < 1e-3).all()), f"inputs differ by {closest.values.max():.3g}"
    return closest.indices


@pytest.mark.parametrize("kind", ["mean_image", "channel", "none"])
def test_the_first_layer_sees_the_configured_normalisation(
    cache: Path, tmp_path: Path, monkeypatch, kind: str
) -> None:
    watch = Watch(monkeypatch)
    cfg = small_config(cache, *WHOLE_IMAGES, "train.epochs=1", f'data.normalization="{kind}"')
    train(cfg, tmp_path / "run", progress=False)
    data = load_cache(cache)
    expected = {
        True: normalised(data.split("train").images, kind, cache),
        False: normalised(data.split("val").images, kind, cache),
    }
    assert {training for training, _ in watch.inputs} == {True, False}
    for training, seen in watch.inputs:  # training batches, then the val evaluation
        _match(seen, expected[training])
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert payload["normalization"]["kind"] == kind  # what evaluation will apply


def test_label_smoothing_is_in_the_training_loss(cache: Path, tmp_path: Path, monkeypatch) -> None:
    eps = 0.3
    watch = Watch(monkeypatch)
    cfg = small_config(cache, *WHOLE_IMAGES, "train.epochs=1", f"optim.label_smoothing={eps}")
    train(cfg, tmp_path / "run", progress=False)
    split = load_cache(cache).split("train")
    candidates = normalised(split.images, "channel", cache)
    inputs = [x for training, x in watch.inputs if training]
    outputs = [y for training, y in watch.outputs if training]
    losses = []
    for x, logits in zip(inputs, outputs, strict=True):
        labels = torch.from_numpy(split.labels.astype(np.int64))[_match(x, candidates)]
        log_p = logits.log_softmax(dim=1)
        nll = -log_p.gather(1, labels[:, None]).squeeze(1)
        losses.append(((1 - eps) * nll + eps * -log_p.mean(dim=1)).mean().item())
    assert len(losses) == 3  # 60 images, batches of 16
    assert read_metrics(tmp_path / "run")[0]["train_loss"] == pytest.approx(
        sum(losses) / len(losses), rel=1e-5
    )


def test_clip_grad_norm_rescales_the_whole_gradient_to_its_bound(
    cache: Path, tmp_path: Path
) -> None:
    # The first step's gradient (same weights, same batch in both runs) reaches the optimiser
    # as g * bound / |g| when |g| exceeds the bound, and unchanged when it does not.
    def first_gradient(clip: float, name: str) -> list[torch.Tensor]:
        cfg = small_config(
            cache, "train.epochs=1", 'train.precision="fp32"', f"optim.clip_grad_norm={clip}"
        )
        with StepWatch() as watch:
            train(cfg, tmp_path / name, progress=False)
        return watch.steps[0]["g"]

    plain = first_gradient(0.0, "plain")
    norm = torch.linalg.vector_norm(torch.cat([g.flatten() for g in plain])).item()
    bound = norm / 4
    clipped = first_gradient(bound, "clipped")
    for g, c in zip(plain, clipped, strict=True):
        assert torch.allclose(c, g * bound / norm, rtol=1e-4, atol=1e-9)
    loose = first_gradient(norm * 2, "loose")
    for g, c in zip(plain, loose, strict=True):
        assert torch.equal(c, g)

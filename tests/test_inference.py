"""inference.py: a loaded model's TTA views, each image's own, averaged; batch-norm statistics
recomputed for a model's own weights (an EMA's), by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.helpers import FP32, reference_probabilities
from tinycnn.data.cache import load_cache
from tinycnn.evaluation import evaluate
from tinycnn.inference import load_model


@pytest.mark.parametrize("tta", ["center", "flip", "10crop"])
def test_tta_is_the_mean_of_each_images_own_views(run, tta: str) -> None:
    cache, folder = run
    data = load_cache(cache)
    images = torch.from_numpy(np.array(data.split("val").images))
    labels = torch.from_numpy(data.split("val").labels.astype(np.int64))
    loaded = load_model(folder / "checkpoints" / "last.pt", FP32)
    expected = reference_probabilities(cache, folder / "checkpoints" / "last.pt", tta)
    # A batch size that splits the 20 images unevenly: views must not cross images or batches.
    got = loaded.probabilities(images, tta, batch_size=7)
    assert torch.allclose(got, expected, atol=1e-5)
    (result,) = evaluate([f"{folder}@last"], cache, tta=tta, runtime=FP32)
    assert result.top1_error == pytest.approx(
        (expected.argmax(dim=1) != labels).float().mean().item()
    )


def test_recompute_batch_norm_averages_each_batchs_statistics_with_dropout_off() -> None:
    # Truth by hand: the centre views of uint8 images are their pixel values (no normalisation,
    # the whole image); the statistics are the plain mean over the batches of each batch's
    # channel means and unbiased variances. Batches of 4 of 10 images: 4, then 6 (the remainder
    # of 2 joins the last). Dropout before the batch norm stays off.
    from tinycnn.inference import recompute_batch_norm
    from tinycnn.runtime import make_runtime

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 6, 6, 3), dtype=torch.uint8, generator=generator)
    norm = nn.BatchNorm2d(3, momentum=0.3)
    norm.running_mean.fill_(5.0)  # stale statistics: reset, not averaged into
    model = nn.Sequential(nn.Dropout(0.5), norm).train()
    runtime = make_runtime("cpu", "fp32")
    recompute_batch_norm(model, images, runtime, size=6, norm=None, batch_size=4)
    pixels = images.permute(0, 3, 1, 2).double()
    batches = [pixels[0:4], pixels[4:10]]
    mean = sum(b.mean(dim=(0, 2, 3)) for b in batches) / 2
    var = sum(b.var(dim=(0, 2, 3), unbiased=True) for b in batches) / 2
    torch.testing.assert_close(norm.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(norm.running_var.double(), var, rtol=1e-5, atol=1e-6)
    assert not model.training and not norm.training and norm.momentum == 0.3


def test_recompute_batch_norm_takes_no_batch_of_one_and_restores_the_model_on_an_error() -> None:
    # 5 images in batches of 4 would leave a batch of one, which BatchNorm1d refuses; and an
    # error in the forward pass must not leave the model in training mode with no momentum.
    from tinycnn.inference import recompute_batch_norm
    from tinycnn.runtime import make_runtime

    images = torch.randint(0, 256, (5, 2, 2, 3), dtype=torch.uint8)
    model = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(12, momentum=0.2))
    runtime = make_runtime("cpu", "fp32")
    recompute_batch_norm(model, images, runtime, size=2, norm=None, batch_size=4)
    flat = images.permute(0, 3, 1, 2).reshape(5, 12).double()
    torch.testing.assert_close(model[1].running_mean.double(), flat.mean(0), rtol=1e-5, atol=1e-5)

    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("broken")

    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.2), Broken())
    with pytest.raises(RuntimeError, match="broken"):
        recompute_batch_norm(model, images, runtime, size=2, norm=None, batch_size=4)
    assert model[0].momentum == 0.2 and not model[0].training and not model.training


def test_recompute_under_torchrun_refuses_to_deal_out_a_global_batch_norm(monkeypatch) -> None:
    # Ranks that ran different batches through a batch norm over the global batch would wait on
    # each other's collectives forever: dealing batches out is for per-process batch norm only.
    from tinycnn import distributed
    from tinycnn.inference import recompute_batch_norm

    monkeypatch.setattr(distributed, "current", lambda: distributed.Dist(rank=0, world=2))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), distributed.GlobalBatchNorm2d(4))
    calls = []
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    images = torch.zeros(4, 8, 8, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="split_over_ranks"):
        recompute_batch_norm(model, images, FP32, size=8, norm=None, batch_size=2)
    assert not calls  # refused before any batch

"""inference.py: a loaded model's TTA views, each image's own, averaged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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

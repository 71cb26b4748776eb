"""Batched inference over in-memory uint8 images, and the error rates it yields."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from tinycnn.data.augment import Normalization, center_crop, flip_views, ten_crop
from tinycnn.runtime import Runtime

TTA_VIEWS = {"center": 1, "flip": 2, "10crop": 10}


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images_u8: Tensor,
    runtime: Runtime,
    *,
    size: int,
    norm: Normalization | None,
    batch_size: int = 500,
    tta: str = "center",
    progress: str | None = None,
) -> Tensor:
    """Class logits (N, C) float32 on the CPU; with TTA, the mean of the views' softmax as logits.

    images_u8: (N, 64, 64, 3) uint8 (CPU or device); size: the crop the model was trained on.
    progress: a label for a progress bar over the images (None: no bar).
    """
    was_training = model.training
    model.eval()
    norm = norm.to(runtime.device) if norm is not None else None
    outputs = []
    bar = tqdm(
        total=len(images_u8),
        desc=progress,
        unit="img",
        disable=progress is None,
        leave=False,
        dynamic_ncols=True,
    )
    for lo in range(0, len(images_u8), batch_size):
        batch = images_u8[lo : lo + batch_size].to(runtime.device, non_blocking=True)
        views = _views(batch, size, norm, tta)  # (B * V, 3, size, size)
        with runtime.autocast():
            logits = model(views).float()
        if tta != "center":
            # Average probabilities over views (Caffe's oversampling), returned as log-probs.
            probs = logits.softmax(dim=1).view(len(batch), TTA_VIEWS[tta], -1).mean(dim=1)
            logits = probs.clamp_min(1e-12).log()
        outputs.append(logits.cpu())
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0)


def _views(batch: Tensor, size: int, norm: Normalization | None, tta: str) -> Tensor:
    if tta == "center":
        return center_crop(batch, size, norm)
    views = flip_views(batch, size, norm) if tta == "flip" else ten_crop(batch, size, norm)
    return views.flatten(0, 1)


def error_rates(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 error (fractions in [0, 1]), mean cross-entropy loss, and the count."""
    labels = labels.long()
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hits = top == labels[:, None]
    count = len(labels)
    return {
        "loss": float(F.cross_entropy(logits, labels)) if count else float("nan"),
        "top1_error": float((~hits[:, 0]).float().mean()) if count else float("nan"),
        "top5_error": float((~hits.any(dim=1)).float().mean()) if count else float("nan"),
        "count": count,
    }


def per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(accuracy per class (C,) float64, confusion (C, C) int64: rows true, columns predicted)."""
    predicted = logits.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels.long(), predicted), torch.ones_like(predicted), accumulate=True)
    totals = confusion.sum(dim=1).double()
    accuracy = confusion.diagonal().double() / totals.clamp_min(1)
    accuracy[totals == 0] = float("nan")
    return accuracy, confusion

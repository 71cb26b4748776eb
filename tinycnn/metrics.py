"""Error rates, per-class accuracy and confusion from logits: the numbers tinycnn reports."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


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

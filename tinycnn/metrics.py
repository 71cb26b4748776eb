"""Error rates, per-class accuracy and confusion from logits: the numbers tinycnn reports."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def error_rates(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 and top-5 error (fractions in [0, 1]), mean cross-entropy loss, and the count.

    Top-1 is the argmax, as in training's error, the confusion matrix and every prediction (on
    tied logits topk's first index is another one); a top-1 hit is a top-5 hit."""
    labels = labels.long()
    hit1, hit5 = top_hits(logits, labels)
    count = len(labels)
    return {
        "loss": float(F.cross_entropy(logits, labels)) if count else float("nan"),
        "top1_error": float((~hit1).float().mean()) if count else float("nan"),
        "top5_error": float((~hit5).float().mean()) if count else float("nan"),
        "count": count,
    }


def top_hits(scores: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(top-1 hit, top-5 hit) per row of scores (logits or probabilities): top-1 is the argmax,
    and a top-1 hit is a top-5 hit (on ties, topk may leave the argmax's class out)."""
    hit1 = scores.argmax(dim=1) == labels
    k = min(5, scores.shape[1])
    return hit1, hit1 | (scores.topk(k, dim=1).indices == labels[:, None]).any(dim=1)


def per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """(accuracy per class (C,) float64, confusion (C, C) int64: rows true, columns predicted)."""
    predicted = logits.argmax(dim=1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    confusion.index_put_((labels.long(), predicted), torch.ones_like(predicted), accumulate=True)
    totals = confusion.sum(dim=1).double()
    accuracy = confusion.diagonal().double() / totals.clamp_min(1)
    accuracy[totals == 0] = float("nan")
    return accuracy, confusion


# How far below chance a top-1 error must be to show that a model learns: more than a guesser
# reaches by luck (3 standard deviations of its error over that many images: once in ~700
# tries), and more than 1% of the chance error, so that 100,000 images do not make a hair's
# breadth count. Measured after epoch 1 (results/README.md, "The not-learning warning"): healthy
# runs clear both by far (quick.toml on the mini data: train 18.6 points below chance = 19
# deviations; the slowest learning paper8 preset: val 4.8% of chance below), stuck ones do not
# (lr 10 on the mini data: train 2.3 deviations; the paper's as-written recipe on the full data:
# val 0.2% of chance below).
CHANCE_DEVIATIONS = 3.0
CHANCE_FRACTION = 0.01


def clearly_below_chance(top1_error: float, count: int, num_classes: int) -> bool:
    """True when a top-1 error over ``count`` images is below chance (1 - 1 / num_classes) by
    more than CHANCE_DEVIATIONS standard deviations of a guesser's error and CHANCE_FRACTION of
    chance; False for no images or a NaN error."""
    if count <= 0 or not math.isfinite(top1_error):
        return False
    chance = 1 - 1 / num_classes
    luck = CHANCE_DEVIATIONS * math.sqrt(chance * (1 - chance) / count)
    return chance - top1_error > max(luck, CHANCE_FRACTION * chance)

"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised training batch.

Each mixes every image with another of the same batch (a random permutation) and the labels in
the same proportion: soft targets (B, C) for the cross-entropy. When both are on, each batch uses
one of them with probability 1/2, as timm does. All randomness comes from one seed (the step's),
so a resumed run mixes exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Mix:
    """What one batch's mixing did: the kind, the share of each image kept, the partners."""

    kind: str  # "mixup" or "cutmix"
    keep: float  # lambda: the weight of each image's own label (for cutmix, its pixel share)
    partner: Tensor  # (B,) int64: the image mixed into image i is partner[i]
    box: tuple[int, int, int, int] | None = None  # cutmix: y0, y1, x0, x1 (end exclusive)


def mix_batch(
    images: Tensor, labels: Tensor, num_classes: int, mixup: float, cutmix: float, seed: int
) -> tuple[Tensor, Tensor, Mix]:
    """Mixed images (B, C, H, W), soft targets (B, num_classes) and what was done.

    mixup, cutmix: the Beta(alpha, alpha) parameters; 0 turns one off (not both).
    """
    rng = np.random.default_rng(seed)
    kind = "mixup" if not cutmix or (mixup and rng.random() < 0.5) else "cutmix"
    alpha = mixup if kind == "mixup" else cutmix
    keep = float(rng.beta(alpha, alpha))
    partner = torch.from_numpy(rng.permutation(len(images))).to(images.device)
    box = None
    if kind == "mixup":
        mixed = images * keep + images[partner] * (1 - keep)
    else:
        height, width = images.shape[-2:]
        box = _box(rng, height, width, 1 - keep)
        y0, y1, x0, x1 = box
        mixed = images.clone()
        mixed[..., y0:y1, x0:x1] = images[partner][..., y0:y1, x0:x1]
        keep = 1 - (y1 - y0) * (x1 - x0) / (height * width)  # the pixels actually kept
    own = F.one_hot(labels, num_classes).float()
    targets = own * keep + own[partner] * (1 - keep)
    return mixed, targets, Mix(kind, keep, partner, box)


def _box(rng: np.random.Generator, height: int, width: int, share: float):
    """A box of about ``share`` of the image, centred uniformly, clipped to the image."""
    cut_h, cut_w = int(height * np.sqrt(share)), int(width * np.sqrt(share))
    cy, cx = int(rng.integers(height)), int(rng.integers(width))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1

"""What a run's EMA of the weights (train.ema_decay) gives against its raw weights, and how much
of the difference is batch-norm statistics: the checkpoint's saved (EMA) weights as evaluated
and saved, the raw weights of the same checkpoint (``train_state``), and the EMA weights with
their batch-norm statistics recomputed on training images (a cumulative average over
--batches batches of 128 centre views, as torch.optim.swa_utils.update_bn does).

Usage: python bench/ema_check.py RUN --data CACHE [--checkpoint last.pt] [--batches 60]
Prints val top-1 errors; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinycnn.checkpoint import load_checkpoint
from tinycnn.data.augment import center_crop
from tinycnn.data.cache import load_cache
from tinycnn.evaluation import evaluate_loaded
from tinycnn.inference import images_tensor, load_model


def recompute_batch_norm(loaded, images, batches: int, seed: int = 0) -> None:
    """The loaded model's batch-norm statistics recomputed on ``batches`` x 128 of images."""
    rows = np.sort(np.random.default_rng(seed).choice(len(images), batches * 128, replace=False))
    norms = [m for m in loaded.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average over the batches
    loaded.model.train()
    with torch.no_grad(), loaded.runtime.autocast():
        for lo in range(0, len(rows), 128):
            batch = images_tensor(images[rows[lo : lo + 128]])
            views = center_crop(batch, loaded.input_size, loaded.norm)
            loaded.model(views.to(memory_format=torch.channels_last))
    loaded.model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", default="last.pt")
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    path = Path(args.run) / "checkpoints" / args.checkpoint
    cache = load_cache(args.data)
    loaded = load_model(path)

    def error() -> float:
        return evaluate_loaded(loaded, cache, "val", "center", 500, False).top1_error

    saved = error()
    ema_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    payload = load_checkpoint(path)
    if "train_state" not in payload:
        print(f"{path}: no train_state (the run had no EMA): val top-1 error {saved:.2%}")
        return
    loaded.model.load_state_dict(payload["train_state"])
    raw = error()
    loaded.model.load_state_dict(ema_state)
    recompute_batch_norm(loaded, cache.split("train").images, args.batches)
    recalibrated = error()
    print(f"checkpoint                        {path}")
    print(f"EMA weights, as saved             val top-1 error {saved:.2%}")
    print(f"raw weights (train_state)         val top-1 error {raw:.2%}")
    print(f"EMA weights, batch norm recomputed val top-1 error {recalibrated:.2%}")


if __name__ == "__main__":
    main()

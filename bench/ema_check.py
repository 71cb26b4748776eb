"""What a run's EMA of the weights (train.ema_decay) gives against its raw weights, and how much
of the difference is batch-norm statistics: the checkpoint's saved (EMA) weights as evaluated
and saved, the raw weights of the same checkpoint (``train_state``), and the EMA weights with
their batch-norm statistics recomputed on --images of the run's training images as training
does since train.ema_bn_images (tinycnn.inference.recompute_batch_norm: a cumulative average
over batches of 128 centre views, as torch.optim.swa_utils.update_bn does). A checkpoint saved
with statistics recomputed alike (the same number of images) shows its first and third figures
equal, up to the kernels' rounding.

Usage: python bench/ema_check.py RUN --data CACHE [--checkpoint last.pt] [--images N]
Prints val top-1 errors; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import config_from_dict
from tinycnn.data.cache import load_cache
from tinycnn.ema import ema_bn_rows
from tinycnn.evaluation import evaluate_loaded
from tinycnn.inference import images_tensor, load_model, recompute_batch_norm
from tinycnn.models.conv import CHOICES
from tinycnn.run_plan import training_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data", required=True)
    parser.add_argument("--checkpoint", default="last.pt")
    parser.add_argument("--images", type=int, help="default: the run's train.ema_bn_images")
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
    cfg = config_from_dict(payload["config"])
    train_rows, _ = training_rows(cfg, cache)  # the run's own: without its held-out rows
    count = args.images or cfg.train.ema_bn_images or 7680
    rows = train_rows[ema_bn_rows(len(train_rows), count, cfg.train.seed).numpy()]
    with CHOICES.running(loaded.kernels):  # the run's own conv kernels, as its evaluations
        recompute_batch_norm(
            loaded.model,
            images_tensor(cache.split("train").images[rows]),
            loaded.runtime,
            size=loaded.input_size,
            norm=loaded.norm,
            resize=loaded.resize,
        )
    recalibrated = error()
    print(f"checkpoint                        {path}")
    print(f"EMA weights, as saved             val top-1 error {saved:.2%}")
    print(f"raw weights (train_state)         val top-1 error {raw:.2%}")
    print(f"EMA weights, batch norm recomputed val top-1 error {recalibrated:.2%}")


if __name__ == "__main__":
    main()

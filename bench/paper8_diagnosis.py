"""Why does a plain CNN learn or not: per-layer figures every K iterations of a real training run.

Trains a config (by default the paper's recipe as written, configs/paper/as-written/) with
tinycnn's own loop for --iters iterations, pausing every --every iterations (`tinycnn train
--stop-at`, then --resume: the run is the one `tinycnn train` would make, bit for bit), and prints
for each weight layer, on one fixed batch of training images (centre crops, eval mode: dropout off):
- pre-activation mean and std (the conv / fc output before its ReLU),
- dead: the fraction of ReLU units (channel x position; fc unit) that are zero for every image,
- |g|: the gradient's L2 norm (the batch's mean cross-entropy, no weight decay),
- lr|g|/|w|: one plain gradient step's relative size at the current learning rate,
- step/|w|: the weights' measured change per iteration since the last pause, momentum and
  weight decay included, relative to their norm;
and for the output: the logits' std, the mean softmax entropy (ln C at uniform), the batch loss,
and the mean training loss over the last --every iterations (steps.jsonl: dropout and
augmentation on).

    python bench/paper8_diagnosis.py --cache CACHE --out DIR [--config TOML] [--set k=v ...]
        [--iters 300] [--every 50] [--json FILE]

Figures for results/paper8-diagnosis.md.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import tinycnn
from tinycnn.checkpoint import load_checkpoint, model_from_checkpoint, normalization_from_payload
from tinycnn.crops import fit_crop
from tinycnn.data.augment import center_crop
from tinycnn.data.cache import load_cache
from tinycnn.run_plan import build_model
from tinycnn.schedule import lr_at

ROOT = Path(__file__).resolve().parents[1]
PAPER8 = ROOT / "configs" / "paper" / "as-written" / "paper8_l2_5e-4.toml"  # as the paper wrote it


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(short name, layer) of every conv and linear layer in forward order: conv1.., fc1.., out."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    convs = sum(isinstance(m, nn.Conv2d) for m in layers)
    names = [f"conv{i + 1}" for i in range(convs)]
    names += [f"fc{i + 1}" for i in range(len(layers) - convs - 1)] + ["out"]
    return list(zip(names, layers, strict=True))


def layer_figures(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Per-layer pre-activation, dead-unit and gradient figures on one batch (eval mode)."""
    model.eval()
    layers = weight_layers(model)
    outputs: dict[str, torch.Tensor] = {}
    hooks = [
        layer.register_forward_hook(lambda _m, _i, out, name=name: outputs.__setitem__(name, out))
        for name, layer in layers
    ]
    model.zero_grad(set_to_none=True)
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    for hook in hooks:
        hook.remove()
    rows = {}
    for name, layer in layers:
        pre = outputs[name].detach()
        alive = (pre > 0).any(dim=0)  # a unit (channel x position, or fc unit) fires for an image
        rows[name] = {
            "mean": pre.mean().item(),
            "std": pre.std().item(),
            "dead": None if name == "out" else 1 - alive.float().mean().item(),
            "grad_norm": layer.weight.grad.norm().item(),
            "weight_norm": layer.weight.detach().norm().item(),
        }
    probs = logits.detach().softmax(dim=1)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(dim=1).mean().item()
    head = {"logit_std": logits.detach().std().item(), "entropy": entropy, "loss": loss.item()}
    return {"layers": rows, "output": head}


def fixed_batch(cache_path: str, norm, size: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """count training images (a fixed draw, seed 0), centre-cropped, normalised as in training."""
    train = load_cache(cache_path).split("train")
    rows = np.sort(np.random.default_rng(0).choice(len(train.labels), count, replace=False))
    images = torch.from_numpy(np.ascontiguousarray(train.images[rows]))
    labels = torch.from_numpy(train.labels[rows].astype(np.int64))
    return center_crop(images, size, norm).float(), labels


def window_loss(run: Path, start: int, end: int) -> float | None:
    """Mean logged training loss of the steps.jsonl lines in (start, end]."""
    path = run / "steps.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    losses = [row["train_loss"] for row in lines if start < row["iteration"] <= end]
    return sum(losses) / len(losses) if losses else None


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.weight.detach().clone() for name, layer in weight_layers(model)}


def print_table(iteration: int, lr: float, figures: dict, steps: dict | None, loss) -> None:
    out = figures["output"]
    window = f"{loss:.4f}" if loss is not None else "-"
    print(
        f"\niteration {iteration}: lr {lr:.3g}, train loss (window) {window}, batch loss "
        f"{out['loss']:.4f}, logit std {out['logit_std']:.4g}, entropy {out['entropy']:.4f}"
    )
    print(
        f"  {'layer':6} {'mean':>10} {'std':>10} {'dead':>6} {'|g|':>10} {'lr|g|/|w|':>10} "
        f"{'step/|w|':>10}"
    )
    for name, row in figures["layers"].items():
        dead = "-" if row["dead"] is None else f"{row['dead']:.1%}"
        step = "-" if steps is None else f"{steps[name]:.3g}"
        print(
            f"  {name:6} {row['mean']:>10.4g} {row['std']:>10.4g} {dead:>6} "
            f"{row['grad_norm']:>10.3g} {lr * row['grad_norm'] / row['weight_norm']:>10.3g} "
            f"{step:>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cache", required=True, help="prepared cache (tinycnn prepare)")
    parser.add_argument("--out", required=True, help="run folder to train into (new)")
    parser.add_argument("--config", default=str(PAPER8))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--batch", type=int, default=128, help="images in the fixed batch")
    parser.add_argument("--json", help="also write every figure here")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    overrides = [f"data.cache='{args.cache}'", f"train.log_every={min(args.every, 25)}"]
    cfg = tinycnn.load_config(args.config, overrides + args.set)
    out = Path(args.out)
    cache = load_cache(args.cache)
    crop = fit_crop(cfg, cache.manifest.get("image_size", 64), cache.num_classes).augment.crop
    model = build_model(cfg, cache.num_classes, crop)  # the run's own init (same seed)
    iters_per_epoch = math.ceil(
        (len(cache.split("train").labels) - cfg.data.holdout_per_class * cache.num_classes)
        / cfg.train.batch_size
    )
    initial = model
    tinycnn.train(cfg, out, progress=False, stop_at_iteration=args.every)
    last = out / "checkpoints" / "last.pt"
    norm = normalization_from_payload(load_checkpoint(last)["normalization"])
    images, labels = fixed_batch(args.cache, norm, crop, args.batch)
    previous = weights(initial)
    history = []
    for end in range(0, args.iters + 1, args.every):
        model = initial
        if end:
            if end > args.every:
                tinycnn.train(None, out, resume=True, progress=False, stop_at_iteration=end)
            payload = load_checkpoint(last)
            model = model_from_checkpoint(payload, last).float()
        now = weights(model)
        steps = None
        if end:
            steps = {
                n: ((now[n] - previous[n]).norm() / previous[n].norm()).item() / args.every
                for n in now
            }
        previous = now
        lr = lr_at(
            end, iters_per_epoch, cfg.train.epochs * iters_per_epoch, cfg.optim.lr, cfg.schedule
        )
        figures = layer_figures(model, images, labels)
        loss = window_loss(out, end - args.every, end) if end else None
        print_table(end, lr, figures, steps, loss)
        history.append({"iteration": end, "lr": lr, "window_loss": loss, "steps": steps, **figures})
    if args.json:
        Path(args.json).write_text(json.dumps(history, indent=1))


if __name__ == "__main__":
    main()

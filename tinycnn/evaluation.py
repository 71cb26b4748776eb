"""``tinycnn evaluate``: error rates, per-class accuracy and confusion of checkpoints on a split."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tinycnn.data.cache import Cache, load_cache
from tinycnn.data.splits import holdout_split
from tinycnn.errors import ConfigError
from tinycnn.inference import LoadedModel, images_tensor, load_model
from tinycnn.members import resolve_members
from tinycnn.metrics import error_rates, per_class_accuracy
from tinycnn.runtime import Runtime

LABELLED_SPLITS = ("val", "train", "tune")


@dataclass
class Evaluation:
    checkpoint: str
    split: str
    tta: str
    count: int
    loss: float
    top1_error: float
    top5_error: float
    per_class: dict[str, float]  # wnid -> accuracy (fraction)
    confusion: list[list[int]] = field(repr=False)  # rows: true class, columns: predicted
    seconds: float = 0.0
    images_per_second: float = 0.0
    precision: str = "fp32"

    def to_json(self) -> dict:
        return dict(vars(self))


def split_rows(
    cache: Cache, split: str, config: dict, option: str = "--split", model: str = "this model"
) -> tuple[str, np.ndarray | None]:
    """(the cache split a labelled split reads, its rows there or None for all of them).

    "tune" is the training run's held-out part of "train", rebuilt from its config
    (data.holdout_*). option: what chose the split, as errors name it (e.g. "--split");
    model: the model they name (one of several members: its checkpoint).
    """
    if split not in LABELLED_SPLITS:
        raise ConfigError(
            f"{option} {split!r}: expected a labelled split: "
            f"{', '.join(LABELLED_SPLITS)} (test has no labels)"
        )
    if split != "tune":
        return split, None
    per_class = config["data"]["holdout_per_class"]
    if not per_class:
        raise ConfigError(
            f"{option} tune: {model} was trained without a held-out split "
            "(data.holdout_per_class = 0); train with data.holdout_per_class = K for one"
        )
    _, rows = holdout_split(cache.split("train").labels, per_class, config["data"]["holdout_seed"])
    return "train", rows


def labelled_split(cache: Cache, split: str, config: dict) -> tuple[Tensor, Tensor]:
    """(images uint8 (N, 64, 64, 3), labels (N,)) of a labelled split of the cache (split_rows)."""
    name, rows = split_rows(cache, split, config)
    data = cache.split(name)
    if rows is None:
        return images_tensor(data.images), torch.from_numpy(data.labels.astype(np.int64))
    return images_tensor(data.images[rows]), torch.from_numpy(data.labels[rows].astype(np.int64))


def evaluate_loaded(
    loaded: LoadedModel,
    cache: Cache,
    split: str = "val",
    tta: str = "center",
    batch_size: int = 500,
    progress: bool = False,
) -> Evaluation:
    """Evaluate one loaded model on a labelled split of a cache; returns its Evaluation."""
    loaded.check_classes(cache.classes, str(cache.path))
    images, labels = labelled_split(cache, split, loaded.config)
    start = time.perf_counter()
    label = f"evaluate {loaded.path.name} on {split}" if progress else None
    logits = loaded.logits(images, tta, batch_size, progress=label)
    seconds = time.perf_counter() - start
    rates = error_rates(logits, labels)
    accuracy, confusion = per_class_accuracy(logits, labels, len(cache.classes))
    return Evaluation(
        checkpoint=str(loaded.path),
        split=split,
        tta=tta,
        count=rates["count"],
        loss=rates["loss"],
        top1_error=rates["top1_error"],
        top5_error=rates["top5_error"],
        per_class={w: float(a) for w, a in zip(cache.classes, accuracy.tolist(), strict=True)},
        confusion=confusion.tolist(),
        seconds=seconds,
        images_per_second=len(labels) / max(seconds, 1e-9),
        precision=loaded.runtime.precision,
    )


def evaluate(
    checkpoints: str | Path | list[str | Path],
    cache_dir: str | Path,
    *,
    split: str = "val",
    tta: str = "center",
    batch_size: int = 500,
    runtime: Runtime | None = None,
    progress: bool = False,
) -> list[Evaluation]:
    """Evaluate checkpoints on a split of a prepared cache; returns one Evaluation each.

    checkpoints: one or a list of checkpoint files, run folders (their best.pt) or member specs
    (RUN@last, RUN@epochs:2,4, ...). progress: show a progress bar per checkpoint.
    """
    cache = load_cache(cache_dir)
    specs = [checkpoints] if isinstance(checkpoints, str | Path) else checkpoints
    paths = [p for spec in specs for p in resolve_members(str(spec))]
    return [
        evaluate_loaded(load_model(p, runtime), cache, split, tta, batch_size, progress)
        for p in paths
    ]


def format_evaluations(results: list[Evaluation], names: dict[str, str], worst: int = 5) -> str:
    """A short table for people (percent), then the best and worst classes of each result."""
    lines = [
        f"{'checkpoint':<44} {'split':<5} {'tta':<6} {'images':>6} {'top-1 err':>9} "
        f"{'top-5 err':>9} {'loss':>6} {'img/s':>7} precision"
    ]
    for r in results:
        name = r.checkpoint if len(r.checkpoint) <= 44 else "..." + r.checkpoint[-41:]
        lines.append(
            f"{name:<44} {r.split:<5} {r.tta:<6} {r.count:>6} {r.top1_error:>9.2%} "
            f"{r.top5_error:>9.2%} {r.loss:>6.3f} {r.images_per_second:>7.0f} {r.precision}"
        )
    for r in results:
        ranked = sorted((a, w) for w, a in r.per_class.items() if not math.isnan(a))

        def label(item):
            return f"{names.get(item[1], item[1]).split(',')[0]} {item[0]:.0%}"

        if len(results) > 1:
            lines.append(f"{r.checkpoint}:")
        lines.append(f"  best classes:  {', '.join(label(i) for i in ranked[::-1][:worst])}")
        lines.append(f"  worst classes: {', '.join(label(i) for i in ranked[:worst])}")
    return "\n".join(lines)


def evaluations_json(results: list[Evaluation]) -> str:
    """One JSON object for one result; {"evaluations": [...]} for several."""
    objects = [r.to_json() for r in results]
    return json.dumps(objects[0] if len(objects) == 1 else {"evaluations": objects})

"""What the report's members score: their class probabilities on a split (through the
probability cache), their error rates, the experiments table's rows and the ensemble's row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tinycnn.analysis.experiments import Member, ensemble_paper_figure, experiment_row
from tinycnn.data.cache import Cache
from tinycnn.ensembles import ProbabilityCache, average
from tinycnn.evaluation import labelled_split, split_rows
from tinycnn.inference import LoadedModel, images_tensor, load_model
from tinycnn.metrics import error_rates
from tinycnn.runtime import Runtime


def split_probabilities(
    loaded: LoadedModel, cache: Cache, store: ProbabilityCache, split: str, bar: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) probabilities of a model on a labelled split (cached), and the split's labels.

    bar: the progress bar's label, or None for no bar.
    """
    name, rows = split_rows(cache, split, loaded.config)
    labels = cache.split(name).labels
    labels = np.asarray(labels if rows is None else labels[rows], np.int64)

    def compute() -> np.ndarray:
        images, _ = labelled_split(cache, split, loaded.config)
        return loaded.logits(images, progress=bar).softmax(1).numpy()

    computed_in = loaded.runtime.computed_in
    probs = store.get(loaded.sha256, cache, split, "center", rows, computed_in, compute)
    return probs, labels


def train_probabilities(
    loaded: LoadedModel, cache: Cache, store: ProbabilityCache, rows: np.ndarray, progress: bool
) -> np.ndarray:
    """(len(rows), C) probabilities of a model on some training rows (cached under them)."""

    def compute() -> np.ndarray:
        images = images_tensor(cache.split("train").images[rows])
        bar = f"train images {Path(loaded.path).name}" if progress else None
        return loaded.logits(images, progress=bar).softmax(1).numpy()

    computed_in = loaded.runtime.computed_in
    return store.get(loaded.sha256, cache, "train", "center", rows, computed_in, compute)


def holdout(config: dict) -> tuple[int, int]:
    """(holdout_per_class, holdout_seed) of a run's config: its tuning split (0: none)."""
    data = config.get("data", {})
    return int(data.get("holdout_per_class", 0)), int(data.get("holdout_seed", 0))


def score_members(
    members: list[Member],
    runtime: Runtime,
    cache: Cache,
    store: ProbabilityCache,
    progress: bool,
) -> tuple[list[dict], dict, LoadedModel]:
    """Experiment rows with each member's errors, the ensemble's probabilities, the best model.

    Returns (rows, {"val": (probs, labels), "tune": (probs, labels) or None}, the member with
    the lowest val top-1 error, which the t-SNE, filter and ambiguity sections look inside).
    """
    rows, val, tune, best = [], [], [], None
    for member in members:
        loaded = load_model(member.checkpoint, runtime)
        loaded.check_classes(cache.classes, str(cache.path))
        row = experiment_row(member, sum(p.numel() for p in loaded.model.parameters()))
        bar = f"val {member.label}" if progress else None
        probs, labels = split_probabilities(loaded, cache, store, "val", bar)
        row.update(_rates(probs, labels, "val"))
        val.append(probs)
        if holdout(loaded.config)[0]:
            bar = f"tune {member.label}" if progress else None
            tune_probs, tune_labels = split_probabilities(loaded, cache, store, "tune", bar)
            row.update(_rates(tune_probs, tune_labels, "tune"))
            tune.append((tune_probs, tune_labels, holdout(loaded.config)))
        rows.append(row)
        if best is None or row["val_top1_error"] < best[0]:
            best = (row["val_top1_error"], loaded)  # the others are freed as we go
    combined = {"val": (average(val, [1.0] * len(val)), labels), "tune": None}
    if len(tune) == len(members) and len({t[2] for t in tune}) == 1:  # one shared tuning split
        combined["tune"] = (average([t[0] for t in tune], [1.0] * len(tune)), tune[0][1])
    return rows, combined, best[1]


def ensemble_row(rows: list[dict], combined: dict) -> dict:
    """The experiments table's last row: the members' ensemble (from score_members)."""
    row = {
        "label": f"ensemble of {len(rows)}" if len(rows) > 1 else "the model alone",
        "model": "ensemble",
        "params": sum(r["params"] for r in rows),
        # Snapshots of one run share its training: count each run's longest once.
        "training_seconds": sum(
            max(r["training_seconds"] or 0 for r in rows if _run_key(r) == run)
            for run in {_run_key(r) for r in rows}
        ),
        "paper": ensemble_paper_figure(rows),
    }
    row.update(_rates(*combined["val"], "val"))
    if combined["tune"] is not None:
        row.update(_rates(*combined["tune"], "tune"))
    return row


def _rates(probs: np.ndarray, labels: np.ndarray, prefix: str) -> dict:
    rates = error_rates(torch.from_numpy(probs).clamp_min(1e-12).log(), torch.from_numpy(labels))
    return {f"{prefix}_{k}": rates[k] for k in ("top1_error", "top5_error", "loss")}


def _run_key(row: dict) -> str:
    return row["run"] or row["checkpoint"]

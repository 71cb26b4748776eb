"""The held-out tuning split: K training images per class, chosen reproducibly by seed."""

from __future__ import annotations

import numpy as np

from tinycnn.errors import ConfigError


def holdout_split(
    labels: np.ndarray, per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split train rows into (train_rows, tune_rows), per_class of each class in tune.

    With the official val split kept untouched, tune plays the paper's val role (model choice,
    early stopping) and val becomes the honest test figure. Rows are returned sorted.
    """
    if per_class == 0:
        return np.arange(len(labels)), np.arange(0)
    rng = np.random.default_rng(seed)
    tune = []
    for cls in np.unique(labels):
        rows = np.flatnonzero(labels == cls)
        if per_class >= len(rows):
            raise ConfigError(
                f"data.holdout_per_class = {per_class}: class {cls} has only "
                f"{len(rows)} training images"
            )
        tune.append(rng.choice(rows, per_class, replace=False))
    tune_rows = np.sort(np.concatenate(tune))
    train_rows = np.setdiff1d(np.arange(len(labels)), tune_rows)
    return train_rows, tune_rows

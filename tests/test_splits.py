"""data/splits.py: the held-out tuning split."""

from __future__ import annotations

import numpy as np
import pytest

from tinycnn.data.splits import holdout_split
from tinycnn.errors import ConfigError


def test_holdout_split_is_per_class_and_reproducible() -> None:
    labels = np.repeat(np.arange(4), 10)
    train_rows, tune_rows = holdout_split(labels, 3, seed=1)
    assert np.bincount(labels[tune_rows]).tolist() == [3, 3, 3, 3]
    assert not set(train_rows) & set(tune_rows) and len(train_rows) + len(tune_rows) == 40
    assert np.array_equal(tune_rows, holdout_split(labels, 3, seed=1)[1])
    with pytest.raises(ConfigError, match="has only 10"):
        holdout_split(labels, 10)

"""The ensembles' probability cache: each member's class probabilities on a split, stored as an
.npy named by a digest of everything they depend on, and checked before it is used."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np

from tinycnn.atomic import save_npy
from tinycnn.data.cache import Cache
from tinycnn.data.checksums import file_sha256
from tinycnn.errors import CacheError, OutputError
from tinycnn.paths import PROB_CACHE

DEFAULT_PROB_CACHE = PROB_CACHE


class ProbabilityCacheWarning(UserWarning):
    """The probability cache cannot be used; the ensemble goes on without it."""


class ProbabilityCache:
    """Member probabilities on a split, as .npy files named by a digest of all they depend on.

    The key holds the checkpoint's sha256, the data's content (``Cache.content_id``: a rebuilt
    cache with other pixels or labels gets new entries, whatever its source), the split and its
    rows (tune follows the run's holdout settings), the TTA and the precision. The cache is an
    optimisation: when it cannot be read or written (a read-only TINYCNN_CACHE, a full disk, a
    cache prepared without checksums), a ProbabilityCacheWarning says so once and the
    probabilities are computed as if there were no cache.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.writable = True
        self._warned = False

    def get(
        self,
        checkpoint: Path,
        cache: Cache,
        split: str,
        tta: str,
        rows: np.ndarray | None,
        precision: str,
        compute,
    ) -> np.ndarray:
        """compute()'s (N, C) probabilities, from the cache when an entry matches.

        rows: the rows of the cache split that ``split`` reads (None: all of them).
        """
        if self.root is None:
            return compute()
        try:
            path = self.root / f"{self.key(checkpoint, cache, split, tta, rows, precision)}.npy"
        except CacheError as exc:  # e.g. a cache without checksums: no content id
            self._warn(f"not caching probabilities ({exc})")
            return compute()
        probs = self._read(path)
        if probs is not None:
            count = len(rows) if rows is not None else len(cache.split(split))
            why = _invalid(probs, count, cache.num_classes)
            if why is None:
                return probs
            self._warn(f"{path}: damaged cached probabilities ({why}), computing them again")
        probs = compute()
        if self.writable:
            try:
                save_npy(path, probs)
            except OutputError as exc:
                self.writable = False
                self._warn(f"probability cache not written, going on without it ({exc})")
        return probs

    @staticmethod
    def key(
        checkpoint: Path,
        cache: Cache,
        split: str,
        tta: str,
        rows: np.ndarray | None,
        precision: str,
    ) -> str:
        """32 hex digits naming one member's probabilities on one split of one dataset."""
        rows_id = "all" if rows is None else hashlib.sha256(np.asarray(rows, np.int64)).hexdigest()
        parts = {
            "checkpoint": file_sha256(checkpoint),
            "data": cache.content_id,
            "split": split,
            "rows": rows_id,
            "tta": tta,
            "precision": precision,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _read(self, path: Path) -> np.ndarray | None:
        """The stored array, or None when there is none or it cannot be read (then recomputed)."""
        try:
            return np.load(path) if path.is_file() else None
        except (OSError, ValueError) as exc:  # truncated, unreadable, not an .npy
            self._warn(f"{path}: unreadable cached probabilities, computing them again ({exc})")
            return None

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, ProbabilityCacheWarning, stacklevel=3)


def _invalid(probs: np.ndarray, count: int, classes: int) -> str | None:
    """Why an array cannot be a split's (count, classes) class probabilities, or None."""
    if probs.shape != (count, classes):
        return f"shape {probs.shape}, expected {(count, classes)}"
    if not np.issubdtype(probs.dtype, np.floating):
        return f"dtype {probs.dtype}"
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or probs.max() > 1:
        return "values outside [0, 1]"
    sums = probs.sum(axis=1, dtype=np.float64)
    if np.abs(sums - 1).max() > 1e-4:  # a softmax sums to 1 within ~1e-6 in float32
        return f"a row sums to {sums[np.argmax(np.abs(sums - 1))]:.6g}, not 1"
    return None

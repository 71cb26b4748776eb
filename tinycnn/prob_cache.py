"""The ensembles' probability cache: each member's class probabilities on a split, stored as an
.npy named by a digest of everything they depend on and a digest of its own bytes, both checked
before it is used."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np

from tinycnn.atomic import write_bytes
from tinycnn.data.cache import Cache
from tinycnn.errors import CacheError, OutputError
from tinycnn.paths import PROB_CACHE

DEFAULT_PROB_CACHE = PROB_CACHE
# Bumped whenever what an entry holds changes for the same inputs (TTA views, softmax, layout):
# old entries are then never read.
FORMAT = 2


class ProbabilityCacheWarning(UserWarning):
    """The probability cache cannot be used; the ensemble goes on without it."""


class ProbabilityCache:
    """Member probabilities on a split, as .npy files named by a digest of all they depend on.

    The key holds the sha256 of the checkpoint's bytes as the model was loaded from them (not as
    the file is later: a training run may replace best.pt meanwhile), the data's content
    (``Cache.content_id``: a rebuilt cache with other pixels or labels gets new entries,
    whatever its source), the split and its rows (tune follows the run's holdout settings), the
    TTA, the device kind and precision they were computed in (``Runtime.computed_in``: a GPU's
    fp32 may be TF32, bf16 rounds otherwise) and the entry format. Each file is named
    ``KEY-DIGEST.npy``, DIGEST being its bytes' own: flipped bits anywhere, even ones that leave
    the values plausible, are seen, and the entry is computed again. The cache is an
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
        checkpoint_sha256: str,
        cache: Cache,
        split: str,
        tta: str,
        rows: np.ndarray | None,
        computed_in: str,
        compute,
    ) -> np.ndarray:
        """compute()'s (N, C) probabilities, from the cache when an intact entry matches.

        checkpoint_sha256: of the bytes the model was loaded from (LoadedModel.sha256);
        rows: the rows of the cache split that ``split`` reads (None: all of them).
        """
        if self.root is None:
            return compute()
        try:
            key = self.key(checkpoint_sha256, cache, split, tta, rows, computed_in)
        except CacheError as exc:  # e.g. a cache without checksums: no content id
            self._warn(f"not caching probabilities ({exc})")
            return compute()
        count = len(rows) if rows is not None else len(cache.split(split))
        probs = self._lookup(key, count, cache.num_classes)
        if probs is not None:
            return probs
        if self.writable:
            self._verify(cache, split)
        probs = compute()
        if self.writable:
            buffer = io.BytesIO()
            np.save(buffer, probs)
            data = buffer.getvalue()
            try:
                write_bytes(self.root / f"{key}-{_digest(data)}.npy", data)
            except OutputError as exc:
                self.writable = False
                self._warn(f"probability cache not written, going on without it ({exc})")
        return probs

    def _verify(self, cache: Cache, split: str) -> None:
        """CacheError naming the damaged file when the images an entry would be computed from
        differ from the checksums the key names (Cache.content_id is made of the recorded
        checksums, not of the bytes read): probabilities of damaged pixels stored under a sound
        cache's key would outlive the damage. Once per cache and split (~1 s a GB)."""
        cache.check_images(split if split in cache.splits else "train")  # tune: training rows

    @staticmethod
    def key(
        checkpoint_sha256: str,
        cache: Cache,
        split: str,
        tta: str,
        rows: np.ndarray | None,
        computed_in: str,
    ) -> str:
        """32 hex digits naming one member's probabilities on one split of one dataset."""
        rows_id = "all" if rows is None else hashlib.sha256(np.asarray(rows, np.int64)).hexdigest()
        parts = {
            "checkpoint": checkpoint_sha256,
            "data": cache.content_id,
            "split": split,
            "rows": rows_id,
            "tta": tta,
            "computed_in": computed_in,
            "format": FORMAT,
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]

    def _lookup(self, key: str, count: int, classes: int) -> np.ndarray | None:
        """The first intact entry under key; damaged ones are said once and removed."""
        try:
            entries = sorted(self.root.glob(f"{key}-*.npy")) if self.root.is_dir() else []
        except OSError:
            return None
        for path in entries:
            why, probs = _check(path, count, classes)
            if why is None:
                return probs
            self._warn(f"{path}: damaged cached probabilities ({why}), computing them again")
            with contextlib.suppress(OSError):  # a read-only cache keeps it
                path.unlink(missing_ok=True)  # ours to remove
        return None

    def _warn(self, message: str) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(message, ProbabilityCacheWarning, stacklevel=3)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def _check(path: Path, count: int, classes: int) -> tuple[str | None, np.ndarray | None]:
    """(None, the array) for an intact entry, else (why not, None)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc}", None
    if _digest(data) != path.stem.rpartition("-")[2]:
        return "its bytes do not match their digest", None
    try:
        probs = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:
        return f"unreadable: {type(exc).__name__}: {exc}", None
    if not isinstance(probs, np.ndarray):
        return "not an .npy array", None
    why = _invalid(probs, count, classes)
    return (why, None) if why else (None, probs)


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

"""Model and snapshot ensembles: average class probabilities; greedy selection (Caruana et al.).

Members are checkpoints or run folders with a snapshot selection:

    RUN_DIR              its best.pt           RUN_DIR@last / RUN_DIR@best
    RUN_DIR@every:N      snapshots N iterations apart (iter-*.pt; the paper used 10,000)
    RUN_DIR@top:K        the K epoch snapshots with the lowest selection error (metrics.jsonl)
    RUN_DIR@last:K       the K most recent snapshots (iter-* and epoch-*, by iteration)
    RUN_DIR@epochs:2,4   those epoch snapshots

Each member's probabilities on a split are computed once and cached under the checkpoint's
sha256 and the data's content (see ProbabilityCache), so adding a member to an ensemble costs
one member's inference.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tinycnn.atomic import atomic_path, save_npy, write_into
from tinycnn.checkpoint import load_checkpoint
from tinycnn.data.cache import Cache, load_cache
from tinycnn.errors import CacheError, ConfigError, OutputError
from tinycnn.evaluation import labelled_split, split_rows
from tinycnn.inference import file_digest, load_model, model_predictor
from tinycnn.metrics import error_rates
from tinycnn.paths import PROB_CACHE
from tinycnn.run_folder import read_metrics
from tinycnn.runtime import Runtime, make_runtime

DEFAULT_PROB_CACHE = PROB_CACHE


def _snapshots(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    return sorted([*folder.glob("iter-*.pt"), *folder.glob("epoch-*.pt")], key=_position)


def _position(path: Path) -> tuple[int, int]:
    # For listing: iter-* then epoch-*, each by number (names are zero-padded).
    kind, number = path.stem.split("-")
    return (0 if kind == "iter" else 1, int(number))


def _most_recent(run: Path, snapshots: list[Path], k: int) -> list[Path]:
    """The k snapshots saved last, oldest first, by the training iteration they hold.

    iter-N is at iteration N and epoch-E at E * iters_per_epoch, so the two kinds interleave.
    An iteration snapshot at an epoch's end holds the same weights as that epoch's snapshot:
    only the epoch one is kept, so that k members are k different models.
    """
    epochs = [p for p in snapshots if p.stem.startswith("epoch-")]
    per_epoch = _iters_per_epoch(run, epochs) if epochs else 0
    by_iteration: dict[int, Path] = {}
    for path in snapshots:  # iter-* first: an epoch snapshot at the same iteration replaces it
        kind, number = path.stem.split("-")
        by_iteration[int(number) * (per_epoch if kind == "epoch" else 1)] = path
    return [by_iteration[i] for i in sorted(by_iteration)][-k:]


def _iters_per_epoch(run: Path, epoch_snapshots: list[Path]) -> int:
    """From a complete epoch's metrics line, else from an epoch snapshot's stored iteration."""
    for row in read_metrics(run):
        if not row.get("partial_epoch") and row["epoch"] >= 1:
            return int(row["iteration"]) // int(row["epoch"])
    payload = load_checkpoint(epoch_snapshots[-1])
    return int(payload["iteration"]) // max(1, int(payload["epoch"]))


def resolve_members(spec: str) -> list[Path]:
    """Checkpoint files named by one member spec (see the module docstring)."""
    target, _, selection = spec.partition("@")
    path = Path(target)
    if path.is_file():
        if selection:
            raise ConfigError(f"{spec}: a snapshot selection (@...) needs a run folder")
        return [path]
    if not (path / "checkpoints").is_dir():
        raise ConfigError(
            f"{target}: neither a checkpoint file nor a run folder (with checkpoints/)"
        )
    kind, _, arg = (selection or "best").partition(":")
    if kind in ("best", "last") and not arg:
        return [_existing(path / "checkpoints" / f"{kind}.pt")]
    snapshots = _snapshots(path)
    if kind == "every":
        step = _positive_int(spec, arg)
        chosen = [
            p
            for p in snapshots
            if p.stem.startswith("iter-") and int(p.stem.split("-")[1]) % step == 0
        ]
    elif kind == "last":
        chosen = _most_recent(path, snapshots, _positive_int(spec, arg))
    elif kind == "epochs":
        wanted = [int(v) for v in arg.split(",") if v.strip()]
        chosen = [_existing(path / "checkpoints" / f"epoch-{e:03d}.pt") for e in wanted]
    elif kind == "top":
        chosen = _top_epochs(path, _positive_int(spec, arg))
    else:
        raise ConfigError(
            f"{spec}: unknown selection @{kind}; use best, last, every:N, top:K, "
            "last:K or epochs:LIST"
        )
    if not chosen:
        raise ConfigError(
            f"{spec}: selects no snapshot (the run has "
            f"{', '.join(p.name for p in snapshots) or 'none'})"
        )
    return chosen


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    return path


def _positive_int(spec: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{spec}: {text!r} is not a positive whole number")
    return int(text)


def _top_epochs(run: Path, k: int) -> list[Path]:
    scored = []
    for row in read_metrics(run):
        key = "tune_top1_error" if "tune_top1_error" in row else "val_top1_error"
        path = run / "checkpoints" / f"epoch-{int(row['epoch']):03d}.pt"
        if path.is_file() and not row.get("partial_epoch"):
            scored.append((row[key], path))
    return [p for _, p in sorted(scored)[:k]]


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
            return probs
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
            "checkpoint": file_digest(checkpoint),
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


@dataclass
class EnsembleResult:
    split: str
    tta: str
    members: list[dict]  # {"checkpoint", "weight", "top1_error", "top5_error", "loss"}
    ensemble: dict  # {"top1_error", "top5_error", "loss", "count"}
    gain: float  # best member's top-1 error minus the ensemble's (positive = better)
    probabilities: np.ndarray = field(repr=False)  # (N, C) float32, the ensemble's
    selection: dict | None = None  # greedy: {"split", "counts", "tune_top1_error"}

    def to_json(self) -> dict:
        out = {k: v for k, v in vars(self).items() if k != "probabilities"}
        return out


def _rates(probs: np.ndarray, labels: Tensor) -> dict:
    return error_rates(torch.from_numpy(probs).clamp_min(1e-12).log(), labels)


def average(probs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of member probabilities (weights need not sum to 1)."""
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError(f"ensemble weights {weights} must add up to more than 0")
    out = np.zeros_like(probs[0], dtype=np.float64)
    for p, w in zip(probs, weights, strict=True):
        out += (w / total) * p
    return out.astype(np.float32)


def greedy_select(probs: list[np.ndarray], labels: Tensor, rounds: int) -> list[int]:
    """Forward selection with replacement (Caruana et al. 2004): counts per member.

    Each round adds the member whose inclusion gives the lowest top-1 error (then loss) of the
    running average; the best prefix over all rounds is kept.
    """
    counts = [0] * len(probs)
    running = np.zeros_like(probs[0], dtype=np.float64)
    best: tuple[tuple[float, float], list[int]] | None = None
    for step in range(1, rounds + 1):
        trials = []
        for i, p in enumerate(probs):
            candidate = (running + p) / step
            r = _rates(candidate.astype(np.float32), labels)
            trials.append(((r["top1_error"], r["loss"]), i))
        score, chosen = min(trials)
        counts[chosen] += 1
        running += probs[chosen]
        if best is None or score < best[0]:
            best = (score, list(counts))
    return best[1]


def member_probabilities(
    paths: list[Path],
    cache: Cache,
    split: str,
    tta: str,
    runtime: Runtime,
    prob_cache: ProbabilityCache,
    batch_size: int = 500,
) -> tuple[list[np.ndarray], Tensor]:
    """Each member's (N, C) probabilities on a split (cached), and the split's labels."""
    labels = None
    probs = []
    for path in paths:
        loaded = load_model(path, runtime)
        loaded.check_classes(cache.classes, str(cache.path))

        def compute(loaded=loaded):
            images, _ = labelled_split(cache, split, loaded.config)
            return loaded.probabilities(images, tta, batch_size).numpy()

        name, rows = split_rows(cache, split, loaded.config)
        precision = runtime.precision
        probs.append(prob_cache.get(path, cache, split, tta, rows, precision, compute))
        if labels is None:  # the labels alone: no copy of the images
            split_labels = cache.split(name).labels
            labels = torch.from_numpy(
                np.asarray(split_labels if rows is None else split_labels[rows], np.int64)
            )
    return probs, labels


def ensemble(
    specs: list[str],
    cache_dir: str | Path,
    *,
    split: str = "val",
    tta: str = "center",
    weights: list[float] | None = None,
    greedy: bool = False,
    select_on: str = "tune",
    rounds: int = 0,
    runtime: Runtime | None = None,
    prob_cache: Path | None = DEFAULT_PROB_CACHE,
) -> EnsembleResult:
    """Average the members' probabilities on a split; optionally choose members greedily."""
    paths = [p for spec in specs for p in resolve_members(spec)]
    if weights is not None and len(weights) != len(paths):
        raise ConfigError(f"{len(weights)} weights for {len(paths)} members")
    runtime = runtime or make_runtime()
    cache = load_cache(cache_dir)
    store = ProbabilityCache(prob_cache)
    probs, labels = member_probabilities(paths, cache, split, tta, runtime, store)
    selection = None
    if greedy:
        tune_probs, tune_labels = member_probabilities(paths, cache, select_on, tta, runtime, store)
        counts = greedy_select(tune_probs, tune_labels, rounds or max(10, 2 * len(paths)))
        weights = [float(c) for c in counts]
        chosen = average(tune_probs, weights)
        selection = {
            "split": select_on,
            "counts": counts,
            f"{select_on}_top1_error": _rates(chosen, tune_labels)["top1_error"],
        }
    weights = weights or [1.0] * len(paths)
    members = []
    for path, p, w in zip(paths, probs, weights, strict=True):
        r = _rates(p, labels)
        members.append(
            {
                "checkpoint": str(path),
                "weight": w,
                "top1_error": r["top1_error"],
                "top5_error": r["top5_error"],
                "loss": r["loss"],
            }
        )
    combined = average(probs, weights)
    rates = _rates(combined, labels)
    best_member = min(m["top1_error"] for m in members if m["weight"] > 0)
    return EnsembleResult(
        split, tta, members, rates, best_member - rates["top1_error"], combined, selection
    )


def save_result(result: EnsembleResult, out: str | Path) -> Path:
    """Write probabilities.npy and ensemble.json into a folder, both or neither.

    OutputError (naming the file and the reason) when the folder cannot be written.
    """
    out = Path(out)
    probs = io.BytesIO()
    np.save(probs, result.probabilities)
    text = json.dumps(result.to_json(), indent=1) + "\n"
    # Both temporary files are written before either is renamed into place.
    with atomic_path(out / "probabilities.npy") as probs_tmp:
        write_into(probs_tmp, probs.getbuffer())
        with atomic_path(out / "ensemble.json") as json_tmp:
            write_into(json_tmp, text.encode("utf-8"))
    return out


def format_result(result: EnsembleResult) -> str:
    """Members, the ensemble and the gain, in percent, for people."""
    lines = [f"{'member':<52} {'weight':>6} {'top-1 err':>9} {'top-5 err':>9}"]
    for m in result.members:
        name = m["checkpoint"] if len(m["checkpoint"]) <= 52 else "..." + m["checkpoint"][-49:]
        lines.append(
            f"{name:<52} {m['weight']:>6g} {m['top1_error']:>9.2%} {m['top5_error']:>9.2%}"
        )
    e = result.ensemble
    lines.append(
        f"{'ensemble (' + result.split + ', ' + result.tta + ')':<52} {'':>6} "
        f"{e['top1_error']:>9.2%} {e['top5_error']:>9.2%}"
    )
    lines.append(f"gain over the best member: {result.gain * 100:+.2f} points of top-1 error")
    if result.selection:
        lines.append(
            f"greedy selection on {result.selection['split']}: counts {result.selection['counts']}"
        )
    return "\n".join(lines)


@dataclass
class EnsemblePredictor:
    """A Predictor (see predict.py) that averages its members' probabilities."""

    members: list  # LoadedModel, all with the same class list
    weights: list[float]
    tta: str = "center"

    @property
    def classes(self) -> list[str]:
        return self.members[0].classes

    @property
    def names(self) -> list[str]:
        return self.members[0].names

    def __call__(self, images_u8: Tensor) -> Tensor:
        probs = [m.probabilities(images_u8, self.tta).numpy() for m in self.members]
        return torch.from_numpy(average(probs, self.weights))


def load_predictor(
    specs: list[str],
    *,
    tta: str = "center",
    weights: list[float] | None = None,
    runtime: Runtime | None = None,
):
    """One model (its own Predictor) or an ensemble of all members the specs name."""
    paths = [p for spec in specs for p in resolve_members(spec)]
    runtime = runtime or make_runtime()
    loaded = [load_model(p, runtime) for p in paths]
    for other in loaded[1:]:
        other.check_classes(loaded[0].classes, str(loaded[0].path))
    if len(loaded) == 1 and not weights:
        return model_predictor(loaded[0], tta)
    weights = weights or [1.0] * len(loaded)
    if len(weights) != len(loaded):
        raise ConfigError(f"{len(weights)} weights for {len(loaded)} members")
    return EnsemblePredictor(loaded, weights, tta)

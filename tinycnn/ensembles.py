"""Model and snapshot ensembles: average class probabilities; greedy selection (Caruana et al.).

Members are checkpoints or run folders with a snapshot selection (members.py: RUN, RUN@last:3,
RUN@epochs:2,4, ...).

Each member's probabilities on a split are computed once and cached under the checkpoint's
sha256 and the data's content (see ProbabilityCache), so adding a member to an ensemble costs
one member's inference.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tinycnn.atomic import atomic_path, write_into
from tinycnn.data.cache import Cache, load_cache
from tinycnn.errors import ConfigError
from tinycnn.evaluation import labelled_split, split_rows
from tinycnn.inference import load_model, model_predictor
from tinycnn.members import resolve_members
from tinycnn.metrics import error_rates
from tinycnn.prob_cache import (  # noqa: F401 - also their home for the callers
    DEFAULT_PROB_CACHE,
    ProbabilityCache,
    ProbabilityCacheWarning,
)
from tinycnn.runtime import Runtime, make_runtime


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
        # Absolute: the file is read from other folders than the one the command ran in.
        out["members"] = [{**m, "checkpoint": _absolute(m["checkpoint"])} for m in self.members]
        return out


def _absolute(checkpoint: str) -> str:
    return str(Path(checkpoint).expanduser().resolve())


def _rates(probs: np.ndarray, labels: Tensor) -> dict:
    return error_rates(torch.from_numpy(probs).clamp_min(1e-12).log(), labels)


def check_weights(weights: list[float], members: int) -> None:
    """ConfigError unless there is one weight a member, each a finite number >= 0 (a NaN or
    infinite weight makes every average NaN, whose argmax is class 0; a negative one makes
    negative probabilities), adding up to more than 0."""
    if len(weights) != members:
        raise ConfigError(f"{len(weights)} weights for {members} members")
    for weight in weights:
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight >= 0):
            raise ConfigError(f"ensemble weight {weight!r}: expected a finite number >= 0")
    if float(sum(weights)) <= 0:
        raise ConfigError(f"ensemble weights {weights} must add up to more than 0")


def average(probs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    """Weighted mean of member probabilities (weights need not sum to 1; check_weights)."""
    check_weights(weights, len(probs))
    total = float(sum(weights))
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
    progress: bool = False,
    option: str = "--split",
) -> tuple[list[np.ndarray], Tensor]:
    """Each member's (N, C) probabilities on a split (cached), and the split's labels.

    option: what chose the split, as errors name it (split_rows). ConfigError where the members
    were tuned on different held-out images ("tune"): their rows would be averaged image by
    image across different images.
    """
    labels, first = None, None
    probs = []
    for path in paths:
        loaded = load_model(path, runtime)
        loaded.check_classes(cache.classes, str(cache.path))

        def compute(loaded=loaded):
            images, _ = labelled_split(cache, split, loaded.config)
            label = f"evaluate {loaded.path.name} on {split}" if progress else None
            return loaded.probabilities(images, tta, batch_size, label).numpy()

        name, rows = split_rows(cache, split, loaded.config, option, str(path))
        if first is None:
            first = (path, rows, loaded.config["data"])
        elif rows is not None and not np.array_equal(rows, first[1]):
            raise ConfigError(
                f"{option} {split}: {path} holds out other training images than {first[0]} "
                f"(holdout_per_class / holdout_seed {_holdout(loaded.config['data'])} against "
                f"{_holdout(first[2])}), so the members have no tuning images in common; use "
                "val, or members trained with one held-out split"
            )
        computed_in = loaded.runtime.computed_in  # each member's own (load_model)
        probs.append(prob_cache.get(loaded.sha256, cache, split, tta, rows, computed_in, compute))
        if labels is None:  # the labels alone: no copy of the images
            split_labels = cache.split(name).labels
            labels = torch.from_numpy(
                np.asarray(split_labels if rows is None else split_labels[rows], np.int64)
            )
    return probs, labels


def _holdout(data: dict) -> str:
    return f"{data['holdout_per_class']} / {data['holdout_seed']}"


def ensemble(
    specs: str | Path | list[str | Path],
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
    progress: bool = False,
) -> EnsembleResult:
    """Average the members' probabilities on a split; returns an EnsembleResult.

    specs: one or a list of checkpoints, run folders or member specs (members.py), e.g.
    ["runs/a@last:3", "runs/b"]. greedy: choose members with replacement on select_on.
    prob_cache: where member probabilities are cached (None: not cached).
    """
    specs = [specs] if isinstance(specs, str | Path) else specs
    if greedy and weights is not None:
        raise ConfigError(
            "--weights and --greedy both set the members' weights (greedy: how often each is "
            "chosen); give one"
        )
    paths = [p for spec in specs for p in resolve_members(str(spec))]
    if weights is not None:
        check_weights(weights, len(paths))
    runtime = runtime or make_runtime()
    cache = load_cache(cache_dir)
    store = ProbabilityCache(prob_cache)
    probs, labels = member_probabilities(
        paths, cache, split, tta, runtime, store, progress=progress
    )
    selection = None
    if greedy:
        weights, selection = _greedy_weights(
            paths, cache, select_on, tta, runtime, store, rounds, progress
        )
    weights = weights or [1.0] * len(paths)
    members = _member_rows(paths, probs, weights, labels)
    combined = average(probs, weights)
    rates = _rates(combined, labels)
    best_member = min(m["top1_error"] for m in members if m["weight"] > 0)
    return EnsembleResult(
        split, tta, members, rates, best_member - rates["top1_error"], combined, selection
    )


def _greedy_weights(
    paths: list[Path],
    cache: Cache,
    select_on: str,
    tta: str,
    runtime: Runtime,
    store: ProbabilityCache,
    rounds: int,
    progress: bool,
) -> tuple[list[float], dict]:
    """Greedy selection on select_on: each member's weight (how often it was chosen), and the
    selection's record for EnsembleResult.selection."""
    option = "--greedy chooses members on --select-on"
    tune_probs, tune_labels = member_probabilities(
        paths, cache, select_on, tta, runtime, store, progress=progress, option=option
    )
    counts = greedy_select(tune_probs, tune_labels, rounds or max(10, 2 * len(paths)))
    weights = [float(c) for c in counts]
    chosen = average(tune_probs, weights)
    selection = {
        "split": select_on,
        "counts": counts,
        f"{select_on}_top1_error": _rates(chosen, tune_labels)["top1_error"],
    }
    return weights, selection


def _member_rows(
    paths: list[Path], probs: list[np.ndarray], weights: list[float], labels: Tensor
) -> list[dict]:
    """Each member's checkpoint, weight and errors on the split, for EnsembleResult.members."""
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
    return members


def save_result(result: EnsembleResult, out: str | Path) -> Path:
    """Write probabilities.npy and ensemble.json into a folder, each whole.

    Both are written in full before either is renamed into place, the probabilities first:
    ensemble.json, last, names their sha256 (``probabilities_sha256``), so a pair torn by a kill
    between the two renames shows as a digest that differs. OutputError (naming the file and
    the reason) when the folder cannot be written.
    """
    out = Path(out)
    probs = io.BytesIO()
    np.save(probs, result.probabilities)
    digest = hashlib.sha256(probs.getbuffer()).hexdigest()
    text = json.dumps({**result.to_json(), "probabilities_sha256": digest}, indent=1) + "\n"
    # Contexts exit in reverse: probabilities.npy is renamed first, ensemble.json last.
    with (
        atomic_path(out / "ensemble.json") as json_tmp,
        atomic_path(out / "probabilities.npy") as probs_tmp,
    ):
        write_into(probs_tmp, probs.getbuffer())
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
    lines.append(f"ensemble: {gain_words(result.gain)}")
    if result.selection:
        lines.append(
            f"greedy selection on {result.selection['split']}: counts {result.selection['counts']}"
        )
    return "\n".join(lines)


def gain_words(gain: float, error: str = "top-1 error") -> str:
    """The gain (best member's top-1 error minus the ensemble's) in words that say which way."""
    points = round(gain * 100, 2)  # as printed: a gain of 0.001 points is "the same"
    if points == 0:
        return f"the same {error} as its best member"
    way = "lower" if points > 0 else "higher"
    return f"{abs(points):.2f} points {way} {error} than its best member"


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

    @property
    def image_side(self) -> int:
        return self.members[0].image_side

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
        other.check_image_size((loaded[0].image_side,) * 2)
    if len(loaded) == 1 and not weights:
        return model_predictor(loaded[0], tta)
    weights = weights or [1.0] * len(loaded)
    check_weights(weights, len(loaded))
    return EnsemblePredictor(loaded, weights, tta)

"""ensembles.py: averages and greedy selection against plain implementations, ensembles of real
runs, the gain over the best member, and the probability cache (its key, stale and unwritable
entries)."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import Small, fail_fsync, fail_writes, run_cli
from tinycnn.checkpoint import save_checkpoint
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.ensembles import (
    ProbabilityCache,
    ProbabilityCacheWarning,
    average,
    ensemble,
    greedy_select,
)
from tinycnn.errors import ConfigError
from tinycnn.inference import load_model
from tinycnn.runtime import make_runtime

# --- the ensemble's probability cache: keyed on the data's content; optional -----------------


def _pad(data: bytes, size: int) -> bytes:
    return data + b"\0" * (size - len(data))  # after the JPEG's end marker: ignored by decoders


def test_ensemble_follows_a_rebuilt_cache_whose_source_looks_unchanged(
    small: Small, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A rebuilt cache with other pixels, from a source whose names, sizes and times are the
    same (so its fingerprint is too): the cached member probabilities must not be reused."""
    dataset = Path(shutil.copytree(small.dataset, tmp_path / "data"))
    images = dataset / "val" / "images"
    first, other = (images / "val_0.JPEG").read_bytes(), (images / "val_1.JPEG").read_bytes()
    size = max(len(first), len(other))
    (images / "val_0.JPEG").write_bytes(_pad(first, size))
    cache = prepare(dataset, tmp_path / "cache", workers=1, progress=False)
    store, out = tmp_path / "probs", tmp_path / "ens"
    args = ["--data", cache.path, "--device", "cpu", "--precision", "fp32", "--json"]
    ensemble_args = ["ensemble", small.checkpoint, *args, "--prob-cache", store, "--out", out]
    assert run_cli(capsys, ensemble_args)[0] == 0

    stat = (images / "val_0.JPEG").stat()
    (images / "val_0.JPEG").write_bytes(_pad(other, size))  # another picture, same size and time
    os.utime(images / "val_0.JPEG", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rebuilt = prepare(dataset, tmp_path / "cache", workers=1, progress=False, force=True)
    assert rebuilt.manifest["source"] == cache.manifest["source"]  # the source looks the same

    code, printed, _ = run_cli(capsys, ensemble_args)
    assert code == 0
    member = json.loads(printed)["members"][0]
    code, printed, _ = run_cli(capsys, ["evaluate", small.checkpoint, *args])
    assert member["top1_error"] == json.loads(printed)["top1_error"]
    fp32 = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    fresh = load_model(small.checkpoint, fp32).probabilities(
        torch.from_numpy(np.array(load_cache(rebuilt.path).split("val").images))
    )
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), fresh.numpy(), atol=1e-6)


KEY_CHANGES = {
    "same": lambda k: k,
    "checkpoint": lambda k: {**k, "checkpoint": k["other_checkpoint"]},
    "data": lambda k: {**k, "cache": SimpleNamespace(content_id="0123456789abcdef")},
    "split": lambda k: {**k, "split": "train"},
    "rows": lambda k: {**k, "split": "tune", "rows": np.array([1, 2, 3])},
    "tune rows": lambda k: {**k, "split": "tune", "rows": np.array([1, 2, 4])},
    "tta": lambda k: {**k, "tta": "flip"},
    "precision": lambda k: {**k, "precision": "bf16"},
}


def test_probability_cache_key_covers_everything_probabilities_depend_on(
    small: Small, tmp_path: Path
) -> None:
    other = tmp_path / "other.pt"
    payload = torch.load(small.checkpoint, weights_only=True)
    save_checkpoint(other, {**payload, "iteration": payload["iteration"] + 1})
    base = {
        "checkpoint": small.checkpoint,
        "cache": load_cache(small.cache),
        "split": "val",
        "tta": "center",
        "rows": None,
        "precision": "fp32",
        "other_checkpoint": other,
    }

    def key(parts: dict) -> str:
        return ProbabilityCache.key(**{k: v for k, v in parts.items() if k != "other_checkpoint"})

    keys = {name: key(make(base)) for name, make in KEY_CHANGES.items()}
    assert key(base) == keys["same"]  # stable
    assert len(set(keys.values())) == len(keys), keys  # every change gives its own key


def _prob_cache_under_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "plain").write_text("not a folder")
    return tmp_path / "plain" / "probs"  # real: mkdir fails, no mock


def _read_only_prob_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "probs"
    fail_writes(monkeypatch, errno.EROFS, "Read-only file system", under=store)
    return store


def _full_prob_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "probs"
    fail_fsync(monkeypatch, errno.ENOSPC, "No space left on device", under=store)
    return store


@pytest.mark.parametrize(
    ("make_store", "words"),
    [
        (_prob_cache_under_a_file, "not a folder"),
        (_read_only_prob_cache, "read-only file system"),
        (_full_prob_cache, "disk full"),
    ],
)
def test_an_unwritable_probability_cache_is_one_warning_not_a_failure(
    small: Small,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    make_store,
    words: str,
) -> None:
    store = make_store(tmp_path, monkeypatch)
    out = tmp_path / "ens"
    argv = [
        *("ensemble", small.checkpoint, f"{small.run}@last", "--data", small.cache),
        *("--device", "cpu", "--prob-cache", store, "--out", out, "-q"),
    ]
    code, printed, err = run_cli(capsys, argv)
    assert code == 0, err
    assert "ensemble: " in printed and "its best member" in printed
    assert (out / "probabilities.npy").is_file() and (out / "ensemble.json").is_file()
    lines = err.strip().splitlines()  # two members, one warning
    assert len(lines) == 1 and lines[0].startswith("tinycnn: warning: "), err
    assert str(store) in lines[0] and words in lines[0]


def test_an_unreadable_cached_entry_is_computed_again(small: Small, tmp_path: Path) -> None:
    store = tmp_path / "probs"
    fp32 = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    first = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    [entry] = store.iterdir()
    entry.write_bytes(entry.read_bytes()[:50])  # truncated
    with pytest.warns(ProbabilityCacheWarning, match="unreadable cached probabilities"):
        again = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)


def test_weighted_average_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    b = np.array([[0.0, 1.0], [0.1, 0.9]], np.float32)
    assert np.allclose(average([a, b], [1, 3]), [[0.25, 0.75], [0.2, 0.8]])  # weights / 4
    assert np.allclose(average([a, b], [2, 2]), (a + b) / 2)
    assert np.allclose(average([a], [5]), a)
    assert np.allclose(average([a, b], [0.25, 0.75]), [[0.25, 0.75], [0.2, 0.8]])  # sum 1 is fine
    assert average([a, b], [1, 3]).dtype == np.float32
    for bad in ([0, 0], [1, -1]):
        with pytest.raises(ConfigError, match="must add up to more than 0"):
            average([a, b], bad)


def _greedy_by_hand(probs: list[np.ndarray], labels: np.ndarray, rounds: int) -> list[int]:
    """Caruana's forward selection with replacement, written out plainly in float64."""
    chosen: list[int] = []
    best_score, best_counts = None, None
    for _ in range(rounds):
        trials = []
        for i in range(len(probs)):
            mean = np.mean([probs[j] for j in [*chosen, i]], axis=0, dtype=np.float64)
            error = float(np.mean(mean.argmax(axis=1) != labels))
            loss = float(-np.mean(np.log(np.maximum(mean[np.arange(len(labels)), labels], 1e-12))))
            trials.append((error, loss, i))
        error, loss, i = min(trials)
        chosen.append(i)
        if best_score is None or (error, loss) < best_score:
            best_score = (error, loss)
            best_counts = [chosen.count(j) for j in range(len(probs))]
    return best_counts


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("rounds", [1, 2, 5])
def test_greedy_selection_matches_a_plain_implementation(seed: int, rounds: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, size=30)
    probs = [rng.dirichlet(np.full(6, 0.5), size=30).astype(np.float32) for _ in range(4)]
    expected = _greedy_by_hand(probs, labels, rounds)
    assert greedy_select(probs, torch.from_numpy(labels), rounds) == expected


def test_greedy_selection_of_one_member() -> None:
    probs = np.array([[0.9, 0.1], [0.4, 0.6]], np.float32)
    assert greedy_select([probs], torch.tensor([0, 0]), rounds=3) == [1]


def test_greedy_selection_keeps_the_best_prefix() -> None:
    # Member 0 alone is best; adding anything after it only makes things worse.
    labels = torch.tensor([0, 1])
    perfect = np.array([[0.9, 0.1], [0.1, 0.9]], np.float32)
    wrong = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    assert greedy_select([wrong, perfect], labels, rounds=4) == [0, 1]

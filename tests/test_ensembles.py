"""ensembles.py: averages and greedy selection against plain implementations, ensembles of real
runs, the gain over the best member, and the probability cache (its key, stale and unwritable
entries)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import tinycnn.ensembles
from tests.helpers import (
    FP32,
    SMALL,
    Small,
    fail_fsync,
    fail_writes,
    run_cli,
)
from tinycnn import prob_cache
from tinycnn.checkpoint import save_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.ensembles import (
    EnsembleResult,
    ProbabilityCache,
    ProbabilityCacheWarning,
    average,
    ensemble,
    format_result,
    greedy_select,
    save_result,
)
from tinycnn.errors import CacheError, ConfigError
from tinycnn.inference import load_model
from tinycnn.members import resolve_members
from tinycnn.runtime import make_runtime, with_precision
from tinycnn.training import read_metrics, train


def test_weighted_average_by_hand() -> None:
    a = np.array([[1.0, 0.0], [0.5, 0.5]], np.float32)
    b = np.array([[0.0, 1.0], [0.1, 0.9]], np.float32)
    assert np.allclose(average([a, b], [1, 3]), [[0.25, 0.75], [0.2, 0.8]])  # weights / 4
    assert np.allclose(average([a, b], [2, 2]), (a + b) / 2)
    assert np.allclose(average([a], [5]), a)
    assert np.allclose(average([a, b], [0.25, 0.75]), [[0.25, 0.75], [0.2, 0.8]])  # sum 1 is fine
    assert average([a, b], [1, 3]).dtype == np.float32
    with pytest.raises(ConfigError, match="must add up to more than 0"):
        average([a, b], [0, 0])
    for bad in ([1, -1], [float("nan"), 1], [float("inf"), 1]):
        with pytest.raises(ConfigError, match=r"ensemble weight .*: expected a finite number >= 0"):
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


def test_identical_members_equal_the_member(run, tmp_path: Path) -> None:
    cache, folder = run
    spec = f"{folder}@last"
    one = ensemble([spec], cache, runtime=FP32, prob_cache=None)
    two = ensemble([spec, spec], cache, runtime=FP32, prob_cache=None)
    assert np.allclose(one.probabilities, two.probabilities, atol=1e-6)
    assert one.ensemble["top1_error"] == two.ensemble["top1_error"] and two.gain == 0
    assert "ensemble: the same top-1 error as its best member" in format_result(two)


def test_cached_probabilities_are_keyed_by_the_precision_they_were_computed_in(
    fp32_run, tmp_path: Path
) -> None:
    # Where auto takes bf16, a member trained in fp32 computes in fp32 (load_model): the cache
    # entry must say fp32, or a later call asking for bf16 by name would be handed these.
    cache, folder = fp32_run
    logged = read_metrics(folder)[-1]
    bf16 = with_precision(FP32, "bf16", "this machine")
    store, spec = tmp_path / "probs", f"{folder}@last"
    auto = ensemble([spec], cache, runtime=replace(bf16, requested="auto"), prob_cache=store)
    assert auto.members[0]["loss"] == pytest.approx(logged["val_loss"], rel=1e-4)
    forced = ensemble([spec], cache, runtime=replace(bf16, requested="bf16"), prob_cache=store)
    assert len(list(store.glob("*.npy"))) == 2
    assert forced.members[0]["loss"] != pytest.approx(auto.members[0]["loss"], rel=1e-6)


def test_ensemble_is_the_mean_of_member_probabilities(run) -> None:
    cache, folder = run
    specs = [f"{folder}@epochs:2,3,4"]
    result = ensemble(specs, cache, runtime=FP32, prob_cache=None)
    images = torch.from_numpy(np.array(load_cache(cache).split("val").images))
    members = [load_model(p, FP32).probabilities(images).numpy() for p in resolve_members(specs[0])]
    assert np.allclose(result.probabilities, np.mean(members, axis=0), atol=1e-6)
    weighted = ensemble(specs, cache, runtime=FP32, weights=[1, 0, 3], prob_cache=None)
    assert np.allclose(weighted.probabilities, (members[0] + 3 * members[2]) / 4, atol=1e-6)


def test_greedy_selection_on_a_constructed_case() -> None:
    labels = torch.tensor([0, 1, 0, 1])
    good_on_first = np.array([[0.9, 0.1], [0.6, 0.4], [0.9, 0.1], [0.6, 0.4]], np.float32)  # 50%
    good_on_second = np.array([[0.4, 0.6], [0.1, 0.9], [0.4, 0.6], [0.1, 0.9]], np.float32)  # 50%
    bad = np.array([[0.1, 0.9], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]], np.float32)  # 0%
    counts = greedy_select([bad, good_on_first, good_on_second], labels, rounds=6)
    assert counts[0] == 0 and counts[1] >= 1 and counts[2] >= 1
    combined = average([good_on_first, good_on_second], [counts[1], counts[2]])
    assert (combined.argmax(1) == labels.numpy()).all()


def test_greedy_ensemble_on_the_tuning_split(run) -> None:
    cache, folder = run
    result = ensemble(
        [f"{folder}@epochs:1,2,3,4"], cache, greedy=True, runtime=FP32, prob_cache=None
    )
    assert result.selection["split"] == "tune" and sum(result.selection["counts"]) >= 1
    assert [m["weight"] for m in result.members] == [float(c) for c in result.selection["counts"]]


def test_greedy_without_a_tuning_split_names_greedy_not_split(run, tmp_path: Path, capsys) -> None:
    # The user passed --greedy (its --select-on defaults to tune), never --split.
    cache, _ = run
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *SMALL, "train.epochs=1"])
    plain = train(cfg, tmp_path / "plain", progress=False).run_dir  # no held-out split
    argv = ["ensemble", f"{plain}@last", "--data", str(cache), "--greedy", "--no-cache", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    last = plain / "checkpoints" / "last.pt"
    assert f"--greedy chooses members on --select-on tune: {last} was trained" in err  # which
    assert "--split" not in err and "data.holdout_per_class = K" in err
    assert main([*argv, "--select-on", "test"]) == 1
    err = capsys.readouterr().err
    assert "--greedy chooses members on --select-on 'test': expected a labelled split" in err


def test_greedy_and_weights_together_are_refused(run, capsys) -> None:
    # Both set the members' weights: greedy's counts had silently replaced --weights.
    cache, folder = run
    argv = ["ensemble", f"{folder}@last:2", "--data", str(cache), "--no-cache", "-q"]
    assert main([*argv, "--greedy", "--weights", "1,2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("--weights and --greedy both set the members' weights (greedy: how often "
                        "each is chosen); give one"), err  # fmt: skip
    with pytest.raises(ConfigError, match="--weights and --greedy"):
        ensemble([f"{folder}@last:2"], cache, weights=[1.0, 2.0], greedy=True, prob_cache=None)


def test_greedy_weights_follow_the_tuning_split_not_val(run, monkeypatch) -> None:
    # Each split has its own perfect member: member 2 on tune, member 0 on val. By hand, greedy
    # selection on tune takes member 2 in round 1 (the only error-free choice); taking it again
    # leaves the average, and so the score, unchanged, and any other member lowers the label's
    # probability: the best prefix is round 1, counts [0, 0, 1]. On val it would be [1, 0, 0].
    cache, folder = run
    right, wrong = [0.9, 0.1], [0.2, 0.8]
    labels = torch.tensor([0, 0, 0])

    def members(perfect: int) -> list[np.ndarray]:
        return [np.array([right if i == perfect else wrong] * 3, np.float32) for i in range(3)]

    by_split = {"tune": members(2), "val": members(0)}
    asked = []

    def fake(paths, cache, split, *args, **kw):
        asked.append(split)
        return by_split[split], labels

    monkeypatch.setattr("tinycnn.ensembles.member_probabilities", fake)
    result = ensemble([f"{folder}@epochs:1,2,3"], cache, greedy=True, prob_cache=None)
    assert sorted(asked) == ["tune", "val"]
    assert result.selection["counts"] == [0, 0, 1]
    assert result.selection["tune_top1_error"] == 0.0
    assert [m["weight"] for m in result.members] == [0.0, 0.0, 1.0]
    # Reported on val with tune's weights: member 2 alone, wrong on every val image.
    assert np.allclose(result.probabilities, by_split["val"][2])
    assert result.ensemble["top1_error"] == 1.0
    assert [m["top1_error"] for m in result.members] == [0.0, 1.0, 1.0]


def test_member_probabilities_are_cached_by_checkpoint(run, tmp_path: Path, monkeypatch) -> None:
    cache, folder = run
    calls = []
    original = ProbabilityCache.get

    def counting(self, checkpoint_sha256, *args):
        compute = args[-1]

        def wrapped():
            calls.append(checkpoint_sha256)
            return compute()

        return original(self, checkpoint_sha256, *args[:-1], wrapped)

    monkeypatch.setattr(ProbabilityCache, "get", counting)
    store = tmp_path / "probs"
    sha = {
        n: hashlib.sha256((folder / "checkpoints" / f"epoch-00{n}.pt").read_bytes()).hexdigest()
        for n in (2, 3, 4)
    }
    ensemble([f"{folder}@epochs:2,3"], cache, runtime=FP32, prob_cache=store)
    assert calls == [sha[2], sha[3]]
    ensemble([f"{folder}@epochs:2,3,4"], cache, runtime=FP32, prob_cache=store)
    assert calls == [sha[2], sha[3], sha[4]]  # one more member: one run


def test_damaged_pixels_are_refused_not_stored_under_the_sound_caches_key(
    run, tmp_path: Path
) -> None:
    # The key names the data by the checksums the manifest records, not by the bytes read: an
    # ensemble on a copy with zeroed val pixels stored its probabilities under the sound
    # cache's key, and later ensembles on the sound cache were served them.
    cache, folder = run
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    images = copy / "val_images.npy"
    data = bytearray(images.read_bytes())
    data[-3000:] = bytes(3000)  # the same size: only the checksum can tell
    images.write_bytes(bytes(data))
    store = tmp_path / "probs"
    with pytest.raises(CacheError, match=rf"{images}: content differs from the sha256"):
        ensemble([f"{folder}@last"], copy, runtime=FP32, prob_cache=store)
    assert not store.exists() or list(store.iterdir()) == []  # nothing stored
    sound = ensemble([f"{folder}@last"], cache, runtime=FP32, prob_cache=None)
    cached = ensemble([f"{folder}@last"], cache, runtime=FP32, prob_cache=store)
    assert np.array_equal(cached.probabilities, sound.probabilities)


def test_cli_ensemble_writes_files_only_with_out(run, tmp_path: Path, capsys, monkeypatch) -> None:
    cache, folder = run
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    argv = ["ensemble", f"{folder}@last:2", "--data", str(cache), "--no-cache", "-q"]
    assert main(argv) == 0
    assert list(here.iterdir()) == []  # nothing in the working folder: no ./ensemble/
    assert "nothing saved (--out DIR saves" in capsys.readouterr().out
    out = tmp_path / "ens"
    assert main([*argv, "--json", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out)["split"] == "val"  # stdout: the one JSON object
    assert f"saved {out / 'probabilities.npy'} and {out / 'ensemble.json'}" in printed.err
    assert sorted(p.name for p in out.iterdir()) == ["ensemble.json", "probabilities.npy"]
    # Members given relative to the working folder are saved as absolute paths.
    relative = os.path.relpath(folder, here)
    assert main(["ensemble", f"{relative}@last", "--data", str(cache), "--no-cache", "-q",
                 "--out", str(out)]) == 0  # fmt: skip
    saved = json.loads((out / "ensemble.json").read_text())["members"]
    assert [m["checkpoint"] for m in saved] == [
        str(Path(folder).resolve() / "checkpoints" / "last.pt")
    ]


# The numbers every report rests on, each against a truth computed here, not by tinycnn.


def _three_class_members() -> tuple[list[np.ndarray], torch.Tensor]:
    """Three members, each wrong on a different one of 3 images; their mean is right on all."""
    right, wrong = [0.9, 0.1, 0.0], [0.4, 0.6, 0.0]
    members = [
        np.array([wrong if i == j else right for i in range(3)], np.float32) for j in range(3)
    ]
    return members, torch.tensor([0, 0, 0])


@pytest.mark.parametrize("with_unused_member", [False, True])
def test_gain_is_the_best_members_error_minus_the_ensembles(
    run, monkeypatch, with_unused_member: bool
) -> None:
    cache, folder = run
    members, labels = _three_class_members()  # each 1/3 wrong, their mean right: gain +1/3
    weights = None
    if with_unused_member:  # a perfect member of weight 0 is not "the best member"
        members = [*members, np.array([[1.0, 0.0, 0.0]] * 3, np.float32)]
        weights = [1.0, 1.0, 1.0, 0.0]
    monkeypatch.setattr(
        "tinycnn.ensembles.member_probabilities", lambda paths, *args, **kw: (members, labels)
    )
    epochs = "1,2,3,4" if with_unused_member else "1,2,3"
    result = ensemble([f"{folder}@epochs:{epochs}"], cache, weights=weights, prob_cache=None)
    assert [m["top1_error"] for m in result.members][:3] == pytest.approx([1 / 3] * 3)
    assert result.ensemble["top1_error"] == 0.0
    assert result.gain == pytest.approx(1 / 3)
    assert "ensemble: 33.33 points lower top-1 error than its best member" in format_result(result)


@pytest.mark.parametrize(
    ("gain", "words"),
    [
        (0.016, "1.60 points lower top-1 error than its best member"),
        (-0.004, "0.40 points higher top-1 error than its best member"),
        (0.0, "the same top-1 error as its best member"),
        (-0.00004, "the same top-1 error as its best member"),  # rounds to 0.00: no "-0.00"
    ],
)
def test_the_gain_says_which_way_the_error_went(gain: float, words: str) -> None:
    member = {"checkpoint": "a.pt", "weight": 1.0, "top1_error": 0.5, "top5_error": 0.2, "loss": 1}
    rates = {"top1_error": 0.5 - gain, "top5_error": 0.2, "loss": 1.0, "count": 1}
    result = EnsembleResult("val", "center", [member], rates, gain, np.zeros((1, 2), np.float32))
    assert format_result(result).splitlines()[-1] == f"ensemble: {words}"


def test_a_worse_ensemble_has_a_negative_gain(run, monkeypatch) -> None:
    cache, folder = run
    perfect = np.array([[0.6, 0.4], [0.6, 0.4]], np.float32)  # 0% error
    confident_wrong = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)  # 100% error
    labels = torch.tensor([0, 0])
    monkeypatch.setattr(
        "tinycnn.ensembles.member_probabilities",
        lambda paths, *args, **kw: ([perfect, confident_wrong], labels),
    )
    result = ensemble([f"{folder}@epochs:1,2"], cache, prob_cache=None)
    assert result.ensemble["top1_error"] == 1.0  # the mean (0.3, 0.7) follows the wrong one
    assert result.gain == -1.0
    assert "ensemble: 100.00 points higher top-1 error than its best member" in format_result(
        result
    )


def test_a_checkpoint_overwritten_in_place_gets_new_probabilities(run, tmp_path: Path) -> None:
    cache, folder = run
    member, store = tmp_path / "member.pt", tmp_path / "probs"
    shutil.copyfile(folder / "checkpoints" / "epoch-001.pt", member)
    first = ensemble([str(member)], cache, runtime=FP32, prob_cache=store)
    shutil.copyfile(folder / "checkpoints" / "epoch-004.pt", member)  # same path, new weights
    second = ensemble([str(member)], cache, runtime=FP32, prob_cache=store)
    fresh = ensemble([str(member)], cache, runtime=FP32, prob_cache=None)
    assert not np.allclose(first.probabilities, fresh.probabilities, atol=1e-4)
    assert np.array_equal(second.probabilities, fresh.probabilities)


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
    "checkpoint": lambda k: {**k, "checkpoint_sha256": k["other_checkpoint"]},
    "data": lambda k: {**k, "cache": SimpleNamespace(content_id="0123456789abcdef")},
    "split": lambda k: {**k, "split": "train"},
    "rows": lambda k: {**k, "split": "tune", "rows": np.array([1, 2, 3])},
    "tune rows": lambda k: {**k, "split": "tune", "rows": np.array([1, 2, 4])},
    "tta": lambda k: {**k, "tta": "flip"},
    "precision": lambda k: {**k, "computed_in": "cpu bf16"},
    "device": lambda k: {**k, "computed_in": "cuda fp32"},  # TF32 convolutions, by default
}


def test_probability_cache_key_covers_everything_probabilities_depend_on(
    small: Small, tmp_path: Path
) -> None:
    other = tmp_path / "other.pt"
    payload = torch.load(small.checkpoint, weights_only=True)
    save_checkpoint(other, {**payload, "iteration": payload["iteration"] + 1})
    base = {
        "checkpoint_sha256": hashlib.sha256(small.checkpoint.read_bytes()).hexdigest(),
        "cache": load_cache(small.cache),
        "split": "val",
        "tta": "center",
        "rows": None,
        "computed_in": "cpu fp32",
        "other_checkpoint": hashlib.sha256(other.read_bytes()).hexdigest(),
    }

    def key(parts: dict) -> str:
        return ProbabilityCache.key(**{k: v for k, v in parts.items() if k != "other_checkpoint"})

    keys = {name: key(make(base)) for name, make in KEY_CHANGES.items()}
    with pytest.MonkeyPatch.context() as patch:  # entries of an older format are never read
        patch.setattr(prob_cache, "FORMAT", prob_cache.FORMAT + 1)
        keys["format"] = key(base)
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


def test_ensemble_json_comes_last_and_names_the_probabilities_bytes(
    run, tmp_path: Path, monkeypatch
) -> None:
    # Two renames cannot be one: the probabilities go first and ensemble.json, renamed last,
    # names their sha256, so a pair torn by a kill between them shows (json had gone first,
    # with nothing to tell a new json beside old probabilities).
    cache, folder = run
    result = ensemble([f"{folder}@last"], cache, runtime=FP32, prob_cache=None)
    renamed = []
    original = Path.replace

    def recording(self, target):
        renamed.append(Path(target).name)
        return original(self, target)

    monkeypatch.setattr(Path, "replace", recording)
    out = save_result(result, tmp_path / "ens")
    assert renamed == ["probabilities.npy", "ensemble.json"]
    saved = json.loads((out / "ensemble.json").read_text())
    digest = hashlib.sha256((out / "probabilities.npy").read_bytes()).hexdigest()
    assert saved["probabilities_sha256"] == digest
    assert np.array_equal(np.load(out / "probabilities.npy"), result.probabilities)


def _exponent_flipped(probs: np.ndarray) -> np.ndarray:
    bits = probs.copy().view(np.uint32)
    bits[0, 0] ^= 1 << 28  # one flipped exponent bit: a value 2^16 times another
    return bits.view(np.float32)


def _mantissa_flipped(probs: np.ndarray) -> np.ndarray:
    bits = probs.copy().view(np.uint32)
    bits[0, 0] ^= 1 << 3  # a change of ~1e-6: every value in range, the row still sums to 1
    return bits.view(np.float32)


def _save_bytes(probs: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, probs)
    return buffer.getvalue()


DAMAGES = {
    "exponent-bit": (_exponent_flipped, "values outside|sums to"),
    "mantissa-bit": (_mantissa_flipped, None),  # plausible: only the entry's digest tells
    "huge": (lambda p: p * 1e6, "values outside"),
    "transposed": (lambda p: p.T.copy(), "shape"),
    "half": (lambda p: np.roll(p, 1, axis=1) * 0.5, "sums to"),
}


def _fp32_entry(small: Small, store: Path):
    fp32 = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    first = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    [entry] = store.iterdir()
    key, _, digest = entry.stem.rpartition("-")
    assert digest == hashlib.sha256(entry.read_bytes()).hexdigest()[:32]  # named by its bytes
    return fp32, first, entry, key


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("where", ["in place", "renamed to its digest"])
def test_a_damaged_cached_entry_is_computed_again(
    small: Small, tmp_path: Path, damage: str, where: str
) -> None:
    store = tmp_path / "probs"
    fp32, first, entry, key = _fp32_entry(small, store)
    make, why = DAMAGES[damage]
    data = _save_bytes(make(np.load(entry)))
    if where == "in place":  # flipped bits on a disk: the name's digest no longer matches
        entry.write_bytes(data)
        why = "its bytes do not match their digest"
    elif why is None:
        return  # a plausible array under a matching digest is an entry like any other
    else:  # written whole with a matching name (a bug, not a disk): the values are checked too
        entry.unlink()
        (store / f"{key}-{hashlib.sha256(data).hexdigest()[:32]}.npy").write_bytes(data)
    with pytest.warns(ProbabilityCacheWarning, match=f"damaged cached probabilities .*({why})"):
        again = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)
    assert again.members[0]["top1_error"] == first.members[0]["top1_error"]
    assert [p.stem for p in store.iterdir()] == [entry.stem]  # the damaged one replaced


@pytest.mark.parametrize("kind", ["truncated", "empty", "empty, named by its digest", "npz"])
def test_an_unreadable_cached_entry_is_computed_again(
    small: Small, tmp_path: Path, kind: str
) -> None:
    store = tmp_path / "probs"
    fp32, first, entry, key = _fp32_entry(small, store)
    if kind == "truncated":
        entry.write_bytes(entry.read_bytes()[:50])
        why = "do not match their digest"
    elif kind == "empty":
        entry.write_bytes(b"")
        why = "do not match their digest"
    else:  # bytes np.load cannot read as an array, under a matching name
        data = b"" if kind.startswith("empty") else _npz_bytes(np.load(entry))
        entry.unlink()
        (store / f"{key}-{hashlib.sha256(data).hexdigest()[:32]}.npy").write_bytes(data)
        why = "unreadable: EOFError" if kind.startswith("empty") else "not an .npy array"
    with pytest.warns(ProbabilityCacheWarning, match=f"damaged cached probabilities .*{why}"):
        again = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)


def _npz_bytes(probs: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, probs=probs)
    return buffer.getvalue()


def test_a_checkpoint_replaced_while_its_probabilities_are_computed_is_not_served_them(
    small: Small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A training run may copy a better epoch to best.pt while `ensemble` or `report` reads it:
    # the probabilities computed from the old bytes must not be cached under the new file's.
    member, other = tmp_path / "best.pt", tmp_path / "other.pt"
    shutil.copy(small.checkpoint, member)
    payload = torch.load(small.checkpoint, weights_only=True)
    state = payload["model"]["state"]
    payload["model"]["state"] = {k: -v if v.dim() >= 2 else v for k, v in state.items()}
    save_checkpoint(other, payload)
    store = tmp_path / "probs"

    def load_then_replace(path, runtime):
        loaded = load_model(path, runtime)
        os.replace(shutil.copy(other, tmp_path / "copy.pt"), member)  # as copy_file does
        return loaded

    monkeypatch.setattr(tinycnn.ensembles, "load_model", load_then_replace)
    first = ensemble([str(member)], small.cache, runtime=FP32, prob_cache=store)
    monkeypatch.setattr(tinycnn.ensembles, "load_model", load_model)
    second = ensemble([str(member)], small.cache, runtime=FP32, prob_cache=store)
    fresh = ensemble([str(other)], small.cache, runtime=FP32, prob_cache=None)
    np.testing.assert_array_equal(second.probabilities, fresh.probabilities)
    assert not np.array_equal(first.probabilities, second.probabilities)


def test_members_tuned_on_other_held_out_images_are_not_averaged_on_tune(
    run, tmp_path: Path
) -> None:
    # Another holdout seed holds out other images (the same count a class, so the labels line
    # up): averaging row by row had mixed two images in each row, and greedy selected on them.
    cache, folder = run
    overrides = [*SMALL, "train.epochs=1", "data.holdout_per_class=2", "data.holdout_seed=7"]
    other = tmp_path / "seed7"
    train(load_config(None, [f"data.cache={json.dumps(str(cache))}", *overrides]), other,
          progress=False)  # fmt: skip
    specs = [str(folder), str(other)]
    for kwargs in ({"split": "tune"}, {"greedy": True, "select_on": "tune"}):
        with pytest.raises(ConfigError, match=r"holds out other training images than .* 2 / 7"):
            ensemble(specs, cache, runtime=FP32, prob_cache=None, **kwargs)
    on_val = ensemble(specs, cache, runtime=FP32, prob_cache=None, split="val")
    assert len(on_val.members) == 2
    same = ensemble([str(folder), f"{folder}@last"], cache, runtime=FP32, prob_cache=None,
                    split="tune")  # fmt: skip
    assert len(same.members) == 2

"""Evaluation and ensembles: exact numbers on constructed cases, member specs, caches, the CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import FP32, SMALL, numbers_by_hand, reference_probabilities
from tinycnn.checkpoint import load_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.ensembles import (
    EnsembleResult,
    ProbabilityCache,
    average,
    ensemble,
    format_result,
    greedy_select,
)
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate
from tinycnn.inference import load_model
from tinycnn.members import resolve_members
from tinycnn.metrics import error_rates, per_class_accuracy
from tinycnn.runtime import make_runtime
from tinycnn.training import read_metrics, train


def test_error_rates_by_hand() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0], [3.0, 1.0, 2.0]])
    labels = torch.tensor([0, 2, 1, 1])
    rates = error_rates(logits, labels)
    assert rates["top1_error"] == 0.75 and rates["count"] == 4  # only row 0 is right
    assert rates["top5_error"] == 0.0  # 3 classes: everything is in the top 5
    expected = torch.nn.functional.cross_entropy(logits, labels).item()
    assert rates["loss"] == pytest.approx(expected)
    accuracy, confusion = per_class_accuracy(logits, labels, 3)
    assert accuracy[0] == 1.0 and accuracy[1] == 0.0 and accuracy[2] == 0.0
    assert confusion.tolist() == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]


def test_top5_error_by_hand_with_seven_classes() -> None:
    # Each row's label sits at a chosen rank: top-1 and top-5 errors differ from each other and
    # from 0, and a top-4 (or top-6) error would differ from both.
    descending = [7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    ascending = descending[::-1]
    logits = torch.tensor([descending, descending, descending, ascending, ascending, ascending])
    labels = torch.tensor([0, 4, 5, 2, 6, 0])  # ranks 1, 5, 6, 5, 1, 7
    rates = error_rates(logits, labels)
    assert rates["count"] == 6
    assert rates["top1_error"] == pytest.approx(4 / 6)  # rows 1, 2, 3, 5
    assert rates["top5_error"] == pytest.approx(2 / 6)  # rows 2 (rank 6) and 5 (rank 7)
    log_sum = math.log(sum(math.exp(v) for v in descending))
    by_hand = [
        log_sum - row[label] for row, label in zip(logits.tolist(), labels.tolist(), strict=True)
    ]
    assert rates["loss"] == pytest.approx(sum(by_hand) / 6)
    accuracy, confusion = per_class_accuracy(logits, labels, 7)
    assert confusion[0].tolist() == [1, 0, 0, 0, 0, 0, 1]  # row 0 right, row 5 said class 6
    assert confusion.sum() == 6 and confusion.diagonal().sum() == 2
    assert accuracy[0] == 0.5 and accuracy[6] == 1.0 and accuracy[4] == 0.0
    assert math.isnan(accuracy[1]) and math.isnan(accuracy[3])  # no images of that class


def test_member_specs(run) -> None:
    _, folder = run
    ckpt = folder / "checkpoints"
    assert resolve_members(str(folder)) == [ckpt / "best.pt"]
    assert resolve_members(f"{folder}@last") == [ckpt / "last.pt"]
    assert resolve_members(f"{folder}@every:8") == [ckpt / "iter-0000008.pt"]
    assert resolve_members(f"{folder}@epochs:1,3") == [ckpt / "epoch-001.pt", ckpt / "epoch-003.pt"]
    assert resolve_members(f"{folder}@last:2") == [ckpt / "epoch-003.pt", ckpt / "epoch-004.pt"]
    top = resolve_members(f"{folder}@top:2")
    assert len(top) == 2 and all(p.name.startswith("epoch-") for p in top)
    assert resolve_members(str(ckpt / "last.pt")) == [ckpt / "last.pt"]
    for bad, message in [
        (f"{folder}@sometimes", "unknown selection"),
        (f"{folder}@every:x", "not a positive whole number"),
        (f"{folder}@every:5", "selects no snapshot"),
        (f"{folder}@epochs:9", "no such checkpoint"),
        (str(folder / "nope"), "neither a checkpoint file nor a run folder"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_members(bad)


def test_evaluate_matches_the_training_log(run) -> None:
    cache, folder = run
    (result,) = evaluate([f"{folder}@last"], cache, runtime=FP32)
    logged = read_metrics(folder)[-1]
    assert result.count == 20 and result.split == "val"
    assert abs(result.top1_error - logged["val_top1_error"]) <= 0.05  # bf16 in training
    assert set(result.per_class) == set(load_cache(cache).classes)
    assert sum(map(sum, result.confusion)) == 20
    (tune,) = evaluate([f"{folder}@last"], cache, split="tune", runtime=FP32)
    assert tune.count == 10  # 2 held out per class, rebuilt from the run's config
    # In fp32, every number against the centre crop's probabilities computed here.
    labels = torch.from_numpy(load_cache(cache).split("val").labels.astype(np.int64))
    probs = reference_probabilities(cache, folder / "checkpoints" / "last.pt", "center")
    by_hand = numbers_by_hand(probs, labels)
    assert result.top1_error == pytest.approx(by_hand["top1"])
    assert result.top5_error == pytest.approx(by_hand["top5"])
    assert result.loss == pytest.approx(by_hand["loss"], rel=1e-5)
    assert result.confusion == by_hand["confusion"]
    classes = load_cache(cache).classes
    for c, row in enumerate(by_hand["confusion"]):
        assert result.per_class[classes[c]] == pytest.approx(row[c] / sum(row))
    # In the precision and memory format the run trained and evaluated in, the very numbers
    # of its log, on val and on the tuning split.
    same = make_runtime(precision=logged["precision"], channels_last=True, threads=1)
    for split in ("val", "tune"):
        (again,) = evaluate([f"{folder}@last"], cache, split=split, runtime=same)
        assert again.top1_error == logged[f"{split}_top1_error"], split
        assert again.top5_error == logged[f"{split}_top5_error"], split
        assert again.loss == pytest.approx(logged[f"{split}_loss"], rel=1e-6), split


def test_ten_crop_and_flip_tta_run(run) -> None:
    cache, folder = run
    labels = torch.from_numpy(load_cache(cache).split("val").labels.astype(np.int64))
    checkpoint = folder / "checkpoints" / "last.pt"
    center = numbers_by_hand(reference_probabilities(cache, checkpoint, "center"), labels)
    for tta in ("flip", "10crop"):
        (result,) = evaluate([f"{folder}@last"], cache, tta=tta, runtime=FP32)
        assert 0 <= result.top1_error <= 1 and result.tta == tta
        # Each image's views, cut and averaged here: the numbers must be those of this TTA.
        by_hand = numbers_by_hand(reference_probabilities(cache, checkpoint, tta), labels)
        assert abs(by_hand["loss"] - center["loss"]) > 1e-3, "the views must change the loss"
        assert result.top1_error == pytest.approx(by_hand["top1"]), tta
        assert result.top5_error == pytest.approx(by_hand["top5"]), tta
        assert result.loss == pytest.approx(by_hand["loss"], rel=1e-5), tta
        assert result.confusion == by_hand["confusion"], tta


def test_identical_members_equal_the_member(run, tmp_path: Path) -> None:
    cache, folder = run
    spec = f"{folder}@last"
    one = ensemble([spec], cache, runtime=FP32, prob_cache=None)
    two = ensemble([spec, spec], cache, runtime=FP32, prob_cache=None)
    assert np.allclose(one.probabilities, two.probabilities, atol=1e-6)
    assert one.ensemble["top1_error"] == two.ensemble["top1_error"] and two.gain == 0
    assert "ensemble: the same top-1 error as its best member" in format_result(two)


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
    assert "--greedy chooses members on --select-on tune: this model was trained" in err
    assert "--split" not in err and "data.holdout_per_class = K" in err
    assert main([*argv, "--select-on", "test"]) == 1
    err = capsys.readouterr().err
    assert "--greedy chooses members on --select-on 'test': expected a labelled split" in err


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

    def counting(self, checkpoint, *args):
        compute = args[-1]

        def wrapped():
            calls.append(checkpoint.name)
            return compute()

        return original(self, checkpoint, *args[:-1], wrapped)

    monkeypatch.setattr(ProbabilityCache, "get", counting)
    store = tmp_path / "probs"
    ensemble([f"{folder}@epochs:2,3"], cache, runtime=FP32, prob_cache=store)
    assert calls == ["epoch-002.pt", "epoch-003.pt"]
    ensemble([f"{folder}@epochs:2,3,4"], cache, runtime=FP32, prob_cache=store)
    assert calls == ["epoch-002.pt", "epoch-003.pt", "epoch-004.pt"]  # one more member: one run


def test_a_different_class_list_is_an_error(run, mini_archive: Path, tmp_path: Path) -> None:
    _, folder = run
    other = prepare(mini_archive, tmp_path / "mini", progress=False).path
    with pytest.raises(ConfigError, match="different class list"):
        evaluate([str(folder)], other, runtime=FP32)
    with pytest.raises(ConfigError, match="different class list"):
        ensemble([str(folder)], other, runtime=FP32, prob_cache=None)


def test_cli_evaluate_and_ensemble(run, tmp_path: Path, capsys) -> None:
    cache, folder = run
    assert (
        main(["evaluate", str(folder), "--data", str(cache), "--json", "--precision", "fp32"]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert {"top1_error", "top5_error", "count", "per_class", "confusion", "loss"} <= set(result)
    assert main(["evaluate", str(folder), "--data", str(cache), "--split", "test"]) == 1
    assert "test has no labels" in capsys.readouterr().err
    out = tmp_path / "ens"
    assert (
        main(
            ["ensemble", f"{folder}@last:3", "--data", str(cache), "--out", str(out), "--no-cache"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "ensemble (val, center)" in text and "top-1 error" in text and "its best member" in text
    assert np.load(out / "probabilities.npy").shape == (20, 5)
    assert len(json.loads((out / "ensemble.json").read_text())["members"]) == 3


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


def test_cli_predict_submission_and_files_with_an_ensemble(
    run, tmp_path: Path, capsys, synth_sources
) -> None:
    cache, folder = run
    submission = tmp_path / "sub.txt"
    image = synth_sources["folder"] / "val" / "images" / "val_0.JPEG"
    argv = [
        "predict",
        f"{folder}@last:2",
        "--data",
        str(cache),
        "--submission",
        str(submission),
        "--images",
        str(image),
        "--json",
        "--precision",
        "fp32",
    ]
    assert main(argv) == 0
    lines = submission.read_text().splitlines()
    assert len(lines) == 8 and lines[0].startswith("test_0.JPEG\t")
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["file"].endswith("val_0.JPEG") and len(rows[0]["top"]) == 5
    assert main(["predict", str(folder), "--images", str(tmp_path / "missing.png")]) == 1
    assert main(["predict", str(folder)]) == 1
    assert "say what to predict" in capsys.readouterr().err


def test_cli_export_checks_on_real_images(run, tmp_path: Path, capsys) -> None:
    cache, folder = run
    out = tmp_path / "model.onnx"
    assert (
        main(
            [
                "export",
                str(folder / "checkpoints" / "last.pt"),
                "--format",
                "onnx",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert out.is_file() and "max |logit diff|" in text
    assert f"the first 20 val images of {cache}" in text  # the training cache, found by itself
    bad = [
        "export",
        str(folder / "checkpoints" / "last.pt"),
        "--format",
        "tflite",
        "--out",
        str(tmp_path / "m.tflite"),
    ]
    with pytest.raises(SystemExit) as info:  # argparse: not one of the formats
        main(bad)
    assert info.value.code == 2 and not (tmp_path / "m.tflite").exists()


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


@pytest.mark.parametrize("tta", ["center", "flip", "10crop"])
def test_tta_is_the_mean_of_each_images_own_views(run, tta: str) -> None:
    cache, folder = run
    data = load_cache(cache)
    images = torch.from_numpy(np.array(data.split("val").images))
    labels = torch.from_numpy(data.split("val").labels.astype(np.int64))
    loaded = load_model(folder / "checkpoints" / "last.pt", FP32)
    expected = reference_probabilities(cache, folder / "checkpoints" / "last.pt", tta)
    # A batch size that splits the 20 images unevenly: views must not cross images or batches.
    got = loaded.probabilities(images, tta, batch_size=7)
    assert torch.allclose(got, expected, atol=1e-5)
    (result,) = evaluate([f"{folder}@last"], cache, tta=tta, runtime=FP32)
    assert result.top1_error == pytest.approx(
        (expected.argmax(dim=1) != labels).float().mean().item()
    )


def _fake_run(root: Path, rows: list[dict], epochs: list[int]) -> Path:
    """A run folder with empty epoch snapshots and the given metrics lines."""
    (root / "checkpoints").mkdir(parents=True)
    for e in epochs:
        (root / "checkpoints" / f"epoch-{e:03d}.pt").write_bytes(b"")
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_top_k_picks_the_k_lowest_selection_errors(tmp_path: Path) -> None:
    # tune and val disagree; a partial (time-budget) line and a deleted snapshot do not count.
    rows = [
        {"epoch": 1, "iteration": 10, "tune_top1_error": 0.5, "val_top1_error": 0.1},
        {"epoch": 2, "iteration": 20, "tune_top1_error": 0.3, "val_top1_error": 0.4},
        {"epoch": 3, "iteration": 30, "tune_top1_error": 0.4, "val_top1_error": 0.2},
        {"epoch": 3.5, "iteration": 35, "tune_top1_error": 0.0, "partial_epoch": True},
        {"epoch": 4, "iteration": 40, "tune_top1_error": 0.2, "val_top1_error": 0.6},
        {"epoch": 5, "iteration": 50, "tune_top1_error": 0.1, "val_top1_error": 0.9},
    ]
    run = _fake_run(tmp_path / "tuned", rows, epochs=[1, 2, 3, 4])  # epoch-005.pt deleted
    ckpt = run / "checkpoints"
    assert resolve_members(f"{run}@top:2") == [ckpt / "epoch-004.pt", ckpt / "epoch-002.pt"]
    assert resolve_members(f"{run}@top:1") == [ckpt / "epoch-004.pt"]
    assert len(resolve_members(f"{run}@top:9")) == 4
    # Without a tuning split the val error decides.
    val_only = [{k: v for k, v in r.items() if k != "tune_top1_error"} for r in rows[:3]]
    run = _fake_run(tmp_path / "val", val_only, epochs=[1, 2, 3])
    ckpt = run / "checkpoints"
    assert resolve_members(f"{run}@top:2") == [ckpt / "epoch-001.pt", ckpt / "epoch-003.pt"]


def test_top_k_scores_a_budget_ended_runs_final_weights_as_last_pt(tmp_path: Path) -> None:
    # A compute budget ended the run at epoch 3.4: that evaluation is in last.pt only, not in
    # epoch-003.pt (which holds epoch 3's weights and its own, worse, error).
    rows = [
        {"epoch": 1, "iteration": 10, "tune_top1_error": 0.5},
        {"epoch": 2, "iteration": 20, "tune_top1_error": 0.3},
        {"epoch": 3, "iteration": 30, "tune_top1_error": 0.4},
        {"epoch": 3.4, "iteration": 34, "tune_top1_error": 0.2, "partial_epoch": False},
    ]
    run = _fake_run(tmp_path / "budget", rows, epochs=[1, 2, 3])
    ckpt = run / "checkpoints"
    (ckpt / "last.pt").write_bytes(b"")
    assert resolve_members(f"{run}@top:2") == [ckpt / "last.pt", ckpt / "epoch-002.pt"]
    assert resolve_members(f"{run}@top:9") == [
        ckpt / "last.pt",
        ckpt / "epoch-002.pt",
        ckpt / "epoch-003.pt",
        ckpt / "epoch-001.pt",
    ]


def _stored_iteration(path: Path) -> int:
    return load_checkpoint(path)["iteration"]


@pytest.mark.parametrize("with_metrics", [True, False])
def test_last_k_is_the_k_most_recent_snapshots_by_iteration(
    run, tmp_path: Path, with_metrics: bool
) -> None:
    # 3 iterations per epoch, snapshots every 4: epoch-001 (3), iter-4, epoch-002 (6), iter-8,
    # epoch-003 (9), iter-12 and epoch-004 (12, the same weights: one member).
    _, folder = run
    if not with_metrics:  # iterations per epoch then come from a checkpoint
        (tmp_path / "run").mkdir()
        folder = Path(shutil.copytree(folder / "checkpoints", tmp_path / "run" / "checkpoints"))
        folder = folder.parent
    ckpt = folder / "checkpoints"
    snapshots = [*ckpt.glob("iter-*.pt"), *ckpt.glob("epoch-*.pt")]
    iterations = sorted({_stored_iteration(p) for p in snapshots})
    for k in (1, 2, 3, 4, 6):
        chosen = resolve_members(f"{folder}@last:{k}")
        assert [_stored_iteration(p) for p in chosen] == iterations[-k:], k
    assert [p.name for p in resolve_members(f"{folder}@last:3")] == [
        "iter-0000008.pt",
        "epoch-003.pt",
        "epoch-004.pt",
    ]
    assert len(resolve_members(f"{folder}@last:100")) == len(iterations)


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

"""Evaluation and ensembles: exact numbers on constructed cases, member specs, caches, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import SMALL
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.ensemble import ProbabilityCache, average, ensemble, greedy_select, resolve_members
from tinycnn.errors import ConfigError
from tinycnn.evaluate import error_rates, per_class_accuracy
from tinycnn.evaluation import evaluate
from tinycnn.inference import load_model
from tinycnn.runtime import make_runtime
from tinycnn.train import read_metrics, train

FP32 = make_runtime(precision="fp32", channels_last=False, threads=1)


@pytest.fixture(scope="module")
def run(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A 4-epoch run with iteration snapshots, on the generated data; returns (cache, run)."""
    root = tmp_path_factory.mktemp("evalrun")
    cache = prepare(synth_sources["folder"], root / "cache", progress=False).path
    cfg = load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            *SMALL,
            "train.epochs=4",
            "train.snapshot_every=4",
            "data.holdout_per_class=2",
        ],
    )
    train(cfg, root / "run", progress=False)
    return cache, root / "run"


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


def test_ten_crop_and_flip_tta_run(run) -> None:
    cache, folder = run
    for tta in ("flip", "10crop"):
        (result,) = evaluate([f"{folder}@last"], cache, tta=tta, runtime=FP32)
        assert 0 <= result.top1_error <= 1 and result.tta == tta


def test_identical_members_equal_the_member(run, tmp_path: Path) -> None:
    cache, folder = run
    spec = f"{folder}@last"
    one = ensemble([spec], cache, runtime=FP32, prob_cache=None)
    two = ensemble([spec, spec], cache, runtime=FP32, prob_cache=None)
    assert np.allclose(one.probabilities, two.probabilities, atol=1e-6)
    assert one.ensemble["top1_error"] == two.ensemble["top1_error"] and two.gain == 0


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
    assert "ensemble (val, center)" in text and "gain over the best member" in text
    assert np.load(out / "probabilities.npy").shape == (20, 5)
    assert len(json.loads((out / "ensemble.json").read_text())["members"]) == 3


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

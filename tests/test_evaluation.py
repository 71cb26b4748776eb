"""evaluation.py: evaluate() against numbers computed here (centre crop and TTA views, val and the
tuning split), a foreign class list, and the evaluate and ensemble commands."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import FP32, numbers_by_hand, reference_probabilities
from tinycnn.checkpoint import load_checkpoint, save_checkpoint
from tinycnn.cli import main
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.ensembles import (
    ensemble,
)
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate
from tinycnn.runtime import make_runtime, with_precision
from tinycnn.training import read_metrics


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


def test_auto_precision_keeps_a_model_trained_in_fp32_in_fp32(fp32_run, tmp_path: Path) -> None:
    # Where auto takes bf16, a model trained in fp32 still computes in fp32, and its run's logged
    # figures come back; a precision asked for by name is kept, and gives other numbers.
    cache, folder = fp32_run
    logged = read_metrics(folder)[-1]
    assert logged["precision"] == "fp32"
    bf16 = with_precision(make_runtime(precision="fp32", threads=1), "bf16", "this machine")
    (result,) = evaluate([f"{folder}@last"], cache, runtime=replace(bf16, requested="auto"))
    assert result.precision == "fp32" and result.top1_error == logged["val_top1_error"]
    assert result.loss == pytest.approx(logged["val_loss"], rel=1e-6)
    (forced,) = evaluate([f"{folder}@last"], cache, runtime=replace(bf16, requested="bf16"))
    assert forced.precision == "bf16"
    assert forced.loss != pytest.approx(logged["val_loss"], rel=1e-6)
    # A model trained in bf16 computes as auto chose: bf16 only where this machine's auto took it
    # (elsewhere bf16 is slow, or emulated).
    payload = load_checkpoint(folder / "checkpoints" / "last.pt")
    save_checkpoint(tmp_path / "bf16.pt", {**payload, "precision": "bf16"})
    fp32 = replace(make_runtime(precision="fp32", threads=1), requested="auto")
    (kept,) = evaluate([tmp_path / "bf16.pt"], cache, runtime=fp32)
    assert kept.precision == "fp32"


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
    # The table says the precision each model computed in: with auto, its run's own.
    assert main(["evaluate", str(folder), "--data", str(cache), "-q"]) == 0
    header, row = capsys.readouterr().out.splitlines()[:2]
    assert header.split()[-1] == "precision"
    assert row.split()[-1] == read_metrics(folder)[-1]["precision"]
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


@pytest.mark.parametrize(
    ("split", "argv"),
    [
        ("val", ["evaluate", "{run}", "--data", "{cache}"]),
        ("train", ["evaluate", "{run}", "--data", "{cache}", "--split", "tune"]),
        ("test", ["predict", "{run}", "--data", "{cache}", "--submission", "{out}"]),
    ],
)
def test_commands_refuse_damaged_pixels_of_the_split_they_read(
    run, tmp_path: Path, capsys, split: str, argv: list[str]
) -> None:
    # Same-size damage (one bit of one pixel) that the manifest's sizes cannot see: each
    # command checks the image array it reads, and writes nothing.
    import shutil

    cache, folder = run
    copy = Path(shutil.copytree(cache, tmp_path / "copy"))
    images = np.load(copy / f"{split}_images.npy", mmap_mode="r+")
    images[-1, 5, 5, 0] ^= 0x01
    images.flush()
    out = tmp_path / "submission.txt"
    args = [a.format(run=folder, cache=copy, out=out) for a in argv]
    assert main([*args, "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{copy / f'{split}_images.npy'}: content differs" in err and "\n" not in err
    assert not out.exists()

"""The complete real dataset, prepared end to end (about 10 s here): counts, order, labels; without
it the test is skipped, in CI it fails."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import FULL_ARCHIVE, require_real
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_full_tiny_imagenet(tmp_path: Path) -> None:
    archive = require_real(FULL_ARCHIVE)
    result = prepare(archive, tmp_path / "cache", progress=False)
    cache = load_cache(result.path)
    splits = cache.manifest["splits"]
    assert {k: v["count"] for k, v in splits.items()} == {
        "train": 100_000,
        "val": 10_000,
        "test": 10_000,
    }
    assert all(not v["skipped"] for v in splits.values())
    assert all(v["grayscale"] > 0 for v in splits.values())
    with tarfile.open(archive) as tf:  # the reference, read independently with tarfile
        wnids = tf.extractfile("tiny-imagenet-200/wnids.txt").read().decode().split()
        annotations = tf.extractfile("tiny-imagenet-200/val/val_annotations.txt").read().decode()
    assert cache.classes == wnids
    val = cache.split("val")
    truth = {line.split("\t")[0]: line.split("\t")[1] for line in annotations.splitlines()}
    assert [wnids[i] for i in val.labels] == [truth[f.rsplit("/", 1)[1]] for f in val.files]
    train = cache.split("train")
    assert np.bincount(train.labels).tolist() == [500] * 200
    assert train.images.shape == (100_000, 64, 64, 3) and isinstance(train.images, np.memmap)
    assert min(cache.channel_std) > 0 and 90 < cache.channel_mean[0] < 140


@pytest.mark.parametrize(("ci", "outcome"), [("", "1 skipped"), ("1", "1 failed")])
def test_missing_real_data_skips_outside_ci_and_fails_in_it(
    tmp_path: Path, ci: str, outcome: str
) -> None:
    env = {**os.environ, "TINYCNN_TEST_DATA": str(tmp_path / "nowhere"), "CI": ci}
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    command += ["tests/test_full_data.py::test_full_tiny_imagenet"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert outcome in done.stdout, done.stdout
    assert f"{tmp_path / 'nowhere' / 'tiny-imagenet-200.tar.gz'} is missing" in done.stdout
    assert "TINYCNN_TEST_DATA" in done.stdout

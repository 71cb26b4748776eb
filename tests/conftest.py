"""Shared fixtures: generated datasets (folder, zip, tar.gz), the real mini subset, prepared
caches and small trained runs. Plain shared values and functions are in tests/helpers.py."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

# The suite's own caches (the kernel choices, ensembles' probabilities), set before tinycnn is
# imported: a test never reads the user's choices (timed elsewhere, perhaps under load) nor
# writes its own into them. Subprocesses of the tests inherit it.
_CACHE = tempfile.mkdtemp(prefix="tinycnn-test-cache-")
os.environ["TINYCNN_CACHE"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)

import pytest  # noqa: E402

from tests.helpers import SMALL, Small  # noqa: E402
from tinycnn.config import load_config  # noqa: E402
from tinycnn.data.prepare import prepare  # noqa: E402
from tinycnn.data.synthetic import make_synthetic  # noqa: E402
from tinycnn.training import train  # noqa: E402

# The real data: ../shared/data beside the project, or the folder TINYCNN_TEST_DATA names.
SHARED_DATA = Path(
    os.environ.get("TINYCNN_TEST_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
MINI_ARCHIVE = SHARED_DATA / "tiny-imagenet-mini.tar.gz"
FULL_ARCHIVE = SHARED_DATA / "tiny-imagenet-200.tar.gz"

# Small but complete: 5 classes, every split, a few grayscale images.
SYNTH = {
    "classes": 5,
    "train_per_class": 12,
    "val_per_class": 4,
    "test_count": 8,
    "seed": 3,
    "grayscale_fraction": 0.1,
}


def require_real(path: Path) -> Path:
    """The real data is part of the test suite: in CI (CI set) a missing file fails, never
    skips; elsewhere (a clone without the data) the test is skipped with one line saying
    what it needs and where to put it."""
    if not path.is_file():
        where = (
            f"{path} is missing: the real-data tests need {path.name} in ../shared/data "
            "beside the project, or in the folder TINYCNN_TEST_DATA names"
        )
        if os.environ.get("CI"):
            pytest.fail(where + " (see ../shared/README.md)", pytrace=False)
        pytest.skip(where)
    return path


@pytest.fixture(scope="session")
def synth_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same generated dataset as a folder, a .zip and a .tar.gz (read-only: copy to edit)."""
    root = tmp_path_factory.mktemp("synth")
    return {
        "folder": make_synthetic(root / "folder", **SYNTH),
        "zip": make_synthetic(root / "zip", archive="zip", **SYNTH),
        "tar.gz": make_synthetic(root / "tgz", archive="tar.gz", **SYNTH),
    }


@pytest.fixture
def synth_copy(synth_sources: dict[str, Path], tmp_path: Path) -> Path:
    """A private, editable copy of the generated dataset folder."""
    return Path(shutil.copytree(synth_sources["folder"], tmp_path / "tiny-imagenet-synth"))


@pytest.fixture(scope="session")
def mini_archive() -> Path:
    return require_real(MINI_ARCHIVE)


@pytest.fixture(scope="session")
def mini_folder(mini_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real 10-class subset, extracted once per session into a temporary folder."""
    root = tmp_path_factory.mktemp("mini")
    with tarfile.open(mini_archive) as archive:
        archive.extractall(root, filter="data")
    return root / "tiny-imagenet-mini"


@pytest.fixture(scope="module")
def cache(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated dataset, prepared (a fresh one per test file; replaces pytest's own
    ``cache`` fixture, which no test here uses)."""
    return prepare(
        synth_sources["folder"], tmp_path_factory.mktemp("c") / "cache", progress=False
    ).path


@pytest.fixture(scope="session")
def run(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """A 4-epoch run with iteration snapshots, on the generated data; returns (cache, run).

    One for the session: the tests of evaluation, members, ensembles, inference, prediction and
    export read it and never write into it."""
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


@pytest.fixture(scope="session")
def fp32_run(run, tmp_path_factory: pytest.TempPathFactory):
    """A 1-epoch run of the `run` fixture's recipe on its cache, trained in fp32 whatever this
    machine's auto takes; returns (cache, run)."""
    cache, _ = run
    folder = tmp_path_factory.mktemp("fp32run") / "run"
    precision = 'train.precision="fp32"'
    options = [f"data.cache={json.dumps(str(cache))}", *SMALL, "train.epochs=1", precision]
    train(load_config(None, options), folder, progress=False)
    return cache, folder


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    """A tiny model stopped after two iterations on generated data (5 classes, a tune split)."""
    root = tmp_path_factory.mktemp("hardening")
    dataset = make_synthetic(
        root / "data", classes=5, train_per_class=12, val_per_class=4, test_count=6, seed=3
    )
    cache = prepare(dataset, root / "cache", workers=1, progress=False).path
    overrides = [f"data.cache={json.dumps(str(cache))}", *SMALL, "data.holdout_per_class=2"]
    train(load_config(None, overrides), root / "run", progress=False, stop_at_iteration=2)
    return Small(dataset, cache, root / "run", root / "run" / "checkpoints" / "last.pt")


@pytest.fixture(scope="module")
def disagreeing_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated data with every val label moved to the next class.

    Learning lowers the tuning error and raises the val error, so the two splits pick different
    epochs as the best.
    """
    root = tmp_path_factory.mktemp("disagree")
    source = make_synthetic(root, **SYNTH)
    wnids = (source / "wnids.txt").read_text().split()
    annotations = source / "val" / "val_annotations.txt"
    lines = []
    for line in annotations.read_text().splitlines():
        fields = line.split("\t")
        fields[1] = wnids[(wnids.index(fields[1]) + 1) % len(wnids)]
        lines.append("\t".join(fields))
    annotations.write_text("\n".join(lines) + "\n")
    return prepare(source, root / "cache", progress=False).path

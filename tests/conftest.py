"""Shared fixtures: generated datasets (folder, zip, tar.gz) and the real mini subset."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from tinycnn.data.synthetic import make_synthetic

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

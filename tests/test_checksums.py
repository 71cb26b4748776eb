"""data/checksums.py: an image array's checksum from its rows, by hand, on a small .npy written
here; the checks of a whole cache are in test_cache.py."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from tinycnn.data.checksums import (
    array_checksum_from_rows,
    array_rows_checksum,
    file_checksum,
)
from tinycnn.errors import CacheError


@pytest.fixture
def array(tmp_path: Path) -> tuple[Path, np.ndarray]:
    values = np.random.default_rng(0).integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "train_images.npy"
    np.save(path, values)
    return path, values


def _by_hand(path: Path, rows: np.ndarray) -> str:
    data = path.read_bytes()
    header = data[: len(data) - rows.nbytes]  # np.save: the header, then the rows
    outer = hashlib.sha256(header)
    for row in rows:
        outer.update(hashlib.sha256(row.tobytes()).digest())
    return "rows-sha256:" + outer.hexdigest()


def test_the_rows_checksum_of_a_file_and_of_the_workers_digests_agree(array) -> None:
    path, values = array
    expected = _by_hand(path, values)
    assert array_rows_checksum(path) == expected
    digests = {i: hashlib.sha256(row.tobytes()).digest() for i, row in enumerate(values)}
    assert array_checksum_from_rows(path, 5, digests, set()) == expected
    assert file_checksum(path, expected) == expected  # the scheme follows the recorded value
    assert file_checksum(path, "00") == hashlib.sha256(path.read_bytes()).hexdigest()


def test_skipped_rows_are_left_out_and_a_row_neither_written_nor_skipped_is_an_error(
    array,
) -> None:
    path, values = array
    kept = [0, 1, 3, 4]  # row 2 skipped: the packed array holds the others, in order
    np.save(path, values[kept])
    digests = {i: hashlib.sha256(values[i].tobytes()).digest() for i in kept}
    assert array_checksum_from_rows(path, 5, digests, {2}) == _by_hand(path, values[kept])
    del digests[3]
    with pytest.raises(CacheError, match=r"train_images\.npy: 1 rows neither written nor skipped"):
        array_checksum_from_rows(path, 5, digests, {2})


def test_a_file_that_is_not_an_array_gets_a_checksum_no_array_has(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(b"not an array")
    assert array_rows_checksum(path) == "rows-sha256:unreadable"

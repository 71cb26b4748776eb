"""atomic.py: a write leaves the new file whole or the old one untouched, never half a file
(full disks and read-only folders are simulated: see tests/helpers.py), and the temporaries
of killed processes are removed, those of live ones kept."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import fail_fsync, fail_writes
from tinycnn import atomic
from tinycnn.atomic import save_npy, write_json, write_text
from tinycnn.checkpoint import save_checkpoint
from tinycnn.errors import OutputError

# errno, strerror, the words the message must use
WRITE_FAILURES = [
    (errno.ENOSPC, "No space left on device", "disk full"),
    (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
    (errno.EROFS, "Read-only file system", "read-only file system"),
    (errno.EACCES, "Permission denied", "permission denied"),
]


WRITERS = {
    "text": lambda path: write_text(path, "hello\n"),
    "json": lambda path: write_json(path, {"a": 1}),
    "npy": lambda path: save_npy(path, np.zeros((100, 10), np.float32)),
    "checkpoint": lambda path: save_checkpoint(path, {"weights": torch.zeros(1000)}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(("code", "text", "words"), WRITE_FAILURES)
@pytest.mark.parametrize("fail", [fail_writes, fail_fsync])
def test_failed_write_is_one_output_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer, code, text, words, fail
) -> None:
    target = tmp_path / "out" / "new" / "file.bin"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("other file")
    fail(monkeypatch, code, text)
    with pytest.raises(OutputError) as caught:
        WRITERS[writer](target)
    message = str(caught.value)
    assert str(target) in message and words in message and "\n" not in message
    # No temporary file, no target, and the folder made for it is gone again.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"old": True})
    fail_writes(monkeypatch, errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match="disk full"):
        write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_parent_that_is_a_file_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(OutputError, match="not a folder"):
        write_text(tmp_path / "plain" / "sub" / "x.txt", "hi")


def test_other_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic.atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("half")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []

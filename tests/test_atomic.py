"""atomic.py: a write leaves the new file whole or the old one untouched, never half a file
(full disks and read-only folders are simulated: see tests/helpers.py), and the temporaries
of killed processes are removed, those of live ones kept."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import fail_fsync, fail_writes, train_argv
from tinycnn import atomic
from tinycnn.atomic import save_npy, update_json, write_json, write_text
from tinycnn.checkpoint import load_checkpoint, save_checkpoint
from tinycnn.cli import main
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
    plain = tmp_path / "plain"
    plain.write_text("a file")
    with pytest.raises(OutputError, match="not a folder") as info:
        write_text(plain / "sub" / "x.txt", "hi")
    assert str(info.value).startswith(f"{plain / 'sub' / 'x.txt'}: cannot write (a parent is a")
    assert f"not a folder: {plain});" in str(info.value)  # the file in the way, named


def test_a_folder_written_over_a_file_says_so(tmp_path: Path) -> None:
    # e.g. tinycnn report ... --out a.png: the path itself is the file, not a parent.
    plain = tmp_path / "a.png"
    plain.write_text("a file")
    with pytest.raises(OutputError) as info, atomic.FolderBuild(plain) as build:
        (build.tmp / "index.html").write_text("<html>")
        build.publish()
    assert str(info.value) == (
        f"{plain}: cannot write (it is a file, and a folder is written here); choose another "
        "path; nothing was written"
    )
    assert plain.read_text() == "a file" and [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_other_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic.atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("half")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    """The id of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _plant_temporaries(out: Path) -> tuple[list[Path], list[Path]]:
    """(temporaries left by a killed process, files to keep) in a run folder and its checkpoints.

    Kept: a temporary of a live process (this one: it may be writing it) and a user's file that
    only looks like a temporary.
    """
    dead, live = _dead_pid(), os.getpid()
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    stale = [
        checkpoints / f".last.pt.tmp-{dead}-1a2b3c",
        checkpoints / f".best.pt.tmp-{dead}-4d5e6f7a",
        checkpoints / f".epoch-002.pt.tmp-{dead}-0a1b2c",
        out / f".config.toml.tmp-{dead}-abcdef",
    ]
    kept = [checkpoints / f".last.pt.tmp-{live}-99aa88bb", out / ".notes.tmp-mine"]
    for path in stale + kept:
        path.write_bytes(b"half a file")
    return stale, kept


def test_start_and_resume_remove_the_temporaries_of_killed_processes_only(
    cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    for argv in (
        [*train_argv(cache, out), "--stop-at", "1"],
        ["train", "--resume", str(out), "-q", "--stop-at", "2"],
    ):
        stale, kept = _plant_temporaries(out)
        assert main(argv) == 0, argv[1]
        assert [p.name for p in stale if p.exists()] == [], argv[1]
        assert all(p.exists() for p in kept), argv[1]
        for path in kept:
            path.unlink()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["iteration"] == 2


_ADD_KEYS = """
import sys
from tinycnn.atomic import update_json
path, prefix = sys.argv[1], sys.argv[2]
for i in range(150):
    update_json(path, lambda saved: saved.update({f"{prefix}{i}": i}))
"""


def test_update_json_from_two_processes_at_once_keeps_every_key(tmp_path: Path) -> None:
    # The machine files of kernel and compile choices are shared by every run on a machine:
    # a read-modify-write without a lock lost about half of two writers' keys.
    path = tmp_path / "choices.json"
    writers = [
        subprocess.Popen([sys.executable, "-c", _ADD_KEYS, str(path), prefix])
        for prefix in ("a", "b")
    ]
    assert [w.wait(timeout=120) for w in writers] == [0, 0]
    saved = json.loads(path.read_text())
    assert saved == {f"{p}{i}": i for p in ("a", "b") for i in range(150)}


def test_update_json_starts_from_nothing_over_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "choices.json"
    for damaged in ("{not json", "[1, 2]"):
        path.write_text(damaged)
        update_json(path, lambda saved: saved.update(x=1))
        assert json.loads(path.read_text()) == {"x": 1}

"""Hardening of the inference side (issue 7): full disks, read-only folders, stale ensemble caches,
huge images, bad checkpoints and configs each give one line and exit 1, never a traceback.

Full disks and read-only folders are simulated in-process: the tests run as root, where chmod
0o555 stops nothing, so tinycnn.atomic's ``open`` is replaced by one whose writes fail with the
errno (after part of the data, so a half-written temporary file exists and must be removed),
or ``os.fsync`` fails (as a full NFS or quota-limited disk reports it).
"""

from __future__ import annotations

import builtins
import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_train import SMALL
from tinycnn import atomic
from tinycnn.atomic import save_npy, write_json, write_text
from tinycnn.checkpoint import save_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic
from tinycnn.errors import OutputError

# errno, strerror, the words the message must use
WRITE_FAILURES = [
    (errno.ENOSPC, "No space left on device", "disk full"),
    (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
    (errno.EROFS, "Read-only file system", "read-only file system"),
    (errno.EACCES, "Permission denied", "permission denied"),
]


class _FailingFile:
    """A real file whose writes fail with an errno after the first 10 bytes (half-written)."""

    def __init__(self, file, code: int, text: str) -> None:
        self.file, self.code, self.text = file, code, text

    def write(self, data) -> int:
        self.file.write(bytes(data)[:10])
        self.file.flush()
        raise OSError(self.code, self.text)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def fail_writes(monkeypatch: pytest.MonkeyPatch, code: int, text: str) -> None:
    """Every file tinycnn.atomic opens for writing fails part-way with OSError(code)."""

    def failing_open(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller)
        return _FailingFile(file, code, text) if "w" in mode else file

    monkeypatch.setattr(atomic, "open", failing_open, raising=False)


def fail_fsync(monkeypatch: pytest.MonkeyPatch, code: int, text: str) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError(code, text)

    monkeypatch.setattr(os, "fsync", failing_fsync)


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


# --- the commands that write files: export, ensemble --out, predict --submission ---------------


@dataclass
class Small:
    dataset: Path  # generated dataset folder
    cache: Path
    run: Path
    checkpoint: Path  # run/checkpoints/last.pt, two iterations of a tiny cnn5


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Small:
    """A tiny model stopped after two iterations on generated data (5 classes, a tune split)."""
    from tinycnn.train import train

    root = tmp_path_factory.mktemp("hardening")
    dataset = make_synthetic(
        root / "data", classes=5, train_per_class=12, val_per_class=4, test_count=6, seed=3
    )
    cache = prepare(dataset, root / "cache", workers=1, progress=False).path
    overrides = [f"data.cache={json.dumps(str(cache))}", *SMALL, "data.holdout_per_class=2"]
    train(load_config(None, overrides), root / "run", progress=False, stop_at_iteration=2)
    return Small(dataset, cache, root / "run", root / "run" / "checkpoints" / "last.pt")


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``tinycnn ARGV`` run in-process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """The CLI failed with exit 1 and one "tinycnn: error:" line holding each fragment."""
    assert code == 1, err
    assert "Traceback" not in err and "\x1b" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinycnn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


WRITING_COMMANDS = {
    "export": lambda s, out: [
        *("export", s.checkpoint, "--format", "torchscript", "--out", out / "model.pt"),
        *("--data", s.cache, "--check-count", 4),
    ],
    "ensemble": lambda s, out: [
        *("ensemble", s.checkpoint, "--data", s.cache, "--out", out / "ens"),
        *("--no-cache", "--device", "cpu"),
    ],
    "predict": lambda s, out: [
        *("predict", s.checkpoint, "--data", s.cache, "--submission", out / "sub.txt"),
        *("--device", "cpu"),
    ],
}


@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
@pytest.mark.parametrize(
    ("fail", "code", "text", "words"),
    [
        (fail_writes, errno.ENOSPC, "No space left on device", "disk full"),
        (fail_writes, errno.EROFS, "Read-only file system", "read-only file system"),
        (fail_fsync, errno.EACCES, "Permission denied", "permission denied"),
    ],
)
def test_writing_commands_report_unwritable_output_in_one_line(
    small: Small,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    command: str,
    fail,
    code: int,
    text: str,
    words: str,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fail(monkeypatch, code, text)
    status, _, err = run_cli(capsys, WRITING_COMMANDS[command](small, out))
    assert_one_line_error(status, err, str(out), words)
    assert list(out.iterdir()) == []  # nothing half-written, no temporary file

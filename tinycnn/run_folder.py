"""The files of a run folder other than checkpoints: its lock, config.toml and metrics.jsonl.

A run folder is written by one process at a time: ``run_lock`` holds an advisory lock on
``RUN/.lock`` for the whole command (the kernel drops it when the process dies, so a killed run
never blocks its own ``--resume``). metrics.jsonl gets one whole line per evaluation, written
with a single append; a torn last line (a write cut by a crash or a full disk) is dropped on
reading and rebuilt from the checkpoint on resume.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from tinycnn.atomic import output_error
from tinycnn.errors import ConfigError, RunFolderError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not protected against a second writer
    fcntl = None

LOCK = ".lock"
METRICS = "metrics.jsonl"
STEPS = "steps.jsonl"  # train.log_every: the training loss every N iterations
TIME_BUDGET = "time-budget.json"  # where train.max_minutes ended the run: {iteration, max_minutes}


def time_budget_end(run_dir: str | Path) -> dict | None:
    """{"iteration", "max_minutes"} where train.max_minutes ended the run, or None (never, or
    the file unreadable: then the elapsed time alone decides)."""
    try:
        data = json.loads((Path(run_dir) / TIME_BUDGET).read_text())
        return {"iteration": int(data["iteration"]), "max_minutes": float(data["max_minutes"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock; RunFolderError naming the live process if another has it."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise output_error(run_dir / LOCK, exc) from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                raise RunFolderError(
                    f"{run_dir}: in use by another tinycnn process ({holder}); wait for it to "
                    "end or stop it, then use --resume, or choose another --out"
                ) from None
            except OSError as exc:  # e.g. ENOLCK: a network file system without locks
                raise RunFolderError(
                    f"{run_dir / LOCK}: cannot lock the run folder ({exc.strerror}); use a "
                    "local folder"
                ) from None
        started = datetime.now().isoformat(timespec="seconds")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
        except OSError as exc:
            raise output_error(run_dir / LOCK, exc) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def append_line(path: Path, text: str) -> None:
    """Append one line with a single write (O_APPEND) and fsync: readers see it whole or not."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            data = memoryview((text + "\n").encode("utf-8"))
            while data:  # a short write (a disk filling up) must not leave half a line unsaid
                data = data[os.write(fd, data) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise output_error(path, exc) from None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-evaluation metrics of a run folder, by iteration (the last line per one wins).

    A torn last line is dropped; a damaged line elsewhere is a RunFolderError naming it.
    """
    return _read_rows(Path(run_dir) / METRICS, "metrics")


def read_steps(run_dir: str | Path) -> list[dict]:
    """The training-loss log (``train.log_every``) of a run folder, by iteration, as metrics."""
    return _read_rows(Path(run_dir) / STEPS, "steps")


def _read_rows(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.split("\n")
    rows = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["iteration"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            if lineno == len(lines):  # no newline after it: a write that was cut off
                continue
            raise RunFolderError(
                f"{path} line {lineno}: not a {what} record ({line[:60]!r}); "
                "delete the line to go on"
            ) from None
    return [rows[k] for k in sorted(rows)]


def read_resolved_config(run_dir: Path) -> dict:
    """The run's config.toml as a dict; ConfigError if the folder is not a run folder."""
    from tinycnn.config import tomllib

    path = run_dir / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{path}: missing, so {run_dir} is not a run folder to resume")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RunFolderError(f"{path}: not a readable config ({exc})") from None

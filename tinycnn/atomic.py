"""Atomic file writes: a temporary sibling, fsync, one rename; readers never see half a file.

Any OSError while writing (a full disk, a read-only or forbidden folder) becomes one OutputError
that names the file and the reason; the temporary file, and any folder made for it, are removed.
A kill -9 runs no cleanup: its temporaries (named for their process) are removed later by
remove_stale_temporaries, once that process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tinycnn.errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks
    fcntl = None

# errno -> (reason, what to do), for the failures people meet when writing results.
_WRITE_FAILURES = {
    errno.ENOSPC: ("disk full", "free some space or write elsewhere"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or write elsewhere"),
    errno.EFBIG: ("file too large for this file system", "write elsewhere"),
    errno.EROFS: ("read-only file system", "choose a folder you can write to"),
    errno.EACCES: ("permission denied", "choose a folder you can write to"),
    errno.EPERM: ("permission denied", "choose a folder you can write to"),
    errno.ENOTDIR: ("a parent is a file, not a folder", "choose another path"),
    errno.EEXIST: ("a parent is a file, not a folder", "choose another path"),  # from mkdir
    errno.EISDIR: ("it is a folder", "give a file path"),
}
# temporary_path's names: .NAME.tmp-PID-RANDOM, the writer's process id in the middle.
_TEMPORARY = re.compile(r"\..+\.tmp-(?P<pid>[0-9]+)-[0-9a-f]+")


def output_error(path: Path, exc: OSError, tmp: Path | None = None) -> OutputError:
    """One-line OutputError for an OSError met while writing path (via tmp)."""
    reason, advice = _WRITE_FAILURES.get(exc.errno, (exc.strerror or str(exc), "check the path"))
    # A two-file call (a copy, a rename) names its source first: the file written is the second.
    where = exc.filename2 or exc.filename
    at = f": {where}" if where and Path(where) not in (path, tmp) else ""
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):  # name the file that stands in the way
        blocking = next((p for p in (Path(path), *Path(path).parents) if p.is_file()), None)
        if blocking == Path(path):
            reason, at = "it is a file, and a folder is written here", ""
        elif blocking is not None:
            at = f": {blocking}"
    error = OutputError(f"{path}: cannot write ({reason}{at}); {advice}; nothing was written")
    error.path = Path(path)  # the file that could not be written (FolderBuild names it)
    return error


def check_writable(path: str | Path, folder: bool = False) -> None:
    """OutputError now, before the work whose result goes to ``path`` (a file, or a folder with
    ``folder``), where the path alone rules the write out: a folder where a file goes, a file
    where a folder goes, or a file among its parents."""
    path = Path(path)
    if path.is_dir() and not folder:
        raise output_error(path, OSError(errno.EISDIR, "Is a directory", str(path)))
    in_the_way = next((p for p in (path, *path.parents) if p.is_file()), None)
    if in_the_way is not None and (in_the_way != path or folder):
        raise output_error(path, OSError(errno.ENOTDIR, "Not a directory", str(in_the_way)))


def write_failure(exc: BaseException) -> OSError | None:
    """The OSError behind exc when it is a failure to write that _WRITE_FAILURES names (a full
    disk, a read-only folder...), else None: other errors keep their own report."""
    cause = _write_oserror(exc)
    return cause if cause is not None and cause.errno in _WRITE_FAILURES else None


def _write_oserror(exc: BaseException) -> OSError | None:
    """The OSError behind exc: torch's writers wrap a failed write in a RuntimeError."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it is removed.

    The writer inside the block writes the temporary path however it likes (np.save, an
    exporter, ``write_into``); the data is flushed to disk before the rename. Prefer writers
    that go through Python file objects: torch's own file writer reports a full disk as an
    opaque RuntimeError, or aborts the process (torch.jit.save to a path).
    OutputError when writing fails for a reason of the file system (see _WRITE_FAILURES).
    """
    path = Path(path)
    tmp = temporary_path(path)
    made = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException as exc:
        _remove(tmp, made)
        cause = _write_oserror(exc) if isinstance(exc, (OSError, RuntimeError)) else None
        if cause is not None:
            raise output_error(path, cause, tmp) from None
        raise
    finally:
        _unlink(tmp)


def temporary_path(path: Path) -> Path:
    """A hidden sibling to build path in: .NAME.tmp-PID-RANDOM, PID this process's id."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporaries in folder (files or folders) whose writing process is gone.

    name: only those of this file name (default: of any). A temporary whose process still runs
    is being written, and is kept. Returns what was removed.
    """
    pattern = f".{glob.escape(name)}.tmp-*" if name else ".*.tmp-*"
    removed = []
    for stale in sorted(folder.glob(pattern)):
        found = _TEMPORARY.fullmatch(stale.name)
        if found is None or process_alive(int(found["pid"])):
            continue
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            _unlink(stale)
        removed.append(stale)
    return removed


def process_alive(pid: int) -> bool:
    """Whether a process of this id runs (maybe another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink(tmp: Path) -> None:
    # OSError: e.g. its folder could not be made, so there is nothing to remove.
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def _remove(tmp: Path, made: list[Path]) -> None:
    """Remove the temporary file and the folders made for it (innermost first, if empty)."""
    _unlink(tmp)
    for folder in made:
        try:
            folder.rmdir()
        except OSError:
            break  # not empty (another writer), or never made: leave it and its parents


def write_into(tmp: Path, data: bytes | memoryview) -> None:
    """Write data to the temporary file of an atomic_path block (the block reports failures)."""
    with open(tmp, "wb") as f:
        f.write(data)


def write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with atomic_path(path) as tmp:
        write_into(tmp, data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


def update_json(path: str | Path, change) -> None:
    """change(obj) on the JSON object in path ({} when there is none or it is unreadable), then
    written back atomically, the whole under an exclusive lock on the sibling PATH.lock: two
    processes adding keys at once keep both's (read-modify-write without it loses one's).

    Where the system has no advisory locks (Windows, some network file systems) or the lock
    file cannot be made, it goes on unlocked. OutputError as write_json.
    """
    path = Path(path)
    with _locked(path.with_name(path.name + ".lock")):
        saved = read_json_object(path)
        change(saved)
        write_json(path, saved)


def read_json_object(path: str | Path) -> dict:
    """The JSON object in path; {} when there is none, or it is unreadable or not an object."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            with contextlib.suppress(OSError):  # e.g. ENOLCK: unlocked, as without fcntl
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_npy(path: str | Path, array: np.ndarray) -> None:
    # Through memory: numpy reports a short write (a full disk) as an OSError without errno.
    save_buffer(path, lambda f: np.save(f, array))


def save_buffer(path: str | Path, writer) -> None:
    """Let writer(file) serialise into memory, then write the bytes atomically.

    For torch.save / torch.jit.save, whose own file writers fail opaquely on a full disk.
    """
    buffer = io.BytesIO()
    writer(buffer)
    write_bytes(path, buffer.getbuffer())


def copy_file(src: str | Path, dst: str | Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


class FolderBuild:
    """A folder of files built in a temporary sibling of ``path`` and moved into ``path`` only
    by publish(): a failure on the way (a full disk) leaves nothing of it in ``path``.

    Use as ``with FolderBuild(out) as build:`` writing under ``build.tmp`` and calling
    ``build.publish()`` at the end. Entries replace those of the same name in ``path``; other
    files there are left alone. The temporary folder is removed whatever happens; a write
    failure becomes one OutputError naming ``path``.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tmp = temporary_path(self.path)

    def __enter__(self) -> FolderBuild:
        check_writable(self.path, folder=True)  # before the work, not at publish
        if self.path.parent.is_dir():  # those of killed builds
            remove_stale_temporaries(self.path.parent, self.path.name)
        try:
            self.tmp.mkdir(parents=True)
        except OSError as exc:
            raise output_error(self.path, exc, self.tmp) from None
        return self

    def publish(self) -> None:
        """Move every entry built into ``path`` (renames: no space needed)."""
        self.path.mkdir(parents=True, exist_ok=True)
        for entry in sorted(self.tmp.iterdir()):
            target = self.path / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            entry.replace(target)

    def __exit__(self, kind, exc, traceback) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
        cause = write_failure(exc) if exc is not None else None
        if cause is not None:
            # The file that failed, named where it would have been (not its temporary name).
            failed = getattr(exc, "path", None) or cause.filename
            if failed and Path(failed).is_relative_to(self.tmp):
                failed = self.path / Path(failed).relative_to(self.tmp)
            where = OSError(cause.errno, cause.strerror, str(failed) if failed else None)
            raise output_error(self.path, where) from None


def remove_stale_builds(out: Path) -> None:
    """Leftovers of a killed build of the folder ``out`` (.NAME.tmp-PID-xxxx whose process is
    gone, .NAME.old-PID of an interrupted swap_in_folder)."""
    remove_stale_temporaries(out.parent, out.name)
    for old in out.parent.glob(f".{out.name}.old-*"):
        shutil.rmtree(old, ignore_errors=True)


def swap_in_folder(tmp: Path, out: Path) -> None:
    """Rename the finished folder ``tmp`` into place as ``out``, replacing an older one."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)

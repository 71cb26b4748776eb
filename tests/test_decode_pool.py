"""data/decode_pool.py: the decode workers die with prepare, a killed worker is one clean error,
and a stop signal reaches every worker."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinycnn.data import decode
from tinycnn.data.decode_pool import signals_blocked
from tinycnn.data.sources import Source

# --- 15: decode workers die with prepare --------------------------------------------------------


@pytest.fixture(scope="module")
def big_folder(mini_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mini subset with 12x the train images (hard links): seconds to prepare."""
    root = tmp_path_factory.mktemp("big") / "tiny-imagenet-big"
    shutil.copytree(mini_folder, root, copy_function=os.link)
    for boxes in (root / "train").glob("*/*_boxes.txt"):
        lines = boxes.read_text().splitlines()
        copies = []
        for k in range(1, 12):
            for line in lines:
                name, rest = line.split("\t", 1)
                os.link(boxes.parent / "images" / name, boxes.parent / "images" / f"c{k}_{name}")
                copies.append(f"c{k}_{name}\t{rest}")
        boxes.unlink()  # a hard link to mini_folder's file: writing through it would edit that
        boxes.write_text("\n".join(lines + copies) + "\n")
    return root


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


def _start_prepare(src: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """`tinycnn prepare` in a subprocess, caught mid-run: (process, its two worker pids)."""
    argv = ["prepare", str(src), "--out", str(out), "-q", "--workers", "2"]
    code = f"from tinycnn.cli import main; raise SystemExit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) == 2 and list(out.parent.glob(f".{out.name}.tmp-*/train_images.npy")):
            break
        time.sleep(0.005)
    assert len(workers) == 2 and process.poll() is None, "prepare was not caught mid-run"
    return process, workers


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_prepare(big_folder: Path, tmp_path: Path, sig: int) -> None:
    process, workers = _start_prepare(big_folder, tmp_path / "cache")
    try:
        os.kill(process.pid, sig)  # the parent only, as `kill` or an OOM killer does
        process.wait(timeout=30)
        assert not _wait_gone(workers, 5), "decode workers outlived prepare"
        assert process.returncode == (-9 if sig == signal.SIGKILL else 143)
    finally:
        for worker in workers:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_worker_is_one_clean_error(big_folder: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "cache"
    process, workers = _start_prepare(big_folder, out)
    try:
        os.kill(workers[0], sig)  # e.g. the out-of-memory killer picking a worker
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert "a decode worker process died" in err and "run prepare again" in err
        assert not _wait_gone(workers, 5) and not out.exists()
        assert not list(tmp_path.glob(".cache.*")), "the build was not cleaned up"
    finally:
        for worker in workers:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)


class _Nothing(Source):
    def read(self, rel: str) -> bytes:
        raise AssertionError("no image is read here")


def _born_during_a_group_sigterm(root: str) -> None:
    # The SIGTERM of a group kill reaches the worker before its initializer has run, while it
    # still has the parent's Python handler; then the initializer runs, as in the pool.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
    decode.init_worker(_Nothing(Path(root)), "none", 64)
    time.sleep(0.5)  # a worker that survived its SIGTERM would wait on the task queue here
    os._exit(0)


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks")
def test_a_sigterm_before_the_worker_initializer_still_stops_the_worker(tmp_path: Path) -> None:
    def parents_handler(signum, frame):  # the CLI's: SIGTERM unwinds like Ctrl-C
        raise KeyboardInterrupt

    context = multiprocessing.get_context("fork")
    previous = signal.signal(signal.SIGTERM, parents_handler)
    try:
        with signals_blocked():  # as decode_pool starts its workers
            worker = context.Process(target=_born_during_a_group_sigterm, args=(str(tmp_path),))
            worker.start()
        worker.join(timeout=10)
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Without the blocking, the child's inherited Python handler takes the signal and, replaced
    # by the initializer's default one, never acts on it: the child lives on and exits 0.
    assert worker.exitcode == -signal.SIGTERM


@pytest.mark.skipif(sys.platform != "linux", reason="reads the signal mask from /proc")
def test_the_mask_is_restored_after_the_workers_start() -> None:
    def blocked() -> int:
        status = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/status").read_text()
        return int(
            next(line for line in status.splitlines() if line.startswith("SigBlk")).split()[1], 16
        )

    before = blocked()
    with signals_blocked():
        inside = blocked()
    assert inside & (1 << (signal.SIGTERM - 1)) and inside & (1 << (signal.SIGINT - 1))
    assert blocked() == before

"""data/decode_pool.py: the decode workers die with prepare, and a killed worker is one clean
error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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

"""The decode workers' pool (tinycnn/data/decode_pool.py): a stop signal reaches every worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tinycnn.data import decode
from tinycnn.data.decode_pool import signals_blocked
from tinycnn.data.sources import Source


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

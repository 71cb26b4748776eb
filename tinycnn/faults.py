"""Fault injection for the kill tests: the one hook production code calls at the points where a
kill must leave a run that resumes exactly.

Callers use ``faults.pause_point(...)`` through the module, so a test that wraps or replaces the
hook (monkeypatch.setattr(tinycnn.faults, "pause_point", ...)) reaches every call.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def pause_point(phase: str, iteration: int) -> None:
    """Wait here to be killed when asked to; a no-op otherwise.

    With TINYCNN_PAUSE_AT="PHASE@ITERATION", the process writes its pid to TINYCNN_PAUSE_FILE at
    that point and sleeps, so a test can kill -9 it at an exact phase of the run. Under torchrun
    only the rank in TINYCNN_PAUSE_RANK (default 0) pauses.
    """
    rank = os.environ.get("RANK", "0")
    if rank != os.environ.get("TINYCNN_PAUSE_RANK", "0"):
        return
    if os.environ.get("TINYCNN_PAUSE_AT") == f"{phase}@{iteration}":
        Path(os.environ["TINYCNN_PAUSE_FILE"]).write_text(str(os.getpid()), encoding="utf-8")
        # TINYCNN_PAUSE_SECONDS: go on after that long (a signal sent meanwhile is handled).
        deadline = time.monotonic() + float(os.environ.get("TINYCNN_PAUSE_SECONDS", "inf"))
        while time.monotonic() < deadline:
            time.sleep(min(1.0, max(deadline - time.monotonic(), 0)))

"""The CPU runtime's process settings: freed tensor memory stays in the process (glibc)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

# Run in a fresh interpreter: the malloc settings are process-wide. glibc's mallinfo2 reports
# the bytes in mmap'd blocks (hblkhd): a 64 MiB tensor there is a block of fresh kernel pages.
_PROBE = """
import ctypes, json, sys
import torch
from tinycnn.runtime import make_runtime

FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"

class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in FIELDS.split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info

def mmapped_by_a_tensor():
    before = libc.mallinfo2().hblkhd
    x = torch.empty(64 << 20, dtype=torch.uint8)
    return libc.mallinfo2().hblkhd - before

plain = mmapped_by_a_tensor()
make_runtime("cpu", "fp32", threads=1)
print(json.dumps({"plain": plain, "runtime": mmapped_by_a_tensor()}))
"""

needs_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc settings (the runtime leaves other C libraries alone)",
)


def _probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], env={**environ, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_glibc
def test_a_cpu_runtime_serves_large_tensors_from_the_heap() -> None:
    mmapped = _probe()
    assert mmapped["plain"] >= 64 << 20  # glibc's default: fresh pages for each large block
    assert mmapped["runtime"] == 0  # after make_runtime: the heap, reused step after step


@needs_glibc
def test_the_users_own_glibc_malloc_settings_win() -> None:
    assert _probe(MALLOC_MMAP_MAX_="65536")["runtime"] >= 64 << 20
    assert _probe(GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")["runtime"] >= 64 << 20

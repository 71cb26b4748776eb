"""The CPU runtime's process settings: freed tensor memory stays in the process (glibc); bf16
only where it is measured faster."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from tinycnn import runtime as rt

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


@pytest.mark.slow
@needs_glibc
def test_the_users_own_glibc_malloc_settings_win() -> None:
    assert _probe(MALLOC_MMAP_MAX_="65536")["runtime"] >= 64 << 20
    assert _probe(GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")["runtime"] >= 64 << 20


@pytest.mark.parametrize(
    ("speedup", "expected"),
    [(0.11, "fp32"), (1.0, "fp32"), (1.24, "fp32"), (1.25, "bf16"), (2.5, "bf16")],
)
def test_auto_takes_bf16_only_where_its_convolutions_are_measured_faster(
    monkeypatch, speedup: float, expected: str
) -> None:
    monkeypatch.setattr(rt, "bf16_supported", lambda device: True)
    monkeypatch.setattr(rt, "bf16_speedup", lambda: speedup)
    runtime = rt.make_runtime("cpu", "auto", threads=1)
    assert runtime.precision == expected
    assert f"measured {speedup:.2f}x as fast as fp32's" in runtime.why
    assert rt.make_runtime("cpu", "bf16", threads=1).precision == "bf16"  # the user's word


def test_bf16_is_not_timed_where_it_is_not_supported_or_not_asked_for(monkeypatch) -> None:
    def timed() -> float:
        raise AssertionError("bf16 timed")

    monkeypatch.setattr(rt, "bf16_speedup", timed)
    monkeypatch.setattr(rt, "bf16_supported", lambda device: False)
    assert rt.make_runtime("cpu", "auto", threads=1).precision == "fp32"  # emulated bf16: slow
    monkeypatch.setattr(rt, "bf16_supported", lambda device: True)
    assert rt.make_runtime("cpu", "fp32", threads=1).precision == "fp32"


def test_the_bf16_speedup_is_the_fastest_fp32_call_over_the_fastest_bf16_one(monkeypatch) -> None:
    # A clock that stands still at each call's start and advances by that precision's next
    # duration at its end. The first call of each (kernel creation) is the slowest, the rest
    # vary: 2.0 / 0.8 = 2.5 from the fastest calls; a mean, the warm-up call or the ratio
    # upside down give something else.
    durations = {False: [30.0, 2.6, 2.0, 2.4, 2.2, 2.1], True: [9.0, 0.9, 1.0, 0.8, 1.2, 0.9]}
    now, reads = [0.0], [0]

    def clock() -> float:
        assert torch.get_num_threads() == 1  # the call runs on the thread whose time is read
        reads[0] += 1
        if reads[0] % 2 == 0:  # a call's end
            now[0] += durations[torch.is_autocast_enabled("cpu")].pop(0)
        return now[0]

    monkeypatch.setattr(rt.time, "thread_time", clock)  # CPU time: wall-clock reads the load
    monkeypatch.setattr(rt.time, "perf_counter", lambda: pytest.fail("wall-clock read"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert rt._bf16_speedup.__wrapped__() == pytest.approx(2.5)
        assert torch.get_num_threads() == 2  # the caller's threads back
    finally:
        torch.set_num_threads(before)
    assert durations == {False: [], True: []}  # warm-up and five rounds: more than 0.05 s


def test_timing_bf16_leaves_the_runs_random_numbers_alone() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rt._bf16_speedup.__wrapped__()
    assert torch.equal(torch.rand(3), expected)


def test_a_resumed_auto_run_keeps_the_precision_it_trained_in(monkeypatch) -> None:
    fp32 = rt.Runtime(torch.device("cpu"), None, True, why="measured")
    monkeypatch.setattr(rt, "bf16_supported", lambda device: True)
    kept = rt.keep_precision(fp32, "bf16", "auto")
    assert (kept.precision, kept.why) == ("bf16", "as the run trained so far")
    assert rt.keep_precision(kept, "fp32", "auto").precision == "fp32"
    assert rt.keep_precision(fp32, "bf16", "fp32") is fp32  # a set precision stays as set
    assert rt.keep_precision(fp32, None, "auto") is fp32  # a checkpoint from before the field
    monkeypatch.setattr(rt, "bf16_supported", lambda device: False)
    assert rt.keep_precision(fp32, "bf16", "auto") is fp32  # this machine has no bf16


def test_under_torchrun_every_rank_takes_rank_0s_precision(monkeypatch) -> None:
    fp32 = rt.Runtime(torch.device("cpu"), None, True, why="measured 1.1x")
    monkeypatch.setattr(rt.distributed, "broadcast_int", lambda value: 1)  # rank 0: bf16
    agreed = rt.agree_precision(fp32)
    assert (agreed.precision, agreed.why) == ("bf16", "as rank 0 measured")
    monkeypatch.setattr(rt.distributed, "broadcast_int", lambda value: 0)  # rank 0: fp32
    assert rt.agree_precision(fp32) is fp32
    assert rt.agree_precision(agreed).precision == "fp32"


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity and two cores to restrict a process to one",
)
def test_threads_default_to_the_cores_the_process_may_use_not_the_machines() -> None:
    # taskset -c 0 python ...: one core allowed, two in the machine (os.cpu_count()).
    one = min(os.sched_getaffinity(0))
    code = (
        "import torch; from tinycnn.runtime import make_runtime; "
        "make_runtime('cpu', 'fp32'); print(torch.get_num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: os.sched_setaffinity(0, {one}),
    )
    assert int(out.stdout.split()[-1]) == 1

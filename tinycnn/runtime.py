"""Where and how a model runs: device, threads, precision (bf16 autocast) and memory format."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import sys
import time
from dataclasses import dataclass, replace

import torch
from torch import nn

from tinycnn import distributed
from tinycnn.cores import usable_cores
from tinycnn.errors import ConfigError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None: plain fp32
    channels_last: bool
    why: str = ""  # why this precision, for the training banner
    # The precision make_runtime was asked for: with "auto" a loaded fp32 model stays in fp32
    # (inference.load_model); "" (a Runtime made otherwise) keeps the precision as it is.
    requested: str = ""

    def autocast(self):
        """Context for a forward pass: bf16 autocast on the fast path, nothing otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    @property
    def computed_in(self) -> str:
        """The device kind and precision, e.g. "cpu bf16": what numbers computed here depend on
        besides the model and its input (the probability cache's key)."""
        return f"{self.device.type} {self.precision}"


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 convolutions run natively here: CUDA with bf16, or a CPU that oneDNN runs bf16
    on (AVX-512 or newer). Not whether they are fast: oneDNN also takes AVX-512 CPUs without bf16
    instructions (Skylake, Cascade Lake), and some VMs hide the AMX units that make bf16 fast;
    bf16_speedup measures that."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        return bool(checker()) if checker is not None else False
    return False


# precision = "auto" takes bf16 on a CPU only where its convolutions are at least this much
# faster than fp32's. Measured, the margins are wide: ~2.4-2.6x on the AVX512-BF16 EPYCs, more
# with AMX, ~1.0x on a Xeon whose AMX the VM hides (its bf16 runs, no faster).
BF16_MIN_SPEEDUP = 1.25
_TIMING_ROUNDS, _TIMING_SECONDS = 5, 0.05  # at least: rounds of one call each, seconds in all


def bf16_speedup() -> float:
    """How many times as fast a bf16 3x3 convolution runs as an fp32 one on this CPU.

    A 128 -> 128 channel convolution, batch 32 at 16x16, channels_last, forward (bf16 by
    autocast, as in training): one warm-up call each (kernel creation), then alternating calls,
    at least 5 rounds and 50 ms, the fastest call of each. Each call runs on one thread and is
    timed in that thread's CPU time, not wall-clock: on a machine busy with other work (a
    training run beside an evaluation), a multi-threaded call's wall time is mostly the
    scheduler's (seen on a 2-core Zen 4 with a run beside it: 2-thread wall-clock readings of
    0.80-0.89x in 7 of 14 processes, 2.08-2.37x in six), which made the precision, and so
    the results, of `auto` depend on the load. Timed once per process (~0.3 s where bf16 is
    fast; ~2 s where it is emulated), without touching the random numbers a run draws. Only
    asked where bf16_supported says the CPU runs bf16 at all.
    """
    return _bf16_speedup()


@functools.cache
def _bf16_speedup() -> float:
    with torch.random.fork_rng(devices=[]):
        conv = nn.Conv2d(128, 128, 3, padding=1, bias=False).to(memory_format=torch.channels_last)
        x = torch.randn(32, 128, 16, 16).to(memory_format=torch.channels_last)

    def seconds(bf16: bool) -> float:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            start = time.thread_time()
            conv(x)
            return time.thread_time() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the call runs on this thread, whose CPU time is timed
    try:
        seconds(False), seconds(True)  # warm-up: each precision's kernel is made on first use
        fp32, bf16 = [], []
        while len(fp32) < _TIMING_ROUNDS or sum(fp32) + sum(bf16) < _TIMING_SECONDS:
            fp32.append(seconds(False))
            bf16.append(seconds(True))
    finally:
        torch.set_num_threads(threads)
    return min(fp32) / min(bf16)


def with_precision(runtime: Runtime, precision: str, why: str) -> Runtime:
    """The runtime with another precision (bf16 or fp32) and the reason for it."""
    return replace(runtime, autocast_dtype=torch.bfloat16 if precision == "bf16" else None, why=why)


def agree_precision(runtime: Runtime) -> Runtime:
    """Under torchrun, rank 0's precision on every rank: each process timed bf16 on its own."""
    bf16 = bool(distributed.broadcast_int(int(runtime.precision == "bf16")))
    if bf16 == (runtime.precision == "bf16"):
        return runtime
    return with_precision(runtime, "bf16" if bf16 else "fp32", "as rank 0 measured")


def keep_precision(runtime: Runtime, trained: str | None, configured: str) -> Runtime:
    """A resumed run's runtime: with precision = "auto", the precision the run trained in so far
    (bf16 is timed anew in each process, and the rest of the run must be what an uninterrupted
    one would have done), where this machine runs it; a set precision stays as set."""
    if configured != "auto" or trained not in ("bf16", "fp32") or trained == runtime.precision:
        return runtime
    if trained == "bf16" and not bf16_supported(runtime.device):
        return runtime
    return with_precision(runtime, trained, "as the run trained so far")


def keep_threads(trained: int | None, configured: int) -> str | None:
    """A resumed CPU run's threads: as many as it trained with where train.threads = 0 (every
    core: the cores may differ now), since oneDNN splits its reductions by thread and another
    count changes the sums' last bits, and the run would no longer be the uninterrupted one's.
    A set train.threads stays as set. Returns the line saying what differs, or None."""
    current = torch.get_num_threads()
    if not trained or trained == current:
        return None
    if configured == 0:
        torch.set_num_threads(trained)
        return (
            f"resumed with {trained} threads, as the run trained (this machine's cores give "
            f"{current}): the result stays the uninterrupted run's; --set train.threads=N "
            "to choose"
        )
    return (
        f"train.threads = {configured}: the run trained with {trained} threads, so from here "
        "its sums differ from an uninterrupted run's in their last bits"
    )


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The torch device ``name`` stands for on this machine; a ConfigError naming ``option``
    (where the name came from: a config key or a command-line option) for one it cannot use."""
    what = f"{option} {name}" if option.startswith("--") else f"{option} = {name!r}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{what}: not a device (auto, cpu, cuda, cuda:1)") from None
    if device.type not in ("cpu", "cuda"):  # torch knows more, but tinycnn runs on these
        raise ConfigError(f"{what}: expected auto, cpu or cuda (cuda:N)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}: CUDA is not available on this machine")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"{what}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def make_runtime(
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool = True,
    threads: int = 0,
    deterministic: bool = False,
) -> Runtime:
    """Resolve the settings against this machine and apply the process-wide ones."""
    # Under torchrun: a plain "cuda" is this process's own GPU, and the cores are shared
    # between the processes on this machine.
    dev = distributed.local_device(resolve_device(device))
    per_process = max(1, usable_cores() // distributed.from_env().local_world)
    torch.set_num_threads(threads or per_process)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if dev.type == "cpu":
        reuse_freed_memory()
    if precision == "bf16" and not bf16_supported(dev):
        raise ConfigError(f"train.precision = 'bf16': {dev} has no fast bf16; use auto or fp32")
    runtime = Runtime(dev, None, channels_last, requested=precision)
    if precision != "auto":
        return with_precision(runtime, precision, "as configured")
    if not bf16_supported(dev):
        return replace(runtime, why=f"this {dev.type.upper()} has no fast bf16")
    if dev.type != "cpu":
        return with_precision(runtime, "bf16", "this machine has fast bf16")
    speedup = bf16_speedup()  # with the threads set above: those the run will have
    measured = f"bf16 convolutions measured {speedup:.2f}x as fast as fp32's"
    if speedup >= BF16_MIN_SPEEDUP:
        return with_precision(runtime, "bf16", f"this machine has fast bf16 ({measured})")
    return replace(runtime, why=f"{measured}; auto takes bf16 from {BF16_MIN_SPEEDUP}x")


# glibc's mallopt parameters (malloc.h) and their defaults; the variables by which a user sets them.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_GLIBC_MALLOC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")
_KEEP_FREE = 1 << 30  # bytes of free memory at the heap's top that stay in the process


def reuse_freed_memory(on: bool = True) -> bool:
    """Keep the memory of freed CPU tensors in the process for the next ones (glibc only).

    glibc serves every allocation of 32 MiB or more (and smaller ones once it has trimmed its
    heap) from fresh pages of the kernel, which faults and zeroes each 4 KiB page at first
    touch, and gives them back on free: a training step at batch 128 and 64x64 has several such
    tensors (128 channels at 32x32 is 32 MiB in bf16, 64 MiB in fp32), so every step paid for
    those faults again. With this, large blocks come from the heap and stay there, as with
    jemalloc or tcmalloc (bench/cpu_malloc.py measures the gain). The process keeps its peak
    memory until it exits.

    Returns whether the setting was made: not where the user has set glibc's malloc variables
    (MALLOC_MMAP_MAX_, MALLOC_TRIM_THRESHOLD_, MALLOC_MMAP_THRESHOLD_, or GLIBC_TUNABLES on
    malloc) or on another C library. ``on=False`` restores glibc's defaults.
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in _GLIBC_MALLOC_ENV):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = {_M_TRIM_THRESHOLD: _KEEP_FREE, _M_MMAP_MAX: 0} if on else _GLIBC_DEFAULTS
    return all(mallopt(param, value) == 1 for param, value in settings.items())


def describe_hardware(runtime: Runtime, processes: int = 1) -> str:
    """What a run's speed depends on, in one line: the chip, its vector unit, threads, the
    processes of a torchrun job, precision."""
    if runtime.device.type == "cuda":
        chip = torch.cuda.get_device_name(runtime.device)
    else:
        chip = _cpu_model()
        n = torch.get_num_threads()
        chip += f" ({torch.backends.cpu.get_cpu_capability()}, {n} thread{'s' * (n > 1)})"
    if processes > 1:
        chip += f" x {processes} processes"
    return f"{chip}, {runtime.precision}"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"

"""Which kernel each pass of a Conv3x3 layer runs, chosen by timing both on the machine at hand.

Conv3x3 (conv.py) can compute each of its three passes (forward, input gradient, weight
gradient) with oneDNN's convolution or as nine matmuls; which is faster depends on the shape,
the dtype and the CPU (AMX, AVX512-BF16, AVX2 rank them differently). As cudnn.benchmark does on
a GPU, the first call of a layer shape times both kernels of each pass once, on random tensors of
that shape, and keeps the faster. The choices are remembered per CPU model, torch version,
dtype and thread count in a JSON file under TINYCNN_CACHE (written atomically; two processes at
worst both time a shape), so later runs on the same machine take them without timing; a run's
checkpoints carry the choices it used, so a resume computes exactly as before, on any thread
count (KernelChoices.pin).

Only small maps are timed (at most MAX_TIMED_POSITIONS positions): on larger ones oneDNN's kernels
win on every machine measured (conv.py's docstring), and the static rules keep them. With
autotuning off (train.autotune = false) the static rules decide every shape.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from tinycnn.atomic import read_json_object, update_json
from tinycnn.errors import OutputError
from tinycnn.paths import KERNEL_CACHE

PASSES = ("forward", "input_grad", "weight_grad")
MAX_TIMED_POSITIONS = 16 * 16  # maps of at most 16x16 are timed; larger ones keep the rules
TIMED_BATCH = 128  # images per timing call: a training batch's worth of rows at most
# Timed rounds, after one warm-up call of each kernel: a round calls oneDNN's kernel, then the
# matmuls, so a burst of other work on the machine slows both alike; at least MIN_CALLS rounds
# and MIN_SECONDS in all (at most MAX_CALLS); each kernel's fastest call is kept, the call least
# disturbed. (Timed one kernel after the other, a training run beside the timing had left
# fastnet's width-64 layers with choices 1.5-2.3x slower than the other kernel.)
MIN_CALLS, MIN_SECONDS, MAX_CALLS = 5, 0.1, 50
MARGIN = 0.95  # the matmuls are chosen where they take under 95% of oneDNN's time


def shape_key(
    c_in: int,
    c_out: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    threads: int | None = None,
    channels_last: bool = True,
) -> str:
    """A layer shape's key: channels, map, dtype, the input's layout (channels_last, or
    "/nchw") and the threads it runs on (default: this process's), since one thread and two,
    or the two layouts, can rank the kernels differently."""
    threads = _threads() if threads is None else threads
    layout = "" if channels_last else "/nchw"
    dtype_name = str(dtype).removeprefix("torch.")
    return f"{c_in}x{c_out}@{height}x{width}:{dtype_name}{layout}:t{threads}"


# A traced forward reads it once, as a constant (no graph break, and no guard: a graph compiled
# before torch.set_num_threads changes keeps the choices of the count it was traced with).
@torch.compiler.assume_constant_result
def _threads() -> int:
    return torch.get_num_threads()


def _without_threads(key: str) -> str:
    """The key as checkpoints before the thread count recorded it."""
    return key.rsplit(":t", 1)[0] if key.count(":") == 2 else key


@dataclass(frozen=True)
class SavedChoices:
    """What a checkpoint says of its run's kernels: whether it timed them (else the static
    rules), the choices it computed with, and whether their keys name the input's layout."""

    enabled: bool
    choices: dict[str, dict[str, bool]]
    by_layout: bool

    @classmethod
    def from_payload(cls, payload: dict) -> SavedChoices:
        """A checkpoint's; one saved before autotuning ran by the static rules."""
        if "conv_kernels" not in payload:
            return STATIC_RULES
        autotune = payload.get("config", {}).get("train", {}).get("autotune", True)
        by_layout = payload.get("conv_kernels_by_layout", False)
        return cls(bool(autotune), payload["conv_kernels"], by_layout)


# Kernels by the static rules alone (a checkpoint from before autotuning, a model built here).
STATIC_RULES = SavedChoices(enabled=False, choices={}, by_layout=True)


class KernelChoices:
    """Per layer shape, whether each pass runs as nine matmuls (True) or on oneDNN (False).

    enabled: time the shapes not yet known; False: the static rules decide (the caller's).
    path: the machine's file of choices (None: keep them in memory only).
    """

    def __init__(self, path: Path | None = None, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled
        self.table: dict[str, dict[str, bool]] = {}
        self.pinned: dict[str, dict[str, bool]] = {}  # a resumed run's own choices
        self.pinned_by_layout = True
        self.timed_keys: set[str] = set()  # shapes timed since the last report
        self.timed_seconds = 0.0
        self.unsaved = False  # the file could not be written since the last report
        self._loaded = False

    def choose(
        self,
        key: str,
        passes: tuple[str, ...],
        measure: Callable[[str], tuple[float, float]],
    ) -> dict[str, bool] | None:
        """The choice for each of ``passes`` of a shape, timing (``measure(pass)``: oneDNN's and
        the matmuls' seconds) those not yet known; None when autotuning is off."""
        pinned = self._pinned(key)
        if not self.enabled or (pinned is not None and all(p in pinned for p in passes)):
            return pinned
        self._load()
        known = self.table.setdefault(key, {})
        missing = [p for p in passes if p not in known and p not in (pinned or {})]
        if missing:
            start = time.perf_counter()
            for name in missing:
                onednn, taps = measure(name)
                # Near-ties stay on oneDNN: a noisy timing cannot flip them from run to run.
                known[name] = taps < MARGIN * onednn
            self.timed_seconds += time.perf_counter() - start
            self.timed_keys.add(key)
            self._save(key)
        if pinned is not None:  # passes the resumed run had not met: kept from now on
            pinned.update({p: known[p] for p in passes if p not in pinned})
            return pinned
        return known

    def known(self, key: str) -> dict[str, bool] | None:
        """The choices already made for a shape (pinned, timed or read), without timing or
        reading anything: for code being traced by torch.compile."""
        pinned = self._pinned(key)
        if pinned is not None:
            return pinned
        return self.table.get(key) if self.enabled else None

    def _pinned(self, key: str) -> dict[str, bool] | None:
        """A resumed run's choice for the shape, whatever threads it ran on then or runs on
        now (and from checkpoints written before the thread count was part of the key): a
        resume computes as the run did."""
        key = _without_threads(key)
        if not self.pinned_by_layout:  # saved before the layout was keyed: one choice for both
            key = key.replace("/nchw", "")
        return self.pinned.get(key)

    def used(self) -> dict[str, dict[str, bool]]:
        """The choices this process computes with (made or read, for its thread count, and a
        resumed run's own), keyed by shape and dtype: for a checkpoint, which a resume pins on
        any thread count."""
        threads = f":t{_threads()}"
        mine = {_without_threads(k): v for k, v in self.table.items() if k.endswith(threads)}
        pinned = dict(self.pinned)
        if not self.pinned_by_layout:  # saved before the layout was keyed: each for both
            pinned.update({f"{key}/nchw": value for key, value in self.pinned.items()})
        return {**mine, **pinned}

    def pin(self, choices: dict[str, dict[str, bool]], by_layout: bool = True) -> None:
        """Take a run's saved choices as they are (a resume), whatever the file says now.

        by_layout: False for choices saved before the input's layout was part of the key
        (checkpoints without ``conv_kernels_by_layout``), which the run took for either layout.
        """
        self.pinned = {_without_threads(key): dict(value) for key, value in choices.items()}
        self.pinned_by_layout = by_layout

    def reset(self, enabled: bool) -> None:
        """A new run in this process: its setting, no pinned choices."""
        self.enabled, self.pinned, self.pinned_by_layout = enabled, {}, True
        self.timed_keys, self.timed_seconds, self.unsaved = set(), 0.0, False

    @contextlib.contextmanager
    def running(self, saved: SavedChoices) -> Iterator[None]:
        """Within: a loaded checkpoint's own setting and choices (its evaluations compute as
        the run's did; shapes it never met are timed or ruled as it would have); after: the
        ones before, so members of an ensemble each keep their own."""
        before = (self.enabled, self.pinned, self.pinned_by_layout)
        self.enabled = saved.enabled
        self.pin(saved.choices, saved.by_layout)
        try:
            yield
        finally:
            self.enabled, self.pinned, self.pinned_by_layout = before

    def take_report(self) -> str | None:
        """One line on the timing done since the last report, or None."""
        shapes = len(self.timed_keys)
        if not shapes:
            return None
        where = ""
        if self.path:
            where = (
                f" (not kept: {self.path} unwritable)"
                if self.unsaved
                else f" (kept in {self.path})"
            )
        line = (
            f"conv kernels: timed oneDNN against matmuls for {shapes} layer "
            f"shape{'s' * (shapes > 1)} in {self.timed_seconds:.1f} s{where}"
        )
        self.timed_keys, self.timed_seconds, self.unsaved = set(), 0.0, False
        return line

    def _load(self) -> None:
        if self._loaded or self.path is None:
            return
        self._loaded = True
        # None yet, or unreadable: timed again.
        for key, value in read_json_object(self.path).items():
            if isinstance(value, dict):
                known = {p: v for p, v in value.items() if p in PASSES and isinstance(v, bool)}
                self.table.setdefault(key, {}).update(known)

    def _save(self, key: str) -> None:
        """Add this shape's choices to the file, keeping what other processes wrote meanwhile."""
        if self.path is None:
            return

        def add(saved: dict) -> None:
            old = saved.get(key)  # another process's choices, or damage: replaced
            saved[key] = {**(old if isinstance(old, dict) else {}), **self.table[key]}

        try:
            update_json(self.path, add)
        except (OSError, OutputError):  # unwritable: timed again next time
            self.unsaved = True


def machine_file(root: Path = KERNEL_CACHE) -> Path:
    """The file of choices for this CPU model and torch version."""
    ident = f"{_cpu_identity()} {torch.backends.cpu.get_cpu_capability()} torch {torch.__version__}"
    name = "".join(c if c.isalnum() else "-" for c in ident).strip("-")
    return root / f"{name[:150]}.json"


def _cpu_identity() -> str:
    """The CPU's model name, family and model number (the name alone can be generic)."""
    fields = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                name = name.strip()
                if name in ("model name", "cpu family", "model") and name not in fields:
                    fields[name] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        pass
    if not fields:
        return os.uname().machine
    return f"{fields.get('model name', '')} family {fields.get('cpu family', '')} model " + (
        fields.get("model", "")
    )


def measure_pass(
    name: str,
    c_in: int,
    c_out: int,
    height: int,
    width: int,
    dtype: torch.dtype,
    batch: int,
    kernels: dict[str, tuple[Callable, Callable]],
    channels_last: bool = True,
) -> tuple[float, float]:
    """Seconds of one pass of this shape, (oneDNN's, the matmuls'): each the fastest of its
    timed calls after a warm-up, on random tensors of batch images in the given layout,
    gradients off. The layers time at TIMED_BATCH whatever batch meets a shape first (a
    one-image prediction ranks the kernels otherwise than a training batch, and the choice is
    kept for both).

    kernels: pass name -> (oneDNN's, the matmuls'), each called as f(x, weight, grad_out).
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    # A generator of its own: the run's random streams (dropout) must not see the timing.
    generator = torch.Generator().manual_seed(0)

    def noise(*shape: int) -> torch.Tensor:
        values = torch.randn(*shape, generator=generator).to(dtype)
        return values.contiguous(memory_format=layout)

    x, weight = noise(batch, c_in, height, width), noise(c_out, c_in, 3, 3)
    grad_out = noise(batch, c_out, height, width)
    pair = kernels[name]
    times: tuple[list[float], list[float]] = ([], [])
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        for kernel in pair:
            kernel(x, weight, grad_out)  # warm-up: allocations, oneDNN's primitive
        rounds = 0
        while rounds < MAX_CALLS and (rounds < MIN_CALLS or sum(map(sum, times)) < MIN_SECONDS):
            for kernel, spent in zip(pair, times, strict=True):  # interleaved: see MIN_CALLS
                start = time.perf_counter()
                kernel(x, weight, grad_out)
                spent.append(time.perf_counter() - start)
            rounds += 1
    return min(times[0]), min(times[1])

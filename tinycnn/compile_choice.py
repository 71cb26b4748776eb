"""train.compile = "auto": the training step compiled at the input sides where that is measured
faster on the machine at hand, eager at the others.

torch.compile pays on some machines and loses on others: on a 2-core Zen 5 EPYC (bf16) a
compiled paper8 step ran at 0.72x and fastnet's at 64x64 at 0.83x of eager (results/README.md).
So "auto" times, before the first step, the model's training pass (forward, loss and backward on
random images of the run's batch, in its precision) eager and compiled at each input side the
schedule trains at, and compiles only where that takes under MARGIN of eager's time. The timing
leaves the run as it was: the random streams are forked, the batch-norm statistics put back and
the gradients dropped. The choices are remembered per machine (CPU model, or GPU), torch
version, precision, threads, model and batch, in a JSON file under TINYCNN_CACHE, so later runs
take them without timing; a run's checkpoints carry the choices it used, so a resume steps as
before (``choose(pinned=...)``). Under torchrun every rank takes rank 0's choices (and times
with it). A model that fails to compile is trained eager, and the line says why.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinycnn.atomic import read_json_object, update_json
from tinycnn.data.augment import resize_views
from tinycnn.distributed import broadcast_object
from tinycnn.errors import OutputError
from tinycnn.models.conv import CHOICES
from tinycnn.models.kernel_choice import machine_file
from tinycnn.paths import COMPILE_CACHE
from tinycnn.runtime import Runtime

MARGIN = 0.95  # compiled where it takes under 95% of eager's time: near-ties stay eager
ROUNDS = 3  # timed passes each way, interleaved, after one warm-up (compiling) pass each


class SizeDispatch(nn.Module):
    """What a training step calls under train.compile = "auto": the compiled model at the input
    sides chosen for it, the model itself at the others."""

    def __init__(self, model: nn.Module, compiled: Callable, sides: set[int]) -> None:
        super().__init__()
        self.model = model
        self.compiled = compiled
        self.sides = set(sides)

    def forward(self, x: Tensor) -> Tensor:
        return (self.compiled if x.shape[-1] in self.sides else self.model)(x)


def choose(
    model: nn.Module,
    compiled: Callable,
    sides: list[int],
    batch: int,
    runtime: Runtime,
    *,
    setting: str = "",
    pinned: dict[int, bool] | None = None,
    path: Path | None = None,
    agree: Callable[[int], int] = int,
    main: bool = True,
) -> tuple[dict[int, bool], str | None]:
    """{side: compile it} for each of ``sides``, and a line on the timing done (None if none).

    compiled: torch.compile(model); setting: the run's other settings that change a step's
    speed (part of the key); pinned: a resumed run's own choices, taken as they are; path: the
    machine's file of choices (None: the default one). Under torchrun, ``agree`` gives rank 0's
    value to every rank (distributed.broadcast_int) and ``main`` says whether this is rank 0:
    every rank takes rank 0's choice, and where it must be timed every rank times it, so that
    collective calls in the model's forward (synchronised batch norm) are matched.
    """
    pinned = pinned or {}
    path = path or machine_file(COMPILE_CACHE)
    saved = read_json_object(path)  # none yet, or unreadable: timed again
    choices, timed, spent = {}, [], 0.0
    for side in sides:
        key = choice_key(model, batch, side, runtime, setting)
        known = pinned.get(side, saved.get(key))
        code = agree(int(known) if isinstance(known, bool) else -1)  # rank 0's, everywhere
        if code >= 0:
            choices[side] = bool(code)
            continue
        start = time.perf_counter()
        try:
            eager_s, compiled_s = measure(model, compiled, side, batch, runtime)
            faster, note = compiled_s < MARGIN * eager_s, f"{eager_s / compiled_s:.2f}x"
        except Exception as exc:  # no compiler, an unsupported operator...: eager, and why
            faster, note = False, f"compiling failed ({type(exc).__name__}: {_first_line(exc)})"
        spent += time.perf_counter() - start
        choices[side] = bool(agree(int(faster)))
        timed.append(f"{side}x{side} {note}")
        if main:
            _save(path, key, choices[side])
    line = None
    if timed and main:
        chosen = [f"{s}x{s}" for s, c in sorted(choices.items()) if c]
        line = (
            f"train.compile = auto: timed compiled training passes against eager ones in "
            f"{spent:.0f} s (compiled's speed-up: {', '.join(timed)}); compiled at "
            f"{', '.join(chosen) or 'no side'} (kept in {path})"
        )
    return choices, line


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


def choice_key(model: nn.Module, batch: int, side: int, runtime: Runtime, setting: str = "") -> str:
    """What a choice depends on besides the machine (its file): the device, torch, precision,
    threads, channels_last, the run's other speed settings, the model (its name and options),
    the batch and the side."""
    device = runtime.device
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    options = json.dumps(getattr(model, "tinycnn_options", {}), sort_keys=True, default=str)
    name = getattr(model, "tinycnn_name", type(model).__name__)
    layout = "channels_last" if runtime.channels_last else "nchw"
    return (
        f"{where} torch {torch.__version__} {runtime.precision} {layout} "
        f"t{torch.get_num_threads()} {setting + ' ' if setting else ''}{name} {options} "
        f"b{batch} {side}x{side}"
    )


def measure(
    model: nn.Module, compiled: Callable, side: int, batch: int, runtime: Runtime
) -> tuple[float, float]:
    """Seconds of one training pass at this side, (eager, compiled): each the fastest of ROUNDS
    interleaved passes after a warm-up one (the compiled one compiles), on random images.

    The run is left as it was: random streams forked, batch-norm statistics restored,
    gradients dropped (a step sets them anew).
    """
    device = runtime.device
    generator = torch.Generator().manual_seed(0)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, side, side, generator=generator)
    x = x.to(device).contiguous(memory_format=layout)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}

    def one_pass(call: Callable) -> float:
        _sync(device)
        start = time.perf_counter()
        with runtime.autocast():
            logits = call(x)
        labels = torch.arange(batch, device=device) % logits.shape[1]
        F.cross_entropy(logits.float(), labels).backward()
        _sync(device)
        return time.perf_counter() - start

    times: tuple[list[float], list[float]] = ([], [])
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            one_pass(model), one_pass(compiled)  # warm-up; the compiled one compiles
            for _ in range(ROUNDS):
                for call, spent in zip((model, compiled), times, strict=True):
                    spent.append(one_pass(call))
    finally:
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
        model.zero_grad(set_to_none=True)
    return min(times[0]), min(times[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _save(path: Path, key: str, value: bool) -> None:
    """Add one choice to the file, keeping what other processes wrote meanwhile."""
    with contextlib.suppress(OSError, OutputError):  # unwritable: timed again next time
        update_json(path, lambda saved: saved.update({key: value}))


def agree_kernels(
    model: nn.Module, sides: list[int], eval_size: int, batch: int, runtime: Runtime
) -> None:
    """Under torchrun, every rank computes with rank 0's Conv3x3 kernels: each rank meets the
    run's layer shapes now (a training pass at each side the schedule trains at, an evaluation
    pass at the evaluation side, on a copy of the model and zero images), then takes rank 0's
    choices. Ranks that chose apart (timing noise, another machine's file) would compute
    otherwise than a resume, which pins rank 0's choices on every rank."""
    model = copy.deepcopy(model)
    views = torch.zeros(batch, 3, eval_size, eval_size, device=runtime.device)
    views = views.contiguous(memory_format=torch.channels_last)
    cuda = [runtime.device] if runtime.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # dropout's draws: the run's streams untouched
        for side in sorted(set(sides)):
            with runtime.autocast():
                logits = model.train()(resize_views(views, side))
            logits.float().sum().backward()
        with torch.no_grad(), runtime.autocast():
            model.eval()(views)
    CHOICES.pin(broadcast_object(CHOICES.used()))


def compiled_per_side(model: nn.Module) -> nn.Module:
    # One static graph per input side (progressive resizing trains at two or three): traced with
    # dynamic sides, fastnet's adaptive pooling failed in inductor's shape algebra at the second.
    return torch.compile(model, dynamic=False)

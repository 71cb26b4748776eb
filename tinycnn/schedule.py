"""A run's schedule: iteration -> learning rate, model input side, training FLOPs so far.

One frozen value built once from the config and the model's FLOPs per image at each side
(Schedule.build), and rebuilt once when train.fit_to_time fixes the run's length
(fit_total_to_time, then Schedule.with_total). Everything here is pure arithmetic on it: the
training loop, the banner, the time to go and the checkpoints all read the same numbers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from tinycnn.compute import PFLOP
from tinycnn.config import RunConfig, ScheduleConfig
from tinycnn.data.augment import AugmentConfig
from tinycnn.errors import ConfigError


@dataclass(frozen=True)
class Schedule:
    """The whole run's plan, iteration by iteration (iterations are 0-based steps).

    total: the run's iterations: train.epochs' worth, or fewer where train.max_pflop runs out
      first, or the length fitted to train.max_minutes.
    flops_by_size: one training step's FLOPs per image (forward + backward, compute.py) at each
      model input side the run uses; empty when not counted.
    """

    total: int
    iters_per_epoch: int
    batch_size: int
    lr: float  # the peak learning rate, per batch of batch_size
    shape: ScheduleConfig
    augment: AugmentConfig  # its sizes and size_until: progressive resizing
    eval_size: int  # the crop's side: the model's input without resizing
    flops_by_size: Mapping[int, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        cfg: RunConfig,
        iters_per_epoch: int,
        eval_size: int,
        flops_by_size: Mapping[int, float],
        total: int | None = None,
    ) -> Schedule:
        """The schedule of cfg's run; ``total`` given (a fitted length): that many iterations,
        else train.epochs of iterations cut to the most that fit train.max_pflop."""
        epochs = iters_per_epoch * cfg.train.epochs
        schedule = cls(
            total=epochs if total is None else total,
            iters_per_epoch=iters_per_epoch,
            batch_size=cfg.train.batch_size,
            lr=cfg.optim.lr,
            shape=cfg.schedule,
            augment=cfg.augment,
            eval_size=eval_size,
            flops_by_size=dict(flops_by_size),
        )
        budget = cfg.train.max_pflop * PFLOP
        if total is None and budget and flops_by_size:
            # The most iterations whose schedule (sizes included) fits the budget (at least 1).
            fits = largest_fitting(
                1, epochs, lambda n: schedule.with_total(n).flops_until(n) <= budget
            )
            schedule = schedule.with_total(fits)
        if total is None:  # a fitted length (train.max_minutes) is the run's own, kept
            schedule.check_cycles()
        return schedule

    def check_cycles(self) -> None:
        """ConfigError for a cyclic schedule of more cycles than iterations after its warm-up
        (cycles of no iteration: snapshots that repeat others, or none)."""
        if self.shape.name != "cyclic":
            return
        warmup = warmup_iterations(self.shape, self.iters_per_epoch, self.total)
        if self.shape.cycles > self.total - warmup:
            raise ConfigError(
                f"schedule.cycles = {self.shape.cycles}: more cycles than the run's "
                f"{self.total - warmup} iterations after its warm-up; use at most "
                f"{max(1, self.total - warmup)}, or train longer"
            )

    def with_total(self, total: int) -> Schedule:
        """The same schedule stretched or cut to ``total`` iterations."""
        return replace(self, total=total)

    def lr_at(self, iteration: int) -> float:
        return lr_at(iteration, self.iters_per_epoch, self.total, self.lr, self.shape)

    def cycle_ends(self) -> list[int]:
        return cycle_ends(self.iters_per_epoch, self.total, self.shape)

    def phases(self) -> list[tuple[int, int]]:
        """(iterations, model input side) of each progressive-resizing phase, in order; one
        phase at the crop's side without resizing."""
        return self._phases

    @functools.cached_property
    def _phases(self) -> list[tuple[int, int]]:
        # Once per value (with_total makes a new one): every step asks for its input side.
        augment = self.augment
        if not augment.sizes:
            return [(self.total, self.eval_size)]
        ends = self.cycle_ends() if augment.sizes_per_cycle else [self.total]
        return size_phases(augment.sizes, augment.size_until, ends)

    def input_size_at(self, iteration: int) -> int:
        """The model's input side at this iteration (by progressive resizing, else the crop's);
        past the end, the last phase's."""
        done = 0
        phases = self.phases()
        for steps, size in phases:
            done += steps
            if iteration < done:
                return size
        return phases[-1][1]

    def resize_at(self, iteration: int) -> int | None:
        """The side the crop is resized to at this iteration; None when it is the crop's own."""
        size = self.input_size_at(iteration)
        return None if size == self.eval_size else size

    def phase_sum(self, iteration: int, per_step: Mapping[int, float]) -> float:
        """The sum of ``per_step[side]`` (a step's FLOPs, seconds...) over the first
        ``iteration`` steps, each at its resizing phase's side."""
        result, done = 0.0, 0
        for steps, size in self.phases():
            result += min(steps, max(iteration - done, 0)) * per_step[size]
            done += steps
        return result

    def flops_until(self, iteration: int) -> float:
        """Training FLOPs of the first ``iteration`` steps: each step's batch at its side (0 when
        the FLOPs are not counted)."""
        if not self.flops_by_size:
            return 0.0
        batch = self.batch_size
        return self.phase_sum(iteration, {k: batch * v for k, v in self.flops_by_size.items()})

    @property
    def flops_per_image(self) -> float:
        """One training step's FLOPs per image at the final input side (0 if not counted)."""
        return self.flops_by_size.get(self.input_size_at(self.total - 1), 0.0)

    def steps_seconds(self, done: int, step_seconds: Mapping[int, float]) -> float:
        """Seconds of the steps after the first ``done``, a step at side n taking
        ``step_seconds[n]``."""
        return self.phase_sum(self.total, step_seconds) - self.phase_sum(done, step_seconds)


def size_phases(
    sizes: list[int], size_until: list[float], ends: list[int]
) -> list[tuple[int, int]]:
    """(iterations, input side) of each progressive-resizing phase, in order.

    The sizes run once in each span between ``ends`` (the iterations at which they start again,
    the last being the run's total: a cyclic schedule's cycle ends, else the total alone); size
    k runs from round(size_until[k-1] * span) on within a span.
    """
    result, start = [], 0
    for end in ends:
        span = end - start
        bounds = [0, *(round(u * span) for u in size_until), span]
        pairs = zip(bounds[:-1], bounds[1:], sizes, strict=True)
        result += [(stop - begin, size) for begin, stop, size in pairs]
        start = end
    return result


def lr_at(
    iteration: int, iters_per_epoch: int, total_iters: int, base_lr: float, cfg: ScheduleConfig
) -> float:
    """Learning rate for one iteration (0-based) of a run of total_iters iterations."""
    warmup = warmup_iterations(cfg, iters_per_epoch, total_iters)
    if iteration < warmup:
        return base_lr * (iteration + 1) / warmup
    if cfg.name == "constant":
        return base_lr
    if cfg.name == "step":
        step = max(1, round(cfg.step_epochs * iters_per_epoch))
        return base_lr * cfg.gamma ** (iteration // step)
    floor = base_lr * cfg.final_lr_fraction
    if cfg.name == "cyclic":
        start = warmup
        for end in cycle_ends(iters_per_epoch, total_iters, cfg):  # each cycle >= 1 iteration
            if iteration < end:
                break
            start = end
        else:  # past the last cycle's end: its floor, as the other shapes
            return floor
        progress = (iteration - start) / (end - start)
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    progress = min(1.0, (iteration - warmup) / max(1, total_iters - warmup))
    if cfg.name == "cosine":
        return floor + (base_lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (base_lr - floor) * (1 - progress)  # onecycle: warm-up, then linear to floor


def warmup_iterations(cfg: ScheduleConfig, iters_per_epoch: int, total_iters: int) -> int:
    """The warm-up's iterations: schedule.warmup_epochs' worth, or half the run where a budget
    (train.max_pflop, train.max_minutes) cut the run inside it: the rate would otherwise end
    partway up its ramp instead of decaying where the budget ends."""
    warmup = round(cfg.warmup_epochs * iters_per_epoch)
    return warmup if warmup < total_iters else total_iters // 2


def cycle_ends(iters_per_epoch: int, total_iters: int, cfg: ScheduleConfig) -> list[int]:
    """Iteration counts at which a cyclic schedule's cycles end (the last is total_iters).

    The iterations after the warm-up are split into cfg.cycles cycles as evenly as whole
    iterations allow; a schedule that is not cyclic is one cycle. Snapshots are taken once an
    end's iteration is done.
    """
    warmup = warmup_iterations(cfg, iters_per_epoch, total_iters)
    cycles = cfg.cycles if cfg.name == "cyclic" else 1
    return [warmup + round((k + 1) * (total_iters - warmup) / cycles) for k in range(cycles)]


def largest_fitting(low: int, high: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [low, high] with fits(n), for a fits that holds up to some n and not
    after (a cost that rises with n, under a budget); low when none fits."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def fit_total_to_time(
    schedule: Schedule,
    done: int,
    step_seconds: Mapping[int, float],
    seconds_left: float,
    eval_images: int,
    eval_seconds: float | None = None,
) -> int:
    """The most iterations (at least done + 1, at most the schedule's own total) whose steps
    after the first ``done`` and evaluations take ``seconds_left``, a step at side n taking
    ``step_seconds[n]``.

    eval_seconds: one evaluation's measured time (its splits, checkpoints and logs), where one
    has run; else eval_images (the images of one evaluation) are counted as a third of a
    training step per image, at the final side.
    """
    per_epoch, batch = schedule.iters_per_epoch, schedule.batch_size

    def seconds(total: int) -> float:
        fitted = schedule.with_total(total)
        steps = fitted.steps_seconds(done, step_seconds)
        size = fitted.input_size_at(total - 1)
        per_evaluation = eval_seconds or eval_images * step_seconds[size] / batch / 3
        return steps + evaluations_left(done, total, per_epoch) * per_evaluation

    return largest_fitting(done + 1, schedule.total, lambda total: seconds(total) <= seconds_left)


def evaluations_left(done: int, total: int, per_epoch: int) -> int:
    """Evaluations still to run once ``done`` steps of ``total`` are taken: at each epoch end
    from the current one on (one just reached is still to run) and at a mid-epoch end."""
    first = max(1, -(-done // per_epoch))  # the first epoch end at or after done
    return max(0, total // per_epoch - first + 1) + bool(total % per_epoch)


def step_seconds_by_size(
    measured: Mapping[int, float], probe: Mapping[int, float]
) -> dict[int, float]:
    """A training step's seconds at each probed side, from the one measured side's real steps.

    A step is its forward and backward pass plus work whose cost hardly depends on the side
    (augmenting the full-size batch, the optimiser, the bookkeeping), so the probe's difference
    between two sides is added to the measured step's time (a ratio would scale that fixed part
    too, and overstate the larger sides' time).
    """
    (size, step), floor = next(iter(measured.items())), 1e-3
    return {other: max(step + probe[other] - probe[size], floor * step) for other in probe}

"""A run's wall clock: the time budget (train.max_minutes), the time to go, and the schedule's
length fitted to the budget once the first steps are timed (train.fit_to_time)."""

from __future__ import annotations

import copy
import time

import torch

from tinycnn import distributed
from tinycnn.data.augment import resize_views
from tinycnn.schedule import (
    Schedule,
    evaluations_left,
    fit_total_to_time,
    step_seconds_by_size,
)
from tinycnn.session import Session


class Budget:
    """train.max_minutes as a wall-clock limit that leaves time for the closing evaluation.

    The closing evaluation's cost is the last measured one, or before any, an estimate from the
    training rate: a forward pass costs about a third of a training step per image. The rate
    leaves out the run's first step (allocation, kernel choices: often many times a step).
    """

    def __init__(
        self, minutes: float, origin: float, iteration: int, batch_size: int, eval_images: int
    ) -> None:
        self.seconds = minutes * 60
        self.origin = origin  # perf_counter() at which the run's elapsed time was 0
        self.batch_size = batch_size
        self.eval_images = eval_images  # the images of one evaluation
        self.eval_seconds: float | None = None
        self.step_seconds: dict[int, float] | None = None  # a step's seconds by side (the fit)
        self._eval_started = 0.0
        self._eval_total = 0.0  # seconds spent in evaluations so far
        self._step_origin = (time.perf_counter(), iteration)
        self._first = iteration  # the step after it starts the rate's clock (stepped)

    def elapsed(self) -> float:
        return time.perf_counter() - self.origin

    def evaluating(self) -> None:
        self._eval_started = time.perf_counter()

    def evaluated(self, iteration: int) -> None:
        self.eval_seconds = time.perf_counter() - self._eval_started
        self._eval_total += self.eval_seconds
        self._step_origin = (time.perf_counter(), iteration)

    def stepped(self, iteration: int) -> None:
        """Call after each step: the first one after the start is not timed."""
        if iteration == self._first + 1 and self._step_origin[1] == self._first:
            self._step_origin = (time.perf_counter(), iteration)

    def training_clock(self) -> float:
        """Seconds on a clock that stands still during evaluations: training steps' time."""
        return time.perf_counter() - self._eval_total

    def _step_seconds(self, iteration: int) -> float:
        """Seconds per training step since the last evaluation (0 before the first step)."""
        since, start = self._step_origin
        steps = iteration - start
        return (time.perf_counter() - since) / steps if steps else 0.0

    def _eval_estimate(self, iteration: int) -> float:
        if self.eval_seconds is not None:
            return self.eval_seconds
        per_image = self._step_seconds(iteration) / self.batch_size
        return self.eval_images * per_image / 2.5  # a margin over the third

    def remaining(self, schedule: Schedule, iteration: int, seconds_per_iteration: float) -> str:
        """The whole run's time to go (steps and evaluations), as H:MM:SS.

        Steps to come are timed by their FLOPs at the current rate (with progressive resizing
        a later step at a larger size takes longer than one now), or where the time fit has
        timed each side (step_seconds), by those times scaled to the current rate.
        """
        steps = (schedule.total - iteration) * seconds_per_iteration
        size = schedule.input_size_at(max(iteration - 1, 0))
        step_flops = schedule.flops_by_size.get(size, 0.0)
        if self.step_seconds and size in self.step_seconds:  # each side's time, from the fit
            to_come = schedule.steps_seconds(iteration, self.step_seconds)
            steps = to_come * seconds_per_iteration / self.step_seconds[size]
        elif step_flops:
            flops_left = schedule.flops_until(schedule.total) - schedule.flops_until(iteration)
            steps = flops_left / (step_flops * schedule.batch_size) * seconds_per_iteration
        evaluations = evaluations_left(iteration, schedule.total, schedule.iters_per_epoch)
        left = steps + evaluations * (self.eval_seconds or 0.0)
        if self.seconds:
            left = min(left, max(self.seconds - self.elapsed(), 0.0))
        if left >= 86400:
            return f"{left / 3600:.0f}h"
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def exhausted(self, iteration: int) -> bool:
        if not self.seconds:
            return False
        # Room for the next step and the closing evaluation, or stop now.
        spent = self.elapsed() + self._step_seconds(iteration) + self._eval_estimate(iteration)
        return spent > self.seconds


class TimeFit:
    """train.fit_to_time: once the first steps are timed, fix the schedule's length so that the
    steps and the evaluations end inside train.max_minutes.

    With progressive resizing the sides to come run at other FLOP rates than the first (small
    maps use the cores less well): a short probe on a copy of the model times each side
    (probe_step_seconds), so that the fit neither overruns nor leaves the budget part unused.

    The fitted length is saved with every checkpoint: a resumed run keeps the same schedule.
    """

    WARM_UP = 2  # steps not timed (allocation, first-call kernel selection)
    TIMED = 20  # steps timed to measure the training FLOP rate
    MARGIN = 0.95  # of the time left: room for noise and the checkpoints

    def __init__(self, first: int, budget: Budget, progress: bool) -> None:
        self.first = first  # the iteration the run (re)started at
        self.budget, self.progress = budget, progress
        self.start: tuple[float, float] | None = None  # (time, flops_done) after warm-up
        self.fitted = False

    def measure(self, s: Session) -> bool:
        """Call after each step; True once the schedule is fitted (Session.fit_schedule)."""
        if self.fitted:
            return True
        done = s.iteration - self.first
        if done in (self.WARM_UP, self.WARM_UP + self.TIMED) and s.runtime.device.type == "cuda":
            torch.cuda.synchronize(s.runtime.device)  # twice a run: time the work, not queueing
        # The steps' own time: an evaluation between them (epochs of under 22 steps) is not a step.
        if done == self.WARM_UP:
            self.start = (self.budget.training_clock(), s.flops_done)
        if done < self.WARM_UP + self.TIMED or self.start is None:
            return False
        seconds = self.budget.training_clock() - self.start[0]
        rate = (s.flops_done - self.start[1]) / max(seconds, 1e-9)  # training FLOP/s
        per_image = s.schedule.flops_by_size
        measured = s.schedule.input_size_at(s.iteration - 1)
        step_seconds = {measured: s.cfg.train.batch_size * per_image[measured] / rate}
        # The sizes still to come (progressive resizing) run at other rates: a probe times them.
        others = {size for _, size in s.schedule.phases()}
        if others - {measured}:
            step_seconds = step_seconds_by_size(step_seconds, probe_step_seconds(s, others))
        left = (self.budget.seconds - self.budget.elapsed()) * self.MARGIN
        total = fit_total_to_time(  # evaluations as the budget counts them (EMA's included)
            s.schedule,
            s.iteration,
            step_seconds,
            left,
            self.budget.eval_images,
            self.budget.eval_seconds,
        )
        # Every rank takes rank 0's length: one schedule for the whole job.
        s.fit_schedule(distributed.broadcast_int(total))
        self.budget.step_seconds = step_seconds
        self.fitted = True
        if self.progress:
            rates = ", ".join(
                f"{s.cfg.train.batch_size * per_image[size] / sec / 1e9:.0f} at {size}"
                for size, sec in sorted(step_seconds.items())
            )
            print(
                f"\nschedule fitted to train.max_minutes = {s.cfg.train.max_minutes:g}: "
                f"{s.fitted_total:,} iterations ({s.fitted_total / s.iters_per_epoch:.2f} epochs) "
                f"at the measured training GFLOP/s {rates}",
                flush=True,
            )
        return True


def probe_step_seconds(s: Session, sizes: set[int], repeats: int = 2) -> dict[int, float]:
    """Seconds of one forward and backward pass of this rank's batch at each input side (the
    resize to it included), the fastest of ``repeats`` after a warm-up pass.

    The passes run on a copy of the model, on zero images: the run's weights, batch-norm
    statistics and gradients are untouched (and each training step re-seeds the random streams),
    so a fitted run trains exactly as it would have without the probe.
    """
    rt, device = s.runtime, s.runtime.device
    model = copy.deepcopy(s.model).train()
    rows = s.cfg.train.batch_size // s.dist.world
    views = torch.zeros(rows, 3, s.eval_size, s.eval_size, device=device)
    views = views.contiguous(memory_format=torch.channels_last)  # as augment_batch makes them
    seconds = {}
    for size in sorted(sizes):
        times = []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with rt.autocast():
                logits = model(resize_views(views, size))
            logits.float().sum().backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        seconds[size] = min(times[1:])
    return seconds

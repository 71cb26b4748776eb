"""train(): the training loop, its run folder, snapshots, interruption and resume.

The whole training split lives in memory as one uint8 tensor; a batch is an index slice,
augmented by batched tensor ops on the model's device; no DataLoader workers take cores from the
model. All randomness is derived from (train.seed, iteration), so a resumed run repeats exactly
what the uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tinycnn import distributed
from tinycnn.atomic import remove_stale_temporaries, write_text
from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import RunConfig, config_from_dict, to_toml
from tinycnn.data.augment import augment_batch, resize_views
from tinycnn.data.mixing import mix_batch
from tinycnn.errors import ConfigError, Interrupted, TrainingDivergedError
from tinycnn.optim import set_lr
from tinycnn.run_folder import read_metrics, read_resolved_config, read_steps, run_lock
from tinycnn.run_plan import plan_run
from tinycnn.runtime import agree_precision
from tinycnn.schedule import fit_total_to_time, step_seconds_by_size
from tinycnn.session import Session, load_session, pause_point, update_ema

__all__ = ["RunResult", "TrainingDivergedError", "read_metrics", "read_steps", "train"]


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    metrics: list[dict] = field(default_factory=list)
    stopped: str = "finished"  # finished | interrupted | time budget
    iteration: int = 0
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)


class _StopRequest:
    """Set by SIGINT/SIGTERM (or a test hook); the loop checks it between iterations."""

    def __init__(self, at_iteration: int | None = None) -> None:
        self.reason: str | None = None
        self.signal: int | None = None
        self.at_iteration = at_iteration

    def __call__(self, signum: int, _frame) -> None:
        if self.reason == "interrupted":  # a second Ctrl-C: stop now, without the checkpoint
            raise Interrupted(signum, again=True)
        self.reason = "interrupted"
        self.signal = signum


@contextmanager
def _catch_signals(stop: _StopRequest):
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, stop)
    except ValueError:  # not the main thread: signals stay with their owner
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def train(
    cfg: RunConfig | None,
    out: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
    stop_at_iteration: int | None = None,
    data: str | Path | None = None,
) -> RunResult:
    """Train cfg's model on cfg.data.cache into the run folder ``out``; returns a RunResult.

    resume: continue the run in ``out`` from its last checkpoint (cfg is then read from there);
      a run folder with no checkpoint yet starts afresh from its config.toml.
    data: with resume, the run's cache where it is now (it moved): the same data is checked,
      and the run's config.toml then names it.
    init_from: start from a checkpoint's weights with this config's (new) hyperparameters.
    stop_at_iteration: behave as if interrupted once this many iterations are done in all
      (`tinycnn train --stop-at`): a checkpoint to resume from, RunResult.signal None.
    One process at a time may use a run folder: a second gets a RunFolderError.
    """
    started = time.perf_counter()  # train.max_minutes counts from here
    out = Path(out)
    if resume:
        _resumed_config(out, data)  # a clear error before the lock makes a folder
    else:
        # Paths a run depends on are stored absolute: --resume, evaluate... from anywhere.
        if cfg.data.cache:
            cache = Path(cfg.data.cache).expanduser().resolve()
            cfg = replace(cfg, data=replace(cfg.data, cache=str(cache)))
        # The weights a run starts from are part of its config.
        init_from = init_from or cfg.train.init_from or None
        if init_from is not None:
            init_from = Path(init_from).expanduser().resolve()
            cfg = replace(cfg, train=replace(cfg.train, init_from=str(init_from)))
        # Every check before the run folder is made: a failed start leaves nothing behind.
        plan = plan_run(cfg, init_from)
    # Under torchrun, rank 0 holds the run folder's lock and writes it; the others read.
    main = distributed.from_env().main
    with run_lock(out) if main else contextlib.nullcontext():
        if resume:
            cfg = _resumed_config(out, data)
            # A run with no checkpoint yet starts afresh: from its init checkpoint, if any.
            resume = (out / "checkpoints" / "last.pt").is_file()
            init_from = None if resume else cfg.train.init_from or None
            plan = plan_run(cfg, init_from)
        elif main:
            _new_run_dir(out, plan.cfg, plan.flops_by_size)
            pause_point("started", 0)
        if main:  # half-written files of a killed run (kill -9 runs no cleanup): 26 MB in 8 kills
            for folder in (out, out / "checkpoints"):
                remove_stale_temporaries(folder)
        d = distributed.init(plan.runtime.device)
        plan = plan.with_runtime(agree_precision(plan.runtime))
        distributed.barrier()  # the run folder is ready before any rank reads it
        progress = progress and d.main
        session = load_session(plan, out, resume=resume, dist=d)
        cfg = plan.cfg
        if data is not None and main:  # the moved cache holds the run's data: remember where
            _write_config(out, cfg, plan.flops_by_size)
        budget = cfg.train.max_minutes * 60
        if resume and budget and session.elapsed_before >= budget:
            raise ConfigError(
                f"{out}: the run has used its whole train.max_minutes = {cfg.train.max_minutes:g} "
                f"budget; to train on, raise max_minutes in {out / 'config.toml'} and --resume"
            )
        if progress:
            print(banner(session), flush=True)
        stop = _StopRequest(stop_at_iteration)
        with _catch_signals(stop):
            return _loop(session, stop, progress, started)


def banner(s: Session) -> str:
    """One line that says what is about to run, where, how fast a path, and for how long."""
    cfg, rt = s.cfg, s.runtime
    params = sum(p.numel() for p in s.model.parameters())
    why = f"{'bf16 autocast' if rt.precision == 'bf16' else 'fp32'}: {rt.why}"
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' * (n > 1)}" if rt.device.type == "cpu" else ""
    layout = ", channels_last" if rt.channels_last else ""
    where = "resuming at iteration " + f"{s.iteration:,} " if s.iteration else ""
    gflop = f"{s.schedule.flops_per_image / 1e9:.2f} GFLOP per training image"
    if cfg.augment.sizes:  # progressive resizing: each phase's cost
        per_image = s.schedule.flops_by_size
        costs = (f"{per_image[side] / 1e9:.2f} at {side}" for side in cfg.augment.sizes)
        sides = ", ".join(costs)
        gflop = f"GFLOP per training image {sides}"
    budget = ""
    if s.schedule.total < s.iters_per_epoch * cfg.train.epochs:
        budget = f" (train.max_pflop = {cfg.train.max_pflop:g} ends the schedule there)"
    if cfg.train.fit_to_time and s.fitted_total is None:
        budget += (
            f" at most; the length is fitted to train.max_minutes after {_TimeFit.TIMED} steps"
        )
    return (
        f"train {cfg.model.name} ({params:,} parameters, {gflop}) "
        f"on {rt.device}{threads}, {why}{layout}; "
        f"{len(s.train_labels):,} images an epoch, {s.iters_per_epoch:,} iterations x "
        f"{cfg.train.epochs} epochs = {s.schedule.total:,}{budget}; {where}run folder {s.out}"
    )


def _new_run_dir(out: Path, cfg: RunConfig, flops: dict[int, float]) -> None:
    if (out / "checkpoints" / "last.pt").exists() or (out / "metrics.jsonl").exists():
        raise ConfigError(
            f"{out}: already holds a run; continue it with --resume {out}, or choose a new --out"
        )
    _write_config(out, cfg, flops)


def _write_config(out: Path, cfg: RunConfig, flops: dict[int, float]) -> None:
    sizes = cfg.augment.sizes or [cfg.augment.crop or max(flops)]
    per_size = ", ".join(f"{flops[side] / 1e9:.3f} at {side}x{side}" for side in sizes)
    compute = (
        f"\n# Training compute: GFLOP per image (forward + backward, torch's FlopCounterMode): "
        f"{per_size}; metrics.jsonl has train_pflop.\n"
    )
    write_text(out / "config.toml", to_toml(cfg) + compute)


def _resumed_config(out: Path, data: str | Path | None) -> RunConfig:
    """The run's own config, its cache replaced by ``data`` when given; a ConfigError saying
    how to point at the cache when the one it names is gone."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file; --out must be a run folder")
    cfg = config_from_dict(read_resolved_config(out)).validate()
    if data is not None:
        cache = Path(data).expanduser().resolve()
        return replace(cfg, data=replace(cfg.data, cache=str(cache)))
    if cfg.data.cache and not Path(cfg.data.cache).exists():
        raise ConfigError(
            f"{out / 'config.toml'}: the run's cache {cfg.data.cache} is gone (moved or "
            f"deleted); if it moved, point at it with: tinycnn train --resume {out} --data "
            "CACHE"
        )
    return cfg


def _loop(s: Session, stop: _StopRequest, progress: bool, started: float) -> RunResult:
    cfg = s.cfg
    ipe = s.iters_per_epoch
    budget = _Budget(cfg.train.max_minutes, started - s.elapsed_before, s)
    fit = (
        _TimeFit(s, budget, progress) if cfg.train.fit_to_time and s.fitted_total is None else None
    )
    model = s.model
    model.train()
    sync = _Sync(s, stop, budget)
    if s.evaluation_pending:  # killed between an epoch-end snapshot and its evaluation
        budget.evaluating()
        s.end_epoch(budget.elapsed(), s.accum.seconds, progress)  # its steps' time: saved
        budget.evaluated()
    while s.iteration < s.schedule.total:
        epoch = s.iteration // ipe
        # On the split's device: a batch's rows are a slice there, no copy per step.
        perm = _epoch_order(cfg.train.seed, epoch, len(s.train_labels)).to(s.train_images.device)
        bar = tqdm(
            total=ipe,
            initial=s.iteration % ipe,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            unit="it",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        epoch_start, first, before = time.perf_counter(), s.iteration, s.accum.seconds
        with bar:
            while s.iteration < min((epoch + 1) * ipe, s.schedule.total):  # a budget may end it
                pos = s.iteration % ipe
                rows = perm[pos * cfg.train.batch_size : (pos + 1) * cfg.train.batch_size]
                sync.add(_step(s, rows), len(rows))
                s.iteration += 1
                snapshots = _snapshot_names(s)  # iter-N every snapshot_every, cycle-NN
                # The numbers reach the host (and the ranks agree on a stop) every few steps.
                reason = sync.flush() if snapshots or sync.due() else None
                seconds = max(time.perf_counter() - epoch_start, 1e-9)
                rate = (s.iteration - first) * cfg.train.batch_size / seconds  # since this start
                bar.set_postfix(
                    loss=f"{sync.last_loss:.3f}",
                    img_s=f"{rate:.0f}",
                    run_eta=budget.remaining(seconds / (s.iteration - first)),
                    refresh=False,
                )
                bar.update()
                if fit is not None and fit.measure():
                    fit = None
                pause_point("step", s.iteration)
                if snapshots:
                    _clock_epoch(s, before, epoch_start)
                    for name in snapshots:
                        s.save(name, budget.elapsed())
                    pause_point("snapshot", s.iteration)
                # At an epoch's or the schedule's end, stop after its evaluation.
                if reason and s.iteration % ipe and s.iteration < s.schedule.total:
                    _clock_epoch(s, before, epoch_start)
                    return _stop(s, reason, budget, stop, progress)
        seconds = _clock_epoch(s, before, epoch_start)
        budget.evaluating()
        s.end_epoch(budget.elapsed(), seconds, progress)
        budget.evaluated()
        reason = sync.flush()  # nothing pending: only the agreement on a stop
        if reason and s.iteration < s.schedule.total:
            s.close()  # end_epoch has just saved the resume point
            return RunResult(s.out, model, s.metrics, reason, s.iteration, stop.signal)
    s.close()
    return RunResult(s.out, model, s.metrics, "finished", s.iteration)


class _Budget:
    """train.max_minutes as a wall-clock limit that leaves time for the closing evaluation.

    The closing evaluation's cost is the last measured one, or before any, an estimate from the
    training rate: a forward pass costs about a third of a training step per image.
    """

    def __init__(self, minutes: float, origin: float, session: Session) -> None:
        self.seconds = minutes * 60
        self.origin = origin  # perf_counter() at which the run's elapsed time was 0
        self.session = session
        self.eval_seconds: float | None = None
        self.step_seconds: dict[int, float] | None = None  # a step's seconds by side (the fit)
        self._eval_started = 0.0
        self._step_origin = (time.perf_counter(), session.iteration)

    def elapsed(self) -> float:
        return time.perf_counter() - self.origin

    def evaluating(self) -> None:
        self._eval_started = time.perf_counter()

    def evaluated(self) -> None:
        self.eval_seconds = time.perf_counter() - self._eval_started
        self._step_origin = (time.perf_counter(), self.session.iteration)

    def _step_seconds(self) -> float:
        """Seconds per training step since the last evaluation (0 before the first step)."""
        since, iteration = self._step_origin
        steps = self.session.iteration - iteration
        return (time.perf_counter() - since) / steps if steps else 0.0

    def _eval_estimate(self) -> float:
        if self.eval_seconds is not None:
            return self.eval_seconds
        per_image = self._step_seconds() / self.session.cfg.train.batch_size
        images = sum(len(labels) for _, labels in self.session.eval_sets.values())
        return images * per_image / 2.5  # a margin over the third

    def remaining(self, seconds_per_iteration: float) -> str:
        """The whole run's time to go (steps and evaluations), as H:MM:SS.

        Steps to come are timed by their FLOPs at the current rate (with progressive resizing
        a later step at a larger size takes longer than one now), or where the time fit has
        timed each side (step_seconds), by those times scaled to the current rate.
        """
        s = self.session
        schedule = s.schedule
        steps = (schedule.total - s.iteration) * seconds_per_iteration
        size = schedule.input_size_at(max(s.iteration - 1, 0))
        step_flops = schedule.flops_by_size.get(size, 0.0)
        if self.step_seconds and size in self.step_seconds:  # each side's time, from the fit
            to_come = schedule.steps_seconds(s.iteration, self.step_seconds)
            steps = to_come * seconds_per_iteration / self.step_seconds[size]
        elif step_flops:
            flops_left = schedule.flops_until(schedule.total) - schedule.flops_until(s.iteration)
            steps = flops_left / (step_flops * s.cfg.train.batch_size) * seconds_per_iteration
        evaluations = -(-(schedule.total - s.iteration) // s.iters_per_epoch)
        left = steps + evaluations * (self.eval_seconds or 0.0)
        if self.seconds:
            left = min(left, max(self.seconds - self.elapsed(), 0.0))
        if left >= 86400:
            return f"{left / 3600:.0f}h"
        return time.strftime("%H:%M:%S", time.gmtime(left))

    def exhausted(self) -> bool:
        if not self.seconds:
            return False
        # Room for the next step and the closing evaluation, or stop now.
        return self.elapsed() + self._step_seconds() + self._eval_estimate() > self.seconds


class _TimeFit:
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

    def __init__(self, session: Session, budget: _Budget, progress: bool) -> None:
        self.session, self.budget, self.progress = session, budget, progress
        self.first = session.iteration
        self.start: tuple[float, float] | None = None  # (time, flops_done) after warm-up

    def measure(self) -> bool:
        """Call after each step; True once the schedule is fitted."""
        s, done = self.session, self.session.iteration - self.first
        if done in (self.WARM_UP, self.WARM_UP + self.TIMED) and s.runtime.device.type == "cuda":
            torch.cuda.synchronize(s.runtime.device)  # twice a run: time the work, not queueing
        if done == self.WARM_UP:
            self.start = (time.perf_counter(), s.flops_done)
        if done < self.WARM_UP + self.TIMED or self.start is None:
            return False
        seconds = time.perf_counter() - self.start[0]
        rate = (s.flops_done - self.start[1]) / max(seconds, 1e-9)  # training FLOP/s
        per_image = s.schedule.flops_by_size
        measured = s.schedule.input_size_at(s.iteration - 1)
        step_seconds = {measured: s.cfg.train.batch_size * per_image[measured] / rate}
        # The sizes still to come (progressive resizing) run at other rates: a probe times them.
        others = {size for _, size in s.schedule.phases()}
        if others - {measured}:
            step_seconds = step_seconds_by_size(step_seconds, probe_step_seconds(s, others))
        left = (self.budget.seconds - self.budget.elapsed()) * self.MARGIN
        # Every rank takes rank 0's length: one schedule for the whole job.
        images = sum(len(labels) for _, labels in s.eval_sets.values())
        total = fit_total_to_time(s.schedule, s.iteration, step_seconds, left, images)
        s.fit_schedule(distributed.broadcast_int(total))
        self.budget.step_seconds = step_seconds
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


class _Sync:
    """Brings the steps' loss and error counts to the host, summed over ranks, every few steps.

    The same reduction carries each rank's stop requests (a signal, the time budget), so all
    ranks stop at the same iteration. On a CPU this is every step (it costs nothing there); on a
    GPU every SYNC_EVERY_CUDA steps, so that the inner loop never waits for the device: a loss
    that is no longer finite is caught at the next sync, before any checkpoint.
    """

    SYNC_EVERY_CUDA = 25

    def __init__(self, session: Session, stop: _StopRequest, budget: _Budget) -> None:
        self.session, self.stop, self.budget = session, stop, budget
        self.every = self.SYNC_EVERY_CUDA if session.runtime.device.type == "cuda" else 1
        self.pending: list[torch.Tensor] = []
        self.images = 0
        self.last_loss = math.nan

    def add(self, stats: torch.Tensor, images: int) -> None:
        """stats: this rank's (loss sum, wrong count) of a step, on the device."""
        self.pending.append(stats)
        self.images += images

    def due(self) -> bool:
        s = self.session
        end = s.iteration % s.iters_per_epoch == 0 or s.iteration >= s.schedule.total
        return end or s.iteration % self.every == 0

    def flush(self) -> str | None:
        """Add the pending steps to the epoch's sums; the stop all ranks agree on, if any."""
        s, stop = self.session, self.stop
        if stop.at_iteration is not None and s.iteration >= stop.at_iteration:
            stop.reason = "interrupted"
        flags = [float(stop.reason == "interrupted"), float(self.budget.exhausted())]
        device = s.runtime.device
        local = torch.stack(self.pending).sum(0) if self.pending else torch.zeros(2, device=device)
        numbers = torch.cat([local.double(), torch.tensor(flags, device=device).double()])
        loss_sum, wrong, interrupted, out_of_time = distributed.all_sum(numbers).tolist()
        if self.images:
            s.accum.add(loss_sum, round(wrong), self.images)
            s.window.add(loss_sum, round(wrong), self.images)
            self.last_loss = loss_sum / self.images
            if not math.isfinite(loss_sum):
                s.diverged(self.last_loss)
        every, steps = s.cfg.train.log_every, len(self.pending)
        if every and s.iteration // every > (s.iteration - steps) // every:
            s.log_step(self.budget.elapsed())  # a multiple of log_every was passed
        self.pending, self.images = [], 0
        if interrupted:
            return "interrupted"
        return "time budget" if out_of_time else None


def _stop(
    s: Session, reason: str, budget: _Budget, stop: _StopRequest, progress: bool
) -> RunResult:
    """Save the resume point mid-epoch; at a time budget also evaluate: that is the result."""
    if reason == "time budget":
        s.end_epoch(budget.elapsed(), s.accum.seconds, progress, partial=True)
    else:
        s.save("last", budget.elapsed())
    s.close()
    return RunResult(s.out, s.model, s.metrics, reason, s.iteration, stop.signal)


def _clock_epoch(s: Session, before: float | None, start: float) -> float | None:
    """The epoch's step time so far, the part before a resume included; kept in its sums.

    None when the part before the resume was not recorded (an older checkpoint).
    """
    s.accum.seconds = None if before is None else before + time.perf_counter() - start
    return s.accum.seconds


def _snapshot_names(s: Session) -> list[str]:
    """The snapshots due once s.iteration steps are done: iter-N (train.snapshot_every) and
    cycle-NN at the end of a cyclic schedule's cycle NN (from 1)."""
    names = []
    every = s.cfg.train.snapshot_every
    if every and s.iteration % every == 0:
        names.append(f"iter-{s.iteration:07d}")
    if s.cfg.schedule.name == "cyclic":
        ends = s.schedule.cycle_ends()
        if s.iteration in ends:
            names.append(f"cycle-{ends.index(s.iteration) + 1:02d}")
    return names


def _epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


def _step(s: Session, rows: torch.Tensor) -> torch.Tensor:
    """One optimisation step on the given global batch of training rows.

    Returns this rank's (loss sum, wrong top-1 count) as a float64 tensor on the device: no
    host sync here. Under torchrun every rank augments the whole global batch (the same random
    views as one process would make) and trains on its own share of it.
    """
    cfg, rt = s.cfg, s.runtime
    set_lr(s.optimizer, s.schedule.lr_at(s.iteration))
    # Everything random in this step derives from (seed, iteration): exact resume, no RNG state.
    step_seed = (cfg.train.seed * 1_000_003 + s.iteration) % (2**63)
    torch.manual_seed(step_seed)
    generator = s.aug_generator.manual_seed(step_seed)
    images = s.train_images[rows].to(rt.device, non_blocking=True)
    labels = s.train_labels[rows].to(rt.device, non_blocking=True)
    x = augment_batch(images, cfg.augment, generator, s.norm, checked=True)  # by load_session
    size = s.schedule.input_size_at(s.iteration)
    x = resize_views(x, size)  # progressive resizing (or a no-op)
    s.flops_done += len(rows) * s.schedule.flops_by_size.get(size, 0.0)
    targets = labels
    if cfg.augment.mixup or cfg.augment.cutmix:
        x, targets, _ = mix_batch(
            x, labels, s.cache.num_classes, cfg.augment.mixup, cfg.augment.cutmix, step_seed
        )
    if s.dist.active:
        mine = distributed.share(len(rows), s.dist)
        x, targets, labels = x[mine], targets[mine], labels[mine]
    with rt.autocast():
        logits = (s.model if s.step_model is None else s.step_model)(x)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.optim.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.clip_grad_norm:  # after DDP's all-reduce: every rank clips the same gradient
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.optim.clip_grad_norm)
    s.optimizer.step()
    if s.ema is not None:
        update_ema(s.ema, s.model, cfg.train.ema_decay, s.iteration + 1)
    wrong = (logits.argmax(dim=1) != labels).sum()
    return torch.stack([loss.detach().double() * len(labels), wrong.double()])


def checkpoint_config(path: str | Path) -> RunConfig:
    """The resolved config stored in a checkpoint (the base for --init-from runs)."""
    return config_from_dict(load_checkpoint(path)["config"]).validate()

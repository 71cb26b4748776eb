"""train(): a run from its config to its last checkpoint, read top to bottom.

train checks everything first (run_plan.py) and only then makes the run folder (run_start.py:
a new run's folder, or a resumed run's plan); load_session (session.py) builds the run's state;
the loop then trains one epoch at a time (train_one_epoch: steps.py's train_step, snapshots, the
stop checks) and closes each with its evaluation, its snapshot and its metrics line (epochs.py).
The whole training split lives in memory as one uint8 tensor; a batch is an index slice,
augmented by batched tensor ops on the model's device. All randomness is derived from
(train.seed, iteration), so a resumed run repeats exactly what the
uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from tinycnn import distributed, faults
from tinycnn.atomic import write_text
from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import RunConfig, config_from_dict
from tinycnn.epochs import diverged, end_epoch, log_step
from tinycnn.errors import TrainingDivergedError
from tinycnn.models.conv import CHOICES
from tinycnn.run_folder import (
    TIME_BUDGET,
    read_metrics,
    read_steps,
    run_lock,
)
from tinycnn.run_plan import plan_run
from tinycnn.run_start import (
    Fresh,
    absolute,
    new_run_dir,
    open_session,
    resume_plan,
    resumed_config,
    write_config,
)
from tinycnn.session import Session
from tinycnn.steps import (
    StepSums,
    StopRequest,
    catching_signals,
    epoch_order,
    snapshot_names,
    train_step,
)
from tinycnn.timing import Budget, TimeFit

__all__ = ["RunResult", "TrainingDivergedError", "read_metrics", "read_steps", "train"]


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    metrics: list[dict] = field(default_factory=list)
    stopped: str = "finished"  # finished | interrupted | time budget
    iteration: int = 0
    signal: int | None = None  # the signal that interrupted the run (SIGINT, SIGTERM)


def train(
    cfg: RunConfig | None,
    out: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
    stop_at_iteration: int | None = None,
    data: str | Path | None = None,
    changes: Sequence[str] = (),
) -> RunResult:
    """Train cfg's model on cfg.data.cache into the run folder ``out``; returns a RunResult.

    resume: continue the run in ``out`` from its last checkpoint (cfg is then read from there);
      a run folder with no checkpoint yet starts afresh from its config.toml.
    data: with resume, the run's cache where it is now (it moved): the same data is checked,
      and the run's config.toml then names it.
    changes: with resume, "section.key=value" changes of the keys a resumed run may change
      (resume.RESUME_SET_KEYS: a larger train.max_minutes, ...), recorded in its config.toml.
    init_from: start from a checkpoint's weights with this config's (new) hyperparameters.
    stop_at_iteration: behave as if interrupted once this many iterations are done in all
      (`tinycnn train --stop-at`): a checkpoint to resume from, RunResult.signal None.
    One process at a time may use a run folder: a second gets a RunFolderError.
    """
    started = time.perf_counter()  # train.max_minutes counts from here
    out = Path(out)
    if resume:
        resumed_config(out, data, changes)  # a clear error before the lock makes a folder
    else:  # every check before the run folder is made: a failed start leaves nothing behind
        plan = plan_run(*absolute(cfg, init_from))
    # Under torchrun, rank 0 holds the run folder's lock and writes it; the others read.
    main = distributed.from_env().main
    fresh = Fresh(out, main and not resume)  # before the lock makes the folder
    with run_lock(out) if main else contextlib.nullcontext():
        if not resume and main:  # refuses a folder that holds a run (then nothing is removed)
            new_run_dir(out, plan.cfg, plan.flops_by_size)
            faults.pause_point("started", 0)
        with fresh.removed_if_refused():
            if resume:
                plan, resume = resume_plan(out, data, changes)
            session = open_session(plan, out, resume, main)
        # The moved cache holds the run's data, the changes passed the resume's checks: the
        # run's config.toml says so from now on.
        if (data is not None or changes) and main:
            write_config(out, plan.cfg, plan.flops_by_size)
        progress = progress and session.dist.main
        if progress:
            _announce(session)
        stop = StopRequest(stop_at_iteration)
        with catching_signals(stop):
            return _loop(session, stop, progress, started)


def _announce(session: Session) -> None:
    """Print the run's banner and what its start chose (compiled steps, threads)."""
    print(banner(session), flush=True)
    if session.compile_report:
        print(session.compile_report, flush=True)
    if session.threads_note:
        print(session.threads_note, flush=True)


def banner(s: Session) -> str:
    """One line that says what is about to run, where, how fast a path, and for how long."""
    cfg, rt = s.cfg, s.runtime
    params = sum(p.numel() for p in s.model.parameters())
    why = f"{'bf16 autocast' if rt.precision == 'bf16' else 'fp32'}: {rt.why}"
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' * (n > 1)}" if rt.device.type == "cpu" else ""
    layout = ", channels_last" if rt.channels_last else ""
    compiled = [f"{side}x{side}" for side, c in sorted(s.compile_choices.items()) if c]
    if cfg.train.compile is True or (cfg.train.compile == "auto" and compiled):
        layout += ", compiled" + (
            f" at {', '.join(compiled)}" if cfg.train.compile == "auto" else ""
        )
    where = f"resuming at iteration {s.iteration:,}; " if s.iteration else ""
    gflop = f"{s.schedule.flops_per_image / 1e9:.2f} GFLOP per training image"
    if cfg.augment.sizes:  # progressive resizing: each phase's cost
        per_image = s.schedule.flops_by_size
        costs = (f"{per_image[side] / 1e9:.2f} at {side}" for side in cfg.augment.sizes)
        gflop = f"GFLOP per training image {', '.join(costs)}"
    budget = ""
    if s.schedule.total < s.iters_per_epoch * cfg.train.epochs:
        budget = f" (train.max_pflop = {cfg.train.max_pflop:g} ends the schedule there)"
    if cfg.train.fit_to_time and s.fitted_total is None:
        budget += f" at most; the length is fitted to train.max_minutes after {TimeFit.TIMED} steps"
    return (
        f"train {cfg.model.name} ({params:,} parameters, {gflop}) "
        f"on {rt.device}{threads}, {why}{layout}; "
        f"{len(s.train_labels):,} images an epoch, {s.iters_per_epoch:,} iterations x "
        f"{cfg.train.epochs} epochs = {s.schedule.total:,}{budget}; {where}run folder {s.out}"
    )


def _loop(s: Session, stop: StopRequest, progress: bool, started: float) -> RunResult:
    """Epochs until the schedule's end: each trained, then evaluated, saved and logged; a stop
    (a signal, --stop-at, the time budget) leaves a checkpoint to resume from."""
    cfg = s.cfg
    eval_images = s.images_per_evaluation()
    budget = Budget(
        cfg.train.max_minutes,
        started - s.elapsed_before,
        s.iteration,
        cfg.train.batch_size,
        eval_images,
    )
    fit = TimeFit(s.iteration, budget, progress) if cfg.train.fit_to_time else None
    if s.fitted_total is not None:
        fit = None
    sums = StepSums(s.runtime.device)
    s.model.train()
    if s.evaluation_pending:  # killed between an epoch-end snapshot and its evaluation
        _evaluate(s, budget, s.accum.seconds, progress)  # its steps' time: saved
    while s.iteration < s.schedule.total:
        reason = train_one_epoch(s, sums, stop, budget, fit, progress)
        if reason:  # mid-epoch
            return _stop(s, reason, budget, stop, progress)
        _evaluate(s, budget, s.accum.seconds, progress)
        reason = _flush(s, sums, stop, budget)  # nothing pending: only the agreement on a stop
        if reason and s.iteration < s.schedule.total:
            if reason == "time budget":
                _mark_time_budget(s)
            s.close()  # end_epoch has just saved the resume point
            return RunResult(s.out, s.model, s.metrics, reason, s.iteration, stop.signal)
    s.close()
    return RunResult(s.out, s.model, s.metrics, "finished", s.iteration)


def train_one_epoch(
    s: Session,
    sums: StepSums,
    stop: StopRequest,
    budget: Budget,
    fit: TimeFit | None,
    progress: bool,
) -> str | None:
    """Steps to the epoch's end (or the schedule's: a budget may end it), snapshots as they fall
    due; the reason when a stop ends it first (a resume point saved by the caller)."""
    cfg, per_epoch, batch = s.cfg, s.iters_per_epoch, s.cfg.train.batch_size
    epoch = s.iteration // per_epoch
    # On the split's device: a batch's rows are a slice there, no copy per step.
    order = epoch_order(cfg.train.seed, epoch, len(s.train_labels)).to(s.train_images.device)
    bar = tqdm(
        total=per_epoch,
        initial=s.iteration % per_epoch,
        desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
        unit="it",
        disable=not progress,
        leave=False,
        dynamic_ncols=True,
    )
    start, first, before = time.perf_counter(), s.iteration, s.accum.seconds
    saving = 0.0  # seconds of snapshot saves since start: the run's clock, not the epoch's
    with bar:
        while s.iteration < min((epoch + 1) * per_epoch, s.schedule.total):
            pos = s.iteration % per_epoch
            rows = order[pos * batch : (pos + 1) * batch]
            size = s.schedule.input_size_at(s.iteration)
            sums.add(train_step(s, rows), len(rows))
            s.advance(len(rows), size)
            budget.stepped(s.iteration)
            snapshots = snapshot_names(s)  # iter-N every snapshot_every, cycle-NN
            # The numbers reach the host (and the ranks agree on a stop) every few steps.
            due = snapshots or sums.due(s.iteration, per_epoch, s.schedule.total)
            reason = _flush(s, sums, stop, budget) if due else None
            seconds = max(time.perf_counter() - start, 1e-9)  # with the saves: the ETA's
            rate = (s.iteration - first) * batch / max(seconds - saving, 1e-9)  # steps alone
            to_go = budget.remaining(s.schedule, s.iteration, seconds / (s.iteration - first))
            bar.set_postfix(
                loss=f"{sums.last_loss:.3f}", img_s=f"{rate:.0f}", run_eta=to_go, refresh=False
            )
            bar.update()
            if fit is not None:
                fit.measure(s)
            if progress and (timed := CHOICES.take_report()):
                tqdm.write(timed)  # the first step at each new input side times its conv shapes
            faults.pause_point("step", s.iteration)
            if snapshots:
                s.clock_epoch(before, time.perf_counter() - start - saving)
                saved = time.perf_counter()
                s.save(snapshots, budget.elapsed())  # last.pt once, however many names
                faults.pause_point("snapshot", s.iteration)
                saving += time.perf_counter() - saved  # the epoch's clock times steps only
            # At an epoch's or the schedule's end, stop after its evaluation.
            if reason and s.iteration % per_epoch and s.iteration < s.schedule.total:
                s.clock_epoch(before, time.perf_counter() - start - saving)
                return reason
    s.clock_epoch(before, time.perf_counter() - start - saving)
    return None


def _flush(s: Session, sums: StepSums, stop: StopRequest, budget: Budget) -> str | None:
    """The pending steps' sums into the session (and the step log); the stop all ranks agree
    on, if any."""
    if stop.at_iteration is not None and s.iteration >= stop.at_iteration:
        stop.reason = "interrupted"
    requests = [float(stop.reason == "interrupted"), float(budget.exhausted(s.iteration))]
    loss_sum, wrong, images, steps, (interrupted, out_of_time) = sums.flush(requests)
    if images:
        s.add_sums(loss_sum, wrong, images)
        if not math.isfinite(loss_sum):
            raise diverged(s, sums.last_loss)
    every = s.cfg.train.log_every
    if every and s.iteration // every > (s.iteration - steps) // every:
        log_step(s, budget.elapsed())  # a multiple of log_every was passed
    if interrupted:
        return "interrupted"
    return "time budget" if out_of_time else None


def _evaluate(s: Session, budget: Budget, epoch_seconds: float | None, progress: bool) -> None:
    budget.evaluating()
    end_epoch(s, budget.elapsed(), epoch_seconds, progress)
    budget.evaluated(s.iteration)


def _stop(s: Session, reason: str, budget: Budget, stop: StopRequest, progress: bool) -> RunResult:
    """Save the resume point mid-epoch; at a time budget also evaluate: that is the result."""
    if reason == "time budget":
        end_epoch(s, budget.elapsed(), s.accum.seconds, progress, partial=True)
        _mark_time_budget(s)
    else:
        s.save("last", budget.elapsed())
    s.close()
    return RunResult(s.out, s.model, s.metrics, reason, s.iteration, stop.signal)


def _mark_time_budget(s: Session) -> None:
    """RUN/time-budget.json: train.max_minutes ended the run here. The run is then done (a study
    skips it), and a resume trains on only once max_minutes is raised: the budget stops a run
    before it runs out (room for a step and the closing evaluation), so the time alone would
    let a resume take one more step, and again."""
    if s.dist.main:
        text = json.dumps({"iteration": s.iteration, "max_minutes": s.cfg.train.max_minutes})
        write_text(s.out / TIME_BUDGET, text + "\n")


def checkpoint_config(path: str | Path) -> RunConfig:
    """The resolved config stored in a checkpoint (the base for --init-from runs)."""
    return config_from_dict(load_checkpoint(path)["config"]).validate()

"""The state of one training run: data in memory, model, optimiser, position, checkpoints, logs."""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinycnn.atomic import copy_file, write_text
from tinycnn.checkpoint import (
    check_classes,
    check_state,
    load_checkpoint,
    normalization_payload,
    save_checkpoint,
)
from tinycnn.compute import PFLOP
from tinycnn.config import RunConfig, config_to_dict
from tinycnn.data.cache import Cache
from tinycnn.data.normalization import Normalization
from tinycnn.distributed import Dist, sync_batch_norm
from tinycnn.errors import ConfigError, TrainingDivergedError
from tinycnn.inference import predict_logits
from tinycnn.metrics import clearly_below_chance, error_rates
from tinycnn.models import model_options
from tinycnn.optim import build_optimizer
from tinycnn.run_folder import METRICS, STEPS, append_line, read_metrics, read_steps
from tinycnn.run_plan import RunPlan, build_model, normalization_of, tensorboard_writer_class
from tinycnn.runtime import Runtime, describe_hardware, keep_precision
from tinycnn.schedule import Schedule


def pause_point(phase: str, iteration: int) -> None:
    """Fault injection for the kill tests: wait here to be killed when asked to.

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


@dataclass
class TrainingSums:
    """Training loss, wrong top-1 predictions and images summed over a span of steps: the epoch
    so far (Session.accum), or the steps since the last steps.jsonl line (Session.window)."""

    loss_sum: float = 0.0  # summed over images
    wrong: int = 0
    seen: int = 0
    # The epoch's training time so far (steps, not evaluations), kept across a stop and resume:
    # its images per second are seen / seconds, not the images of the whole epoch over the time
    # since the resume. None: not known (resumed from a checkpoint older than this field).
    seconds: float | None = 0.0

    @classmethod
    def from_payload(cls, saved: dict) -> TrainingSums:
        known = {k: v for k, v in saved.items() if k in {f.name for f in fields(cls)}}
        return cls(**{"seconds": None, **known})

    def add(self, loss_sum: float, wrong: int, seen: int) -> None:
        self.loss_sum += loss_sum
        self.wrong += wrong
        self.seen += seen


@dataclass
class Session:
    cfg: RunConfig
    out: Path
    runtime: Runtime
    cache: Cache
    model: nn.Module
    optimizer: torch.optim.Optimizer
    norm: Normalization | None
    train_images: torch.Tensor  # (N, 64, 64, 3) uint8, in memory
    train_labels: torch.Tensor  # (N,) int64
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (images, labels)
    eval_size: int
    iteration: int = 0
    elapsed_before: float = 0.0  # training seconds before a resume
    accum: TrainingSums = field(default_factory=TrainingSums)  # the epoch's steps so far
    window: TrainingSums = field(default_factory=TrainingSums)  # since the last step line
    metrics: list[dict] = field(default_factory=list)
    best_error: float = math.inf
    evaluation_pending: bool = False  # resumed at an epoch end whose evaluation was not saved
    # iteration -> lr, input side, FLOPs (schedule.py); set by load_session
    schedule: Schedule | None = None
    flops_done: float = 0.0  # training FLOPs of the steps taken so far (train_pflop)
    fitted_total: int | None = None  # the schedule's length once fitted to train.max_minutes
    dist: Dist = field(default_factory=Dist)  # this process in a torchrun job (rank 0 of 1)
    ddp: nn.Module | None = None  # the model wrapped in DDP for training steps, under torchrun
    step_model: nn.Module | None = None  # what a training step calls: the model, DDP, compiled
    ema: nn.Module | None = None  # the weights' moving average (train.ema_decay), or None
    writer: object | None = None

    def __post_init__(self) -> None:
        generator_device = self.runtime.device if self.runtime.device.type == "cuda" else "cpu"
        self.aug_generator = torch.Generator(device=generator_device)

    @property
    def iters_per_epoch(self) -> int:
        # Whole batches only: every step sees batch_size images; a new order each epoch.
        return max(1, len(self.train_labels) // self.cfg.train.batch_size)

    def fit_schedule(self, total: int) -> None:
        """Fix the run's length (train.fit_to_time); saved with every checkpoint."""
        self.fitted_total = total
        self.schedule = self.schedule.with_total(total)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def payload(self, elapsed: float, metrics: dict | None = None) -> dict:
        """Everything a checkpoint holds (see checkpoint.py)."""
        model = self.model
        # model.state holds the weights to use (the EMA's, when on); train_state the raw ones.
        used = self.ema if self.ema is not None else model
        extra = {"train_state": _cpu_state(model)} if self.ema is not None else {}
        return {
            **extra,
            "model": {
                "name": model.tinycnn_name,
                "options": model.tinycnn_options,
                "state": _cpu_state(used),
            },
            "classes": self.cache.classes,
            "data_id": self.cache.content_id,  # a resume checks it trains on the same data
            "names": self.cache.names,
            "normalization": normalization_payload(self.norm),
            "input_size": self.eval_size,
            "resize": self._resize(),
            "config": config_to_dict(self.cfg),
            "epoch": self.iteration // self.iters_per_epoch,
            "iteration": self.iteration,
            "elapsed_seconds": elapsed,
            "flops_per_image": self.schedule.flops_per_image,
            "flops_by_size": {str(k): v for k, v in sorted(self.schedule.flops_by_size.items())},
            "flops_done": self.flops_done,
            "fitted_total": self.fitted_total,
            "precision": self.runtime.precision,  # a resume goes on in it (keep_precision)
            "optimizer": self.optimizer.state_dict(),
            "accumulator": vars(self.accum).copy(),
            "step_window": vars(self.window).copy(),
            "best_error": self.best_error,
            "metrics": metrics,
        }

    def save(self, name: str, elapsed: float, metrics: dict | None = None) -> Path:
        """Write checkpoints/NAME.pt and make this point the resume point (last.pt); rank 0.

        A snapshot (epoch-NNN, iter-N, cycle-NN: kept for evaluation and ensembles) holds the
        model (the EMA's weights, when on) without the optimiser state and raw weights that
        only a resume reads, from last.pt: half the size or less. It is written first: a kill
        before last.pt resumes from the previous point and writes it again.
        """
        path = self.checkpoints / f"{name}.pt"
        if not self.dist.main:  # every rank holds the same state: one writes it
            return path
        payload = self.payload(elapsed, metrics)
        if name != "last":
            save_checkpoint(path, {k: v for k, v in payload.items() if k not in RESUME_ONLY})
        save_checkpoint(self.checkpoints / "last.pt", payload)
        if name != "last":
            self._apply_retention()
        return path

    def _apply_retention(self) -> None:
        # Iteration snapshots only: epoch snapshots are the paper's snapshot-ensemble members.
        keep = self.cfg.train.keep_snapshots
        if not keep:
            return
        snapshots = sorted(self.checkpoints.glob("iter-*.pt"))  # zero-padded: name order
        for old in snapshots[:-keep]:
            old.unlink(missing_ok=True)

    def end_epoch(
        self, elapsed: float, epoch_seconds: float | None, progress: bool, partial: bool = False
    ) -> dict:
        """Evaluate, log one metrics line, snapshot (epoch-NNN, last, maybe best).

        partial: a stop before the schedule's end (the time budget). A compute budget may end
        the schedule itself mid-epoch: that evaluation is saved as last.pt, not partial.
        """
        whole_epoch = self.iteration % self.iters_per_epoch == 0
        row = {
            "epoch": self.iteration // self.iters_per_epoch
            if whole_epoch
            else self.iteration / self.iters_per_epoch,
            "iteration": self.iteration,
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": self.accum.loss_sum / max(self.accum.seen, 1),
            "train_top1_error": self.accum.wrong / max(self.accum.seen, 1),
            # Cumulative training compute (PFLOP = 1e15): every step sees batch_size images.
            "train_pflop": self.flops_done / PFLOP,
            "input_size": self.schedule.input_size_at(max(self.iteration - 1, 0)),
        }
        counts = {"train": self.accum.seen}  # images behind each error, for the chance check
        for name, (images, labels) in self.eval_sets.items():
            logits = predict_logits(
                self.ema if self.ema is not None else self.model,
                images,
                self.runtime,
                size=self.eval_size,
                resize=self._resize(),
                norm=self.norm,
                batch_size=self.cfg.train.eval_batch_size,
                progress=f"evaluate {name}" if progress else None,
            )
            rates = error_rates(logits, labels)
            counts[name] = rates["count"]
            row.update(
                {
                    f"{name}_loss": rates["loss"],
                    f"{name}_top1_error": rates["top1_error"],
                    f"{name}_top5_error": rates["top5_error"],
                }
            )
        row.update(
            seconds=epoch_seconds,
            elapsed_seconds=elapsed,
            images_per_second=self.accum.seen / epoch_seconds if epoch_seconds else None,
            precision=self.runtime.precision,
            hardware=describe_hardware(self.runtime),
            partial_epoch=partial,
            schedule_done=self.iteration >= self.schedule.total,  # the run's last evaluation
        )
        if not partial:  # a time-budget stop's sums stay: a resume continues the epoch
            self.accum = TrainingSums()
        # The checkpoint carries the best error including its own evaluation: a resume from it
        # must not forget that this epoch was the best so far.
        is_best = row[selection_key(row)] < self.best_error
        if is_best:
            self.best_error = row[selection_key(row)]
        name = f"epoch-{row['epoch']:03d}" if whole_epoch else "last"
        pause_point("evaluated", self.iteration)
        path = self.save(name, elapsed, row)
        pause_point("saved", self.iteration)
        if is_best and self.dist.main:
            copy_file(path, self.checkpoints / "best.pt")
        pause_point("best", self.iteration)
        self._log(row, progress, counts)
        pause_point("logged", self.iteration)
        return row

    def _resize(self) -> int | None:
        """The side the crop is resized to for the model now: that of the last step, if any."""
        return self.schedule.resize_at(max(self.iteration - 1, 0))

    def log_step(self, elapsed: float) -> None:
        """One steps.jsonl line: the training loss and error since the last one (train.log_every).

        Dropout and augmentation are on, as in the epoch's train_loss; the window's sums are kept
        in checkpoints, so a resumed run writes the lines of an uninterrupted one.
        """
        window, self.window = self.window, TrainingSums()
        if not self.dist.main or not window.seen:
            return
        row = {
            "iteration": self.iteration,
            "epoch": round(self.iteration / self.iters_per_epoch, 4),
            "lr": self.optimizer.param_groups[0]["lr"],
            "train_loss": window.loss_sum / window.seen,
            "train_top1_error": window.wrong / window.seen,
            "images": window.seen,
            "train_pflop": self.flops_done / 1e15,
            "elapsed_seconds": elapsed,
        }
        append_line(self.out / STEPS, json.dumps(row))
        if self.writer is not None:
            for key in ("train_loss", "train_top1_error", "lr"):
                self.writer.add_scalar(f"steps/{key}", row[key], self.iteration)

    def _log(self, row: dict, progress: bool, counts: dict[str, int]) -> None:
        if self.dist.main:
            append_line(self.out / "metrics.jsonl", json.dumps(row))
        self.metrics.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, row["iteration"])
        if progress:
            tune = f", tune top-1 {row['tune_top1_error']:.2%}" if "tune_top1_error" in row else ""
            print(
                f"epoch {self._epoch_text(row['iteration'])}: train loss "
                f"{row['train_loss']:.3f}, val top-1 error "
                f"{row['val_top1_error']:.2%}, top-5 {row['val_top5_error']:.2%}{tune} "
                f"({row['seconds'] or 0:.0f} s)",
                flush=True,
            )
            classes = self.cache.num_classes
            if row["epoch"] == 1 and not learning(row, counts, classes):
                print(not_learning_advice(row, counts, self.cfg, classes), flush=True)

    def _epoch_text(self, iteration: int) -> str:
        """Epochs done at an iteration, for people: "12", or "12.09" when the run ended mid-epoch
        (a budget): hundredths cut, never rounded up to an epoch that was not finished."""
        whole, rest = divmod(iteration, self.iters_per_epoch)
        return str(whole) if not rest else f"{whole}.{rest * 100 // self.iters_per_epoch:02d}"

    def diverged(self, value: float) -> None:
        last = self.checkpoints / "last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
        self.close()
        raise TrainingDivergedError(
            f"loss became {value} at iteration {self.iteration} (epoch "
            f"{self.iteration // self.iters_per_epoch + 1}); stopped, {kept}. Lower optim.lr "
            "or use warm-up (schedule.warmup_epochs)"
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def load_session(
    plan: RunPlan, out: Path, *, resume: bool = False, dist: Dist | None = None
) -> Session:
    """Load the plan's data into memory, build model and optimiser, and restore the resume
    point (resume) or the plan's initial weights.

    dist: this process in a torchrun job (distributed.init): the model is wrapped in DDP, and
    only rank 0 writes to the run folder.
    """
    dist = dist or Dist()
    cfg, cache, runtime = plan.cfg, plan.cache, plan.runtime
    images, labels = _load_rows(cache, "train", plan.train_rows)
    # Checked once here, for these images: every training step then augments without a check.
    cfg.augment.validate(tuple(images.shape[1:3]))
    if runtime.device.type == "cuda":  # the uint8 split lives on the GPU: no copy per batch
        images, labels = images.to(runtime.device), labels.to(runtime.device)
    eval_sets = {"val": _load_rows(cache, "val", None)}
    if len(plan.tune_rows):
        eval_sets["tune"] = _load_rows(cache, "train", plan.tune_rows)
    model = build_model(cfg, cache.num_classes, plan.eval_size)
    if cfg.train.sync_batch_norm and dist.active:  # before the optimiser: new parameters
        model = sync_batch_norm(model, runtime.device)
    model = runtime.prepare_model(model)
    optimizer = build_optimizer(model, cfg.optim)
    session = Session(
        cfg,
        out,
        runtime,
        cache,
        model,
        optimizer,
        normalization_of(cfg, cache),
        images,
        labels,
        eval_sets,
        plan.eval_size,
    )
    session.schedule = Schedule.build(
        cfg, session.iters_per_epoch, plan.eval_size, plan.flops_by_size
    )
    session.dist = dist
    if cfg.train.ema_decay:
        session.ema = copy.deepcopy(model).eval().requires_grad_(False)
    if resume:
        _restore(session, out / "checkpoints" / "last.pt")
    if dist.main:  # step lines past the resume point (0 on a fresh start) are written again
        _sync_steps(out, session.iteration)
    if not resume and plan.init is not None:  # checked against model and cache by plan_run
        session.model.load_state_dict(plan.init["model"]["state"])
        if session.ema is not None:
            session.ema.load_state_dict(session.model.state_dict())
    if cfg.train.tensorboard and dist.main:
        session.writer = tensorboard_writer_class()(str(out / "tensorboard"))
    if dist.active:  # after the weights are in place; DDP starts from rank 0's anyway
        from torch.nn.parallel import DistributedDataParallel

        cuda = runtime.device.type == "cuda"
        session.ddp = DistributedDataParallel(model, device_ids=[runtime.device] if cuda else None)
    session.step_model = session.ddp or model
    if cfg.train.compile:  # compiled once per input size; evaluation runs the model as it is
        session.step_model = torch.compile(session.step_model)
    return session


def _load_rows(cache: Cache, split: str, rows: np.ndarray | None):
    data = cache.split(split)
    images = np.array(data.images) if rows is None else data.images[rows]  # into memory
    labels = data.labels if rows is None else data.labels[rows]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


# What only a resume reads (from last.pt); snapshots and best.pt leave it out.
RESUME_ONLY = ("optimizer", "train_state")


def _restore(s: Session, path: Path) -> None:
    payload = load_checkpoint(path)
    check_classes(payload["classes"], s.cache.classes, path, str(s.cache.path))
    if payload.get("data_id", s.cache.content_id) != s.cache.content_id:
        raise ConfigError(
            f"{s.cache.path}: not the data {path} was trained on (same classes, other "
            "content); resume with the run's own cache"
        )
    raw = payload.get("train_state", payload["model"]["state"])
    check_state(s.model, raw, str(path))
    s.model.load_state_dict(raw)
    if s.ema is not None:
        s.ema.load_state_dict(payload["model"]["state"])
    s.optimizer.load_state_dict(payload["optimizer"])
    s.iteration = payload["iteration"]
    if payload.get("fitted_total") is not None:
        s.fit_schedule(payload["fitted_total"])
    s.runtime = keep_precision(s.runtime, payload.get("precision"), s.cfg.train.precision)
    s.flops_done = payload.get("flops_done", s.schedule.flops_until(s.iteration))
    s.elapsed_before = payload["elapsed_seconds"]
    s.accum = TrainingSums.from_payload(payload["accumulator"])
    s.window = TrainingSums.from_payload(payload.get("step_window", {}))
    s.metrics = _sync_metrics(s.out, payload, write=s.dist.main)
    _sync_best(s, payload)
    # An iteration snapshot at an epoch's (or the run's) end, saved before its evaluation.
    s.evaluation_pending = payload["metrics"] is None and (
        s.iteration % s.iters_per_epoch == 0 or s.iteration == s.schedule.total
    )


def _sync_metrics(out: Path, payload: dict, write: bool = True) -> list[dict]:
    """Metrics lines up to the resume point; the checkpoint's own line if the log missed it.

    Lines of a time-budget stop's partial evaluation are dropped: the resumed run goes on from
    that point, and an uninterrupted run has no such line.
    """
    rows = [
        r
        for r in read_metrics(out)
        if r["iteration"] <= payload["iteration"] and not r.get("partial_epoch")
    ]
    own = payload["metrics"]
    logged = {r["iteration"] for r in rows}
    if own and not own.get("partial_epoch") and own["iteration"] not in logged:
        rows.append(own)
    if write:
        _write_rows(out / METRICS, rows)
    return rows


def _sync_steps(out: Path, iteration: int) -> None:
    """steps.jsonl up to ``iteration``: a resumed run writes the later lines again."""
    if (out / STEPS).exists():
        _write_rows(out / STEPS, [r for r in read_steps(out) if r["iteration"] <= iteration])


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _sync_best(s: Session, payload: dict) -> None:
    """Rebuild the best from the logged whole evaluations, as the uninterrupted run had it.

    The first of equal errors wins (a strict <, as in end_epoch). A time-budget stop's partial
    evaluation is no longer part of the run once it goes on, so it cannot stay the best; and a
    kill between a checkpoint and its copy to best.pt leaves the copy to make here.
    """
    best_row = None
    for row in s.metrics:  # partial rows were dropped by _sync_metrics
        if best_row is None or row[selection_key(row)] < best_row[selection_key(best_row)]:
            best_row = row
    s.best_error = math.inf if best_row is None else best_row[selection_key(best_row)]
    best = s.checkpoints / "best.pt"
    if not s.dist.main:  # the numbers above are every rank's; the files are rank 0's
        return
    if best_row is None:
        best.unlink(missing_ok=True)
        return
    if best.exists() and load_checkpoint(best)["iteration"] == best_row["iteration"]:
        return
    if best_row["iteration"] == payload["iteration"]:
        source = s.checkpoints / "last.pt"
    else:
        source = s.checkpoints / f"epoch-{int(best_row['epoch']):03d}.pt"
    copy_file(source, best)


def selection_key(row: dict) -> str:
    """The metric that picks best.pt: the tuning split's top-1 error if there is one, else val."""
    return "tune_top1_error" if "tune_top1_error" in row else "val_top1_error"


def learning(row: dict, counts: dict[str, int], num_classes: int) -> bool:
    """True when an epoch shows learning: its training error, or an evaluation's error at its
    end, is clearly below chance (metrics.clearly_below_chance).

    Not the loss: a healthy first epoch behind warm-up and label smoothing can end with a
    training loss within 1% of ln(classes) and a val loss above it, while its errors are far
    below chance. counts: images behind each error, by split name ("train", "val", "tune").
    """
    return any(
        clearly_below_chance(row[f"{name}_top1_error"], count, num_classes)
        for name, count in counts.items()
    )


def not_learning_advice(row: dict, counts: dict[str, int], cfg: RunConfig, classes: int) -> str:
    """The warning for an epoch that shows no learning: its errors against chance, and what to
    try among what the config does not already set."""
    chance = 1 - 1 / classes
    errors = ", ".join(
        f"{name} top-1 error {row[f'{name}_top1_error']:.1%} ({count:,} images)"
        for name, count in counts.items()
    )
    tries = []
    if {**model_options(cfg.model.name), **cfg.model.options}.get("batch_norm") is False:
        tries.append("batch norm (--set model.batch_norm=true)")
    if cfg.model.init != "kaiming":
        tries.append("kaiming init (--set model.init=kaiming)")
    if not cfg.schedule.warmup_epochs:
        tries.append("warm-up (--set schedule.warmup_epochs=1)")
    val_loss = row.get("val_loss", math.nan)
    if val_loss > 2 * math.log(classes):  # confidently wrong, not guessing: steps too large
        tries.append(
            f"a lower optim.lr (it is {cfg.optim.lr:g}; val loss {val_loss:.3g}, far above "
            f"ln {classes} = {math.log(classes):.3f})"
        )
    else:
        tries.append(f"a higher optim.lr (it is {cfg.optim.lr:g})")
    return (
        f"warning: after an epoch the model is not learning yet: {errors}; none clearly below "
        f"the {chance:.1%} of guessing among {classes} classes. Try {', '.join(tries)}"
    )


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema <- d * ema + (1 - d) * model after optimisation step ``step`` (1-based).

    d = min(decay, (1 + step) / (10 + step)): early on the average follows the weights closely
    (timm's warm-up), so a short run's EMA is not stuck near the initialisation. Buffers (batch
    norm statistics) are copied, not averaged.
    """
    d = min(decay, (1 + step) / (10 + step))
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, list(model.parameters()), 1 - d)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)

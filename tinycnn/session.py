"""The state of one training run: its data in memory, model, optimiser, schedule, position and
sums, and its checkpoints. Built once by load_session from a RunPlan (run_plan.py), when a run
starts or resumes (run_start.py); changed only by its own methods, which the training loop
(training.py) calls."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinycnn.checkpoint import (
    check_classes,
    check_state,
    load_checkpoint,
    normalization_payload,
    save_checkpoint,
)
from tinycnn.config import RunConfig, config_to_dict
from tinycnn.data.cache import Cache
from tinycnn.data.normalization import Normalization
from tinycnn.distributed import Dist, sync_batch_norm
from tinycnn.ema import ema_bn_rows, has_batch_norm, make_ema
from tinycnn.errors import CheckpointError, ConfigError, DamagedCheckpointError
from tinycnn.inference import recompute_batch_norm
from tinycnn.models.conv import CHOICES
from tinycnn.models.kernel_choice import SavedChoices
from tinycnn.optim import build_optimizer
from tinycnn.resume import (
    apply_retention,
    best_row,
    check_budget_left,
    check_same_run,
    kept_metrics,
    restore_best_copy,
    selection_key,
    trim_steps,
)
from tinycnn.run_plan import RunPlan, build_model, normalization_of, tensorboard_writer_class
from tinycnn.runtime import Runtime, keep_precision, keep_threads
from tinycnn.schedule import Schedule
from tinycnn.step_model import build_step_model

# What only a resume reads (from last.pt); snapshots and best.pt leave it out.
RESUME_ONLY = ("optimizer", "train_state")


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
    cfg: RunConfig  # the crop fitted (run_plan.py)
    out: Path  # the run folder
    runtime: Runtime
    cache: Cache
    model: nn.Module
    optimizer: torch.optim.Optimizer
    norm: Normalization | None
    train_images: torch.Tensor  # (N, 64, 64, 3) uint8, in memory
    train_labels: torch.Tensor  # (N,) int64
    eval_sets: dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (images, labels)
    eval_size: int  # the model's input side without resizing
    schedule: Schedule  # iteration -> lr, input side, FLOPs
    dist: Dist = field(default_factory=Dist)  # this process in a torchrun job (rank 0 of 1)
    step_model: nn.Module | None = None  # what a training step calls: the model, DDP, compiled
    ema: nn.Module | None = None  # the weights' moving average (train.ema_decay), or None
    writer: object | None = None  # TensorBoard's SummaryWriter (train.tensorboard)
    # The run's position and sums: changed by the methods below.
    iteration: int = 0
    flops_done: float = 0.0  # training FLOPs of the steps taken so far (train_pflop)
    fitted_total: int | None = None  # the schedule's length once fitted to train.max_minutes
    elapsed_before: float = 0.0  # training seconds before a resume
    accum: TrainingSums = field(default_factory=TrainingSums)  # the epoch's steps so far
    window: TrainingSums = field(default_factory=TrainingSums)  # since the last step line
    metrics: list[dict] = field(default_factory=list)
    best_error: float = math.inf
    evaluation_pending: bool = False  # resumed at an epoch end whose evaluation was not saved
    # train.compile = "auto": {input side: compiled}, as chosen (or, resumed, as the run had them)
    compile_choices: dict[int, bool] = field(default_factory=dict)
    compile_report: str | None = None  # the line on that timing, for the banner's caller
    threads_note: str | None = None  # a resume's thread count against the run's, if they differ
    train_rows_digest: str = ""  # which training rows (holdout, data.exclude): a resume checks
    ema_bn_at: int = -1  # the iteration the EMA's batch-norm statistics were computed at

    def __post_init__(self) -> None:
        generator_device = self.runtime.device if self.runtime.device.type == "cuda" else "cpu"
        self.aug_generator = torch.Generator(device=generator_device)

    @property
    def iters_per_epoch(self) -> int:
        # Whole batches only: every step sees batch_size images; a new order each epoch.
        return max(1, len(self.train_labels) // self.cfg.train.batch_size)

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def model_for_use(self) -> nn.Module:
        """The weights evaluated and saved for use: the EMA's, when on, its batch-norm
        statistics recomputed for its own weights (train.ema_bn_images) once per point of the
        run. Copied from the raw weights instead, they cost a measured 1.45 points of val top-1
        error on a short 10 PFLOP-preset run (bench/ema_check.py). Deterministic: a resume that
        recomputes them at its saved point gets the same statistics. Every rank calls it at the
        same points (a global batch norm reduces over the ranks)."""
        if self.ema is None:
            return self.model
        if self.ema_bn_at != self.iteration and self.ema_bn_count():
            rows = ema_bn_rows(len(self.train_labels), self.ema_bn_count(), self.cfg.train.seed)
            recompute_batch_norm(
                self.ema,
                self.train_images[rows],
                self.runtime,
                size=self.eval_size,
                norm=self.norm,
                resize=self.resize(),
                split_over_ranks=self.cfg.train.sync_batch_norm,
            )
        self.ema_bn_at = self.iteration
        return self.ema

    def ema_bn_count(self) -> int:
        """The training images whose views recompute the EMA's batch-norm statistics at each
        evaluation and save: 0 without an EMA, without batch norm, or with ema_bn_images = 0."""
        if self.ema is None or not has_batch_norm(self.ema):
            return 0
        return min(self.cfg.train.ema_bn_images, len(self.train_labels))

    def images_per_evaluation(self) -> int:
        """The images one evaluation runs through the model (the time budget's estimate)."""
        return sum(len(labels) for _, labels in self.eval_sets.values()) + self.ema_bn_count()

    def resize(self) -> int | None:
        """The side the crop is resized to for the model now: that of the last step, if any."""
        return self.schedule.resize_at(max(self.iteration - 1, 0))

    def advance(self, images: int, size: int) -> None:
        """One step of ``images`` images at input side ``size`` is done."""
        self.flops_done += images * self.schedule.flops_by_size.get(size, 0.0)
        self.iteration += 1

    def add_sums(self, loss_sum: float, wrong: int, images: int) -> None:
        """Steps' training loss and errors, into the epoch's and the step log's sums."""
        self.accum.add(loss_sum, wrong, images)
        self.window.add(loss_sum, wrong, images)

    def take_window(self) -> TrainingSums:
        """The step log's sums since the last line; they start again."""
        window, self.window = self.window, TrainingSums()
        return window

    def clock_epoch(self, before: float | None, seconds: float) -> float | None:
        """The epoch's step time so far: ``before`` (the part before a resume; None when not
        recorded by an older checkpoint) plus ``seconds`` since; kept in its sums."""
        self.accum.seconds = None if before is None else before + seconds
        return self.accum.seconds

    def close_epoch_sums(self) -> None:
        self.accum = TrainingSums()

    def fit_schedule(self, total: int) -> None:
        """Fix the run's length (train.fit_to_time); saved with every checkpoint."""
        self.fitted_total = total
        self.schedule = self.schedule.with_total(total)

    def record(self, row: dict) -> bool:
        """Keep an evaluation's row; True when it is the best so far (best.pt).

        Checked before its checkpoint is written: a resume from it must not forget that this
        epoch was the best so far.
        """
        self.metrics.append(row)
        if row[selection_key(row)] < self.best_error:
            self.best_error = row[selection_key(row)]
            return True
        return False

    def payload(self, elapsed: float, metrics: dict | None = None) -> dict:
        """Everything a checkpoint holds (see checkpoint.py)."""
        model = self.model
        # model.state holds the weights to use (the EMA's, when on); train_state the raw ones.
        extra = {"train_state": _cpu_state(model)} if self.ema is not None else {}
        return {
            **extra,
            "model": {
                "name": model.tinycnn_name,
                "options": model.tinycnn_options,
                "state": _cpu_state(self.ema if self.ema is not None else self.model),
            },
            "classes": self.cache.classes,
            "data_id": self.cache.content_id,  # a resume checks it trains on the same data
            "names": self.cache.names,
            "normalization": normalization_payload(self.norm),
            "input_size": self.eval_size,
            "image_size": self.cache.image_size,  # the side of the images it takes
            "resize": self.resize(),
            "config": config_to_dict(self.cfg),
            "epoch": self.iteration // self.iters_per_epoch,
            "iteration": self.iteration,
            "elapsed_seconds": elapsed,
            "flops_per_image": self.schedule.flops_per_image,
            "flops_by_size": {str(k): v for k, v in sorted(self.schedule.flops_by_size.items())},
            "flops_done": self.flops_done,
            "fitted_total": self.fitted_total,
            "precision": self.runtime.precision,  # a resume goes on in it (keep_precision)
            # A resume goes on with as many (restore): oneDNN's reductions split by threads.
            "threads": torch.get_num_threads() if self.runtime.device.type == "cpu" else None,
            # The conv kernels timed fastest on this machine: a resume computes with the same.
            "conv_kernels": CHOICES.used() if self.cfg.train.autotune else {},
            "conv_kernels_by_layout": True,
            "compile_choices": {str(side): c for side, c in self.compile_choices.items()},
            "train_rows": self.train_rows_digest,
            "optimizer": self.optimizer.state_dict(),
            "accumulator": vars(self.accum).copy(),
            "step_window": vars(self.window).copy(),
            "best_error": self.best_error,
            "metrics": metrics,
        }

    def save(self, name: str | list[str], elapsed: float, metrics: dict | None = None) -> Path:
        """Write checkpoints/NAME.pt (each of several names, one point: iter-N and cycle-NN
        falling on the same step) and make this point the resume point (last.pt), once; rank 0.
        Returns the (first) snapshot's path.

        A snapshot (epoch-NNN, iter-N, cycle-NN: kept for evaluation and ensembles) holds the
        model (the EMA's weights, when on) without the optimiser state and raw weights that
        only a resume reads, from last.pt: half the size or less. It is written first: a kill
        before last.pt resumes from the previous point and writes it again.
        """
        names = [name] if isinstance(name, str) else list(name)
        snapshots = [self.checkpoints / f"{n}.pt" for n in names if n != "last"]
        path = snapshots[0] if snapshots else self.checkpoints / "last.pt"
        self.model_for_use()  # on every rank (a global batch norm reduces), before payload
        if not self.dist.main:  # every rank holds the same state: one writes it
            return path
        payload = self.payload(elapsed, metrics)
        for snapshot in snapshots:
            save_checkpoint(snapshot, {k: v for k, v in payload.items() if k not in RESUME_ONLY})
        save_checkpoint(self.checkpoints / "last.pt", payload)
        if snapshots:
            apply_retention(self.checkpoints, self.cfg.train.keep_snapshots)
        return path

    def restore(self, path: Path) -> None:
        """Go on from a resume point (last.pt): weights, optimiser, position, sums, logs."""
        try:
            payload = load_checkpoint(path)
        except DamagedCheckpointError as exc:  # no other checkpoint will do
            raise CheckpointError(
                f"{exc.problem}; a resume needs this file (the snapshots hold no optimiser "
                "state): put back a sound copy, or train a new run from a snapshot with "
                "--init-from"
            ) from None
        check_budget_left(self.out, payload, self.cfg.train.max_minutes)  # before any write
        check_classes(payload["classes"], self.cache.classes, path, str(self.cache.path))
        if not self.cache.has_content_id(payload.get("data_id", self.cache.content_id)):
            raise ConfigError(
                f"{self.cache.path}: not the data {path} was trained on (same classes, other "
                "content); resume with the run's own cache"
            )
        check_same_run(path, payload, config_to_dict(self.cfg), self.train_rows_digest)
        raw = payload.get("train_state", payload["model"]["state"])
        check_state(self.model, raw, str(path))
        self.model.load_state_dict(raw)
        if self.ema is not None:
            self.ema.load_state_dict(payload["model"]["state"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.compile_choices = {int(k): v for k, v in payload.get("compile_choices", {}).items()}
        saved = SavedChoices.from_payload(payload)
        if saved.enabled:
            CHOICES.pin(saved.choices, saved.by_layout)
        else:  # saved before autotuning: the static rules, as the run had them
            CHOICES.reset(enabled=False)
        self.iteration = payload["iteration"]
        if payload.get("fitted_total") is not None:
            self.fit_schedule(payload["fitted_total"])
        self.runtime = keep_precision(
            self.runtime, payload.get("precision"), self.cfg.train.precision
        )
        self.threads_note = keep_threads(payload.get("threads"), self.cfg.train.threads)
        self.flops_done = payload.get("flops_done", self.schedule.flops_until(self.iteration))
        self.elapsed_before = payload["elapsed_seconds"]
        self.accum = TrainingSums.from_payload(payload["accumulator"])
        self.window = TrainingSums.from_payload(payload.get("step_window", {}))
        self.metrics = kept_metrics(self.out, payload, write=self.dist.main)
        # The best of the logged whole evaluations, as the uninterrupted run had it.
        best = best_row(self.metrics)  # partial rows were dropped by kept_metrics
        self.best_error = math.inf if best is None else best[selection_key(best)]
        if self.dist.main:  # the numbers above are every rank's; the files are rank 0's
            restore_best_copy(self.checkpoints, best, payload["iteration"])
        # An iteration snapshot at an epoch's (or the run's) end, saved before its evaluation.
        self.evaluation_pending = payload["metrics"] is None and (
            self.iteration % self.iters_per_epoch == 0 or self.iteration == self.schedule.total
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
    CHOICES.reset(enabled=cfg.train.autotune)
    images, labels = _load_rows(cache, "train", plan.train_rows)
    if runtime.device.type == "cuda":  # the uint8 split lives on the GPU: no copy per batch
        images, labels = images.to(runtime.device), labels.to(runtime.device)
    eval_sets = {"val": _load_rows(cache, "val", None)}
    if len(plan.tune_rows):
        eval_sets["tune"] = _load_rows(cache, "train", plan.tune_rows)
    model = build_model(cfg, cache.num_classes, plan.eval_size)
    if cfg.train.sync_batch_norm and dist.active:  # before the optimiser: new parameters
        model = sync_batch_norm(model, runtime.device)
    model = runtime.prepare_model(model)
    iters_per_epoch = max(1, len(labels) // cfg.train.batch_size)
    rows = np.asarray(plan.train_rows, np.int64)
    session = Session(
        cfg=cfg,
        out=out,
        runtime=runtime,
        cache=cache,
        model=model,
        optimizer=build_optimizer(model, cfg.optim),
        norm=normalization_of(cfg, cache),
        train_images=images,
        train_labels=labels,
        eval_sets=eval_sets,
        eval_size=plan.eval_size,
        schedule=Schedule.build(cfg, iters_per_epoch, plan.eval_size, plan.flops_by_size),
        dist=dist,
        ema=make_ema(model) if cfg.train.ema_decay else None,
        train_rows_digest=hashlib.sha256(rows.tobytes()).hexdigest()[:16],
    )
    if resume:
        session.restore(out / "checkpoints" / "last.pt")
    if dist.main:  # step lines past the resume point (0 on a fresh start) are written again
        trim_steps(out, session.iteration)
    if not resume and plan.init is not None:  # checked against model and cache by plan_run
        model.load_state_dict(plan.init["model"]["state"])
        if session.ema is not None:
            session.ema.load_state_dict(model.state_dict())
    if cfg.train.tensorboard and dist.main:
        session.writer = tensorboard_writer_class()(str(out / "tensorboard"))
    built = build_step_model(  # in the resumed run's own precision (restore: keep_precision)
        model, cfg, session.schedule, plan.eval_size, session.runtime, dist, session.compile_choices
    )
    session.step_model = built.module
    session.compile_choices, session.compile_report = built.compile_choices, built.compile_report
    return session


def _load_rows(cache: Cache, split: str, rows: np.ndarray | None):
    data = cache.split(split)
    images = np.array(data.images) if rows is None else data.images[rows]  # into memory
    labels = data.labels if rows is None else data.labels[rows]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def _cpu_state(model: nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}

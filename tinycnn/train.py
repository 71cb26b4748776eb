"""``tinycnn train``: the training loop, its run folder, snapshots, interruption and resume.

The whole training split lives in memory as one uint8 tensor; a batch is an index slice,
augmented by batched tensor ops on the model's device; no DataLoader workers take cores from the
model. All randomness is derived from (train.seed, iteration), so a resumed run repeats exactly
what the uninterrupted one would have done.
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from tinycnn.atomic import write_text
from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import RunConfig, config_from_dict, to_toml
from tinycnn.data.augment import augment_batch
from tinycnn.errors import ConfigError
from tinycnn.optim import lr_at, set_lr
from tinycnn.runtime import make_runtime
from tinycnn.session import Session, TrainingDivergedError, load_session

__all__ = ["RunResult", "TrainingDivergedError", "train"]


@dataclass
class RunResult:
    run_dir: Path
    model: nn.Module
    metrics: list[dict] = field(default_factory=list)
    stopped: str = "finished"  # finished | interrupted | time budget
    iteration: int = 0


class _StopRequest:
    """Set by SIGINT/SIGTERM (or a test hook); the loop checks it between iterations."""

    def __init__(self, at_iteration: int | None = None) -> None:
        self.reason: str | None = None
        self.at_iteration = at_iteration

    def __call__(self, signum: int, _frame) -> None:
        if self.reason == "interrupted":  # a second Ctrl-C: stop now, without the checkpoint
            raise KeyboardInterrupt(f"signal {signum} again")
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
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    init_from: str | Path | None = None,
    progress: bool = True,
    stop_at_iteration: int | None = None,
) -> RunResult:
    """Train cfg's model on cfg.data.cache into the run folder ``out``; returns the trained model.

    resume: continue the run in ``out`` from its last checkpoint (cfg is then read from there).
    init_from: start from a checkpoint's weights with this config's (new) hyperparameters.
    stop_at_iteration: behave as if interrupted once this many iterations are done (tests).
    """
    out = Path(out)
    if resume:
        cfg = config_from_dict(_read_resolved_config(out)).validate()
    else:
        _preflight(cfg, init_from)  # every check before the run folder is made
        _new_run_dir(out, cfg)
    rt = make_runtime(
        cfg.train.device,
        cfg.train.precision,
        cfg.train.channels_last,
        cfg.train.threads,
        cfg.train.deterministic,
    )
    session = load_session(cfg, out, rt, init_from=init_from, resume=resume)
    stop = _StopRequest(stop_at_iteration)
    with _catch_signals(stop):
        return _loop(session, stop, progress)


def _preflight(cfg: RunConfig, init_from: str | Path | None) -> None:
    from tinycnn.checkpoint import load_checkpoint
    from tinycnn.data.cache import load_cache
    from tinycnn.session import build_model

    if not cfg.data.cache:
        raise ConfigError("data.cache is not set: pass --data CACHE (a tinycnn prepare folder)")
    cache = load_cache(cfg.data.cache)
    with torch.device("meta"):  # checks the model options without allocating anything
        build_model(cfg, cache.num_classes, cfg.augment.crop or 64, initialise=False)
    if init_from is not None:
        load_checkpoint(init_from)
    if cfg.train.tensorboard:
        from tinycnn.session import tensorboard_writer_class

        tensorboard_writer_class()


def _new_run_dir(out: Path, cfg: RunConfig) -> None:
    if (out / "checkpoints" / "last.pt").exists() or (out / "metrics.jsonl").exists():
        raise ConfigError(
            f"{out}: already holds a run; continue it with --resume {out}, or choose a new --out"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file; --out must be a run folder")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.toml", to_toml(cfg))


def _read_resolved_config(out: Path) -> dict:
    from tinycnn.config import tomllib

    path = out / "config.toml"
    if not path.is_file():
        raise ConfigError(f"{path}: missing, so {out} is not a run folder to resume")
    return tomllib.loads(path.read_text(encoding="utf-8"))


def _loop(s: Session, stop: _StopRequest, progress: bool) -> RunResult:
    cfg = s.cfg
    ipe, total = s.iters_per_epoch, s.total_iters
    start_time = time.perf_counter() - s.elapsed_before
    model = s.model
    model.train()
    while s.iteration < total:
        epoch = s.iteration // ipe
        perm = _epoch_order(cfg.train.seed, epoch, len(s.train_labels))
        bar = tqdm(
            total=ipe,
            initial=s.iteration % ipe,
            desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
            unit="it",
            disable=not progress,
            leave=False,
            dynamic_ncols=True,
        )
        epoch_start = time.perf_counter()
        with bar:
            while s.iteration < (epoch + 1) * ipe:
                pos = s.iteration % ipe
                rows = perm[pos * cfg.train.batch_size : (pos + 1) * cfg.train.batch_size]
                loss_value, wrong = _step(s, rows)
                s.accum.add(loss_value * len(rows), wrong, len(rows))
                s.iteration += 1
                rate = s.accum.seen / max(time.perf_counter() - epoch_start, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{rate:.0f}", refresh=False)
                bar.update()
                if cfg.train.snapshot_every and s.iteration % cfg.train.snapshot_every == 0:
                    s.save(f"iter-{s.iteration:07d}", time.perf_counter() - start_time)
                reason = _stop_reason(stop, s, start_time)
                if reason and s.iteration % ipe:  # at an epoch end, stop after its evaluation
                    return _stop(s, reason, start_time)
        s.end_epoch(time.perf_counter() - start_time, time.perf_counter() - epoch_start, progress)
        reason = _stop_reason(stop, s, start_time)
        if reason and s.iteration < total:
            s.close()  # end_epoch has just saved the resume point
            return RunResult(s.out, model, s.metrics, reason, s.iteration)
    s.close()
    return RunResult(s.out, model, s.metrics, "finished", s.iteration)


def _stop_reason(stop: _StopRequest, s: Session, start_time: float) -> str | None:
    if stop.at_iteration is not None and s.iteration >= stop.at_iteration:
        stop.reason = "interrupted"
    budget = s.cfg.train.max_minutes
    if budget and time.perf_counter() - start_time > budget * 60:
        return "time budget"
    return stop.reason


def _stop(s: Session, reason: str, start_time: float) -> RunResult:
    """Save the resume point mid-epoch; at a time budget also evaluate: that is the result."""
    elapsed = time.perf_counter() - start_time
    if reason == "time budget":
        s.end_epoch(elapsed, None, progress=False, partial=True)
    else:
        s.save("last", elapsed)
    s.close()
    return RunResult(s.out, s.model, s.metrics, reason, s.iteration)


def _epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


def _step(s: Session, rows: torch.Tensor) -> tuple[float, int]:
    """One optimisation step on the given training rows; returns (loss, wrong top-1 count)."""
    cfg, rt = s.cfg, s.runtime
    set_lr(
        s.optimizer,
        lr_at(s.iteration, s.iters_per_epoch, s.total_iters, cfg.optim.lr, cfg.schedule),
    )
    # Everything random in this step derives from (seed, iteration): exact resume, no RNG state.
    step_seed = (cfg.train.seed * 1_000_003 + s.iteration) % (2**63)
    torch.manual_seed(step_seed)
    generator = s.aug_generator.manual_seed(step_seed)
    images = s.train_images[rows].to(rt.device, non_blocking=True)
    labels = s.train_labels[rows].to(rt.device, non_blocking=True)
    x = augment_batch(images, cfg.augment, generator, s.norm)
    with rt.autocast():
        logits = s.model(x)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=cfg.optim.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    value = float(loss.detach())  # a sync per step: negligible on CPU, and it guards every update
    if not math.isfinite(value):
        s.diverged(value)
    s.optimizer.step()
    wrong = int((logits.argmax(dim=1) != labels).sum())
    return value, wrong


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch metrics of a run folder (the last line per epoch wins)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["iteration"]] = row
    return [rows[k] for k in sorted(rows)]


def checkpoint_config(path: str | Path) -> RunConfig:
    """The resolved config stored in a checkpoint (the base for --init-from runs)."""
    return config_from_dict(load_checkpoint(path)["config"]).validate()

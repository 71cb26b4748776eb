"""The stages at an epoch's end, in the order the loop calls them: evaluate -> row, save the
snapshots (epoch-NNN or last, best), record the row (metrics.jsonl, TensorBoard, the console);
and the step log's lines between them (steps.jsonl, train.log_every).

The kill points between the stages (faults.pause_point) are where a kill must leave a run that
resumes to exactly the uninterrupted result (tests/test_resume.py).
"""

from __future__ import annotations

import json

from tinycnn import faults
from tinycnn.advice import learning, not_learning_advice
from tinycnn.atomic import copy_file
from tinycnn.compute import PFLOP
from tinycnn.errors import TrainingDivergedError
from tinycnn.inference import predict_logits
from tinycnn.metrics import error_rates
from tinycnn.run_folder import METRICS, STEPS, append_line
from tinycnn.runtime import describe_hardware
from tinycnn.session import Session


def end_epoch(
    s: Session, elapsed: float, epoch_seconds: float | None, progress: bool, partial: bool = False
) -> dict:
    """Evaluate, snapshot (epoch-NNN or last, maybe best), log one metrics line; the row.

    partial: a stop before the schedule's end (the time budget). A compute budget may end
    the schedule itself mid-epoch: that evaluation is saved as last.pt, not partial.
    """
    row, counts = evaluate_epoch(s, elapsed, epoch_seconds, progress, partial)
    if not partial:  # a time-budget stop's sums stay: a resume continues the epoch
        s.close_epoch_sums()
    is_best = s.record(row)
    faults.pause_point("evaluated", s.iteration)
    save_epoch(s, row, elapsed, is_best)
    log_epoch(s, row, counts, progress)
    faults.pause_point("logged", s.iteration)
    return row


def evaluate_epoch(
    s: Session, elapsed: float, epoch_seconds: float | None, progress: bool, partial: bool
) -> tuple[dict, dict[str, int]]:
    """The epoch's metrics row, and the images behind each error (for the chance check)."""
    whole_epoch = s.iteration % s.iters_per_epoch == 0
    row = {
        "epoch": s.iteration // s.iters_per_epoch
        if whole_epoch
        else s.iteration / s.iters_per_epoch,
        "iteration": s.iteration,
        "lr": s.optimizer.param_groups[0]["lr"],
        "train_loss": s.accum.loss_sum / max(s.accum.seen, 1),
        "train_top1_error": s.accum.wrong / max(s.accum.seen, 1),
        # Cumulative training compute (PFLOP = 1e15): every step sees batch_size images.
        "train_pflop": s.flops_done / PFLOP,
        "input_size": s.schedule.input_size_at(max(s.iteration - 1, 0)),
    }
    counts = {"train": s.accum.seen}
    for name, (images, labels) in s.eval_sets.items():
        logits = predict_logits(
            s.model_for_use(),
            images,
            s.runtime,
            size=s.eval_size,
            resize=s.resize(),
            norm=s.norm,
            batch_size=s.cfg.train.eval_batch_size,
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
        images_per_second=s.accum.seen / epoch_seconds if epoch_seconds else None,
        precision=s.runtime.precision,
        hardware=describe_hardware(s.runtime, s.dist.world),  # x N processes under torchrun
        partial_epoch=partial,
        schedule_done=s.iteration >= s.schedule.total,  # the run's last evaluation
    )
    return row, counts


def save_epoch(s: Session, row: dict, elapsed: float, is_best: bool) -> None:
    """The epoch's snapshot (epoch-NNN; last.pt mid-epoch), and its copy to best.pt."""
    whole_epoch = s.iteration % s.iters_per_epoch == 0
    name = f"epoch-{row['epoch']:03d}" if whole_epoch else "last"
    path = s.save(name, elapsed, row)
    faults.pause_point("saved", s.iteration)
    if is_best and s.dist.main:
        copy_file(path, s.checkpoints / "best.pt")
    faults.pause_point("best", s.iteration)


def log_epoch(s: Session, row: dict, counts: dict[str, int], progress: bool) -> None:
    """The row into metrics.jsonl and TensorBoard; one console line, and the warning when the
    first epoch shows no learning."""
    if s.dist.main:
        append_line(s.out / METRICS, json.dumps(row))
    if s.writer is not None:
        for key, value in row.items():
            if isinstance(value, float):
                s.writer.add_scalar(key, value, row["iteration"])
    if not progress:
        return
    tune = f", tune top-1 {row['tune_top1_error']:.2%}" if "tune_top1_error" in row else ""
    print(
        f"epoch {epoch_text(row['iteration'], s.iters_per_epoch)}: train loss "
        f"{row['train_loss']:.3f}, val top-1 error "
        f"{row['val_top1_error']:.2%}, top-5 {row['val_top5_error']:.2%}{tune} "
        f"({row['seconds'] or 0:.0f} s)",
        flush=True,
    )
    classes = s.cache.num_classes
    if row["epoch"] == 1 and not learning(row, counts, classes):
        print(not_learning_advice(row, counts, s.cfg, classes), flush=True)


def epoch_text(iteration: int, iters_per_epoch: int) -> str:
    """Epochs done at an iteration, for people: "12", or "12.09" when the run ended mid-epoch
    (a budget): hundredths cut, never rounded up to an epoch that was not finished."""
    whole, rest = divmod(iteration, iters_per_epoch)
    return str(whole) if not rest else f"{whole}.{rest * 100 // iters_per_epoch:02d}"


def log_step(s: Session, elapsed: float) -> None:
    """One steps.jsonl line: the training loss and error since the last one (train.log_every).

    Dropout and augmentation are on, as in the epoch's train_loss; the window's sums are kept
    in checkpoints, so a resumed run writes the lines of an uninterrupted one.
    """
    window = s.take_window()
    if not s.dist.main or not window.seen:
        return
    row = {
        "iteration": s.iteration,
        "epoch": round(s.iteration / s.iters_per_epoch, 4),
        "lr": s.optimizer.param_groups[0]["lr"],
        "train_loss": window.loss_sum / window.seen,
        "train_top1_error": window.wrong / window.seen,
        "images": window.seen,
        "train_pflop": s.flops_done / PFLOP,
        "elapsed_seconds": elapsed,
    }
    append_line(s.out / STEPS, json.dumps(row))
    if s.writer is not None:
        for key in ("train_loss", "train_top1_error", "lr"):
            s.writer.add_scalar(f"steps/{key}", row[key], s.iteration)


def diverged(s: Session, value: float) -> TrainingDivergedError:
    """The error that stops a run whose loss is no longer finite (the writer closed)."""
    last = s.checkpoints / "last.pt"
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint yet"
    s.close()
    return TrainingDivergedError(
        f"loss became {value} at iteration {s.iteration} (epoch "
        f"{s.iteration // s.iters_per_epoch + 1}); stopped, {kept}. Lower optim.lr "
        "or use warm-up (schedule.warmup_epochs)"
    )

"""A resumed run's folder brought back to its resume point, as the uninterrupted run had it.

The logs may run past the checkpoint a kill left (lines written after it) or miss its own line
(a kill between the checkpoint and the line); best.pt may lag its copy. These functions make the
folder say exactly what the run did up to the resume point; rank 0 writes, every rank reads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tinycnn.atomic import copy_file, write_text
from tinycnn.checkpoint import load_checkpoint
from tinycnn.errors import ConfigError, RunFolderError
from tinycnn.models.registry import model_options
from tinycnn.run_folder import METRICS, STEPS, read_metrics, read_steps, time_budget_end


def kept_metrics(out: Path, payload: dict, write: bool = True) -> list[dict]:
    """Metrics lines up to the resume point; the checkpoint's own line if the log missed it.

    Lines of a time-budget stop's partial evaluation are dropped: the resumed run goes on from
    that point, and an uninterrupted run has no such line. write: also rewrite metrics.jsonl.
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
    rows = sorted([*rows, *_snapshot_rows(out, payload, rows)], key=lambda r: r["iteration"])
    _check_best(out, payload, rows)
    if write:
        _write_rows(out / METRICS, rows)
    return rows


def _snapshot_rows(out: Path, payload: dict, rows: list[dict]) -> list[dict]:
    """The rows of whole epochs up to the resume point that metrics.jsonl lacks (a lost or cut
    file), from their epoch snapshots, which hold their own row; none where the log is whole."""
    epochs = {int(r["epoch"]) for r in rows if float(r["epoch"]).is_integer()}
    found = []
    for path in sorted((out / "checkpoints").glob("epoch-*.pt")):
        number = path.stem.removeprefix("epoch-")
        if not number.isdigit() or int(number) in epochs or int(number) > payload["epoch"]:
            continue
        row = load_checkpoint(path)["metrics"]
        if row and not row.get("partial_epoch") and row["iteration"] <= payload["iteration"]:
            found.append(row)
    return found


def _check_best(out: Path, payload: dict, rows: list[dict]) -> None:
    """RunFolderError naming metrics.jsonl when its rows cannot give the best error the
    checkpoint saw: best.pt would go back to a worse model, the history would be short."""
    seen = payload.get("best_error")  # absent before the format had it
    own = payload["metrics"]
    if seen is None or not math.isfinite(seen) or (own and own.get("partial_epoch")):
        return  # a budget's partial evaluation may hold the best, and is dropped on resume
    best = best_row(rows)
    if best is None or best[selection_key(best)] != seen:
        logged = "none" if best is None else f"{best[selection_key(best)]:.4%}"
        raise RunFolderError(
            f"{out / METRICS}: lacks the evaluation with the best error this run saw "
            f"({seen:.4%}; the best of its lines: {logged}), and no epoch snapshot holds it: "
            "the file was cut or replaced. Restore it from a copy, or train the run again "
            "(resuming would make best.pt a worse model)"
        )


def check_budget_left(out: Path, payload: dict, minutes: float) -> None:
    """ConfigError when train.max_minutes has ended the run at this resume point (or its time
    is spent) and has not been raised since; checked before a resume rewrites anything."""
    if not minutes:
        return
    ended = time_budget_end(out)
    stopped = ended is not None and ended["iteration"] == payload["iteration"]
    used = payload["elapsed_seconds"] / 60
    if used >= minutes or (stopped and minutes <= ended["max_minutes"]):
        # A budget that goes on: past the minutes trained and past the budget that stopped it.
        floor = max(used, ended["max_minutes"] if stopped else 0.0)
        raise ConfigError(
            f"{out}: the run has used its whole train.max_minutes = {minutes:g} budget "
            f"({used:.4g} minutes trained; {out / 'config.toml'}); to train on, give it more: "
            f"tinycnn train --resume {out} --set train.max_minutes=M "
            f"(M > {_minutes_up(floor)}, the whole run's minutes)"
        )


def _minutes_up(minutes: float) -> str:
    """Minutes rounded up to the hundredth, without trailing zeros: 12345.641 -> "12345.65"."""
    return f"{math.ceil(minutes * 100) / 100:.2f}".rstrip("0").rstrip(".")


def trim_steps(out: Path, iteration: int) -> None:
    """steps.jsonl up to ``iteration``: a resumed run writes the later lines again."""
    if (out / STEPS).exists():
        _write_rows(out / STEPS, [r for r in read_steps(out) if r["iteration"] <= iteration])


def _write_rows(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def selection_key(row: dict) -> str:
    """The metric that picks best.pt: the tuning split's top-1 error if there is one, else val."""
    return "tune_top1_error" if "tune_top1_error" in row else "val_top1_error"


def best_row(rows: list[dict]) -> dict | None:
    """The best of the logged whole evaluations; the first of equal errors (a strict <, as the
    run itself picks best.pt)."""
    best = None
    for row in rows:
        if best is None or row[selection_key(row)] < best[selection_key(best)]:
            best = row
    return best


def restore_best_copy(checkpoints: Path, best: dict | None, resume_iteration: int) -> None:
    """best.pt as the uninterrupted run had it at the resume point.

    A time-budget stop's partial evaluation is no longer part of the run once it goes on, so it
    cannot stay the best; and a kill between a checkpoint and its copy to best.pt leaves the
    copy to make here.
    """
    path = checkpoints / "best.pt"
    if best is None:
        path.unlink(missing_ok=True)
        return
    if path.exists() and load_checkpoint(path)["iteration"] == best["iteration"]:
        return
    # As the run copies it (epochs.save_epoch): a whole epoch's snapshot (written before
    # last.pt, so there at the resume point too), or last.pt where a budget ended mid-epoch.
    snapshot = checkpoints / f"epoch-{int(best['epoch']):03d}.pt"
    whole_epoch = float(best["epoch"]).is_integer()
    mid_epoch = best["iteration"] == resume_iteration and not whole_epoch
    copy_file(checkpoints / "last.pt" if mid_epoch else snapshot, path)


def apply_retention(checkpoints: Path, keep: int) -> None:
    """Keep the newest ``keep`` iteration snapshots (0: all); epoch snapshots always stay (the
    paper's snapshot-ensemble members)."""
    if not keep:
        return
    snapshots = sorted(checkpoints.glob("iter-*.pt"))  # zero-padded: name order
    for old in snapshots[:-keep]:
        old.unlink(missing_ok=True)


# Settings a resumed run may change in its config.toml: where things are (the checks that
# matter are the data's own: data_id, train_rows), its time budget, and what it writes.
RESUME_MAY_CHANGE = {
    "data.cache", "data.exclude", "train.init_from", "train.max_minutes", "train.threads",
    "train.tensorboard", "train.keep_snapshots", "train.eval_batch_size", "train.log_every",
}  # fmt: skip
# Those `tinycnn train --resume RUN --set KEY=VALUE` changes (and records in config.toml); the
# paths are --data's (data.cache) or fixed with the run's training rows.
RESUME_SET_KEYS = tuple(
    sorted(RESUME_MAY_CHANGE - {"data.cache", "data.exclude", "train.init_from"})
)


def _with_model_defaults(config: dict) -> dict:
    """config with its [model] options completed by the model's defaults (when it is known)."""
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    try:
        defaults = model_options(model.get("name", ""))
    except ConfigError:  # a model this tinycnn does not know: compared as written
        return config
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
    return {**config, "model": {**defaults, **model}}


def _changes(saved: dict, config: dict) -> list[str]:
    """'section.key = now (the run trained with before)' for each setting both configs hold
    that differs (a key in one only is another tinycnn version's field; model options are
    complete on both sides, _with_model_defaults)."""
    return [
        f"{section}.{key} = {config[section][key]!r} (the run trained with {value!r})"
        for section, values in saved.items()
        if isinstance(values, dict) and isinstance(config.get(section), dict)
        for key, value in values.items()
        if key in config[section]
        and f"{section}.{key}" not in RESUME_MAY_CHANGE
        and config[section][key] != value
    ]


def check_same_run(path: Path, payload: dict, config: dict, rows_digest: str) -> None:
    """Refuse a resume whose config (config.toml, edited or damaged) or training rows (another
    data.exclude list, holdout) differ from what the checkpoint trained with.

    Model options are compared as the model resolves them: an option set in one config and
    left out of the other stands at the model's default there (deleting ``dropout = 0.3``
    would resume with 0.5).
    """
    changed = _changes(
        _with_model_defaults(payload.get("config", {})), _with_model_defaults(config)
    )
    if changed:
        raise ConfigError(
            f"{path.parent.parent / 'config.toml'}: not the config {path} trained with: "
            f"{'; '.join(changed[:5])}; put it back, or train afresh in a new folder "
            "(--init-from starts from these weights)"
        )
    if payload.get("train_rows") and payload["train_rows"] != rows_digest:
        raise ConfigError(
            f"{path}: the run trained on other training images than the config gives now "
            "(data.exclude's list or the holdout changed); put the list back as it was, or "
            "train afresh in a new folder"
        )

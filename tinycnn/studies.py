"""``tinycnn experiment``: train several presets as ordinary run folders, then tabulate them.

Each CONFIG becomes DIR/NAME (NAME: the file's stem). Running the same command again skips
finished runs and resumes interrupted ones, so a study survives being stopped at any point.
The table puts our tuning and val errors, training compute and time beside the paper's figures
for configs/paper presets, as DIR/table.md and DIR/table.json.
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from tinycnn import distributed
from tinycnn.analysis import build_report
from tinycnn.atomic import write_text
from tinycnn.checkpoint import load_checkpoint
from tinycnn.compute import PFLOP, training_flops_per_image
from tinycnn.config import RunConfig, config_to_dict, load_config, set_string
from tinycnn.crops import fit_crop
from tinycnn.data.cache import load_cache
from tinycnn.ensembles import DEFAULT_PROB_CACHE
from tinycnn.errors import ConfigError, Interrupted
from tinycnn.run_folder import read_metrics, read_resolved_config, time_budget_end
from tinycnn.run_plan import build_model, training_rows
from tinycnn.schedule import Schedule
from tinycnn.study_table import ensemble_rows, format_table, table_row
from tinycnn.training import RunResult, train


def run_experiments(
    configs: list[str | Path],
    cache: str | Path,
    out: str | Path,
    *,
    epochs_scale: float = 1.0,
    budget_pflop: float = 0.0,
    holdout_per_class: int | None = None,
    report: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Train (or resume, or skip) each config into out/NAME; returns the table's rows, the
    paper's ensembles after the trained rows (ensemble_rows: from the runs, no training).

    epochs_scale: multiplies every config's train.epochs (at least 1), for quick studies.
    budget_pflop: shrinks every config's whole schedule to this many PFLOP (scale_to_budget).
    holdout_per_class: the tuning split of every run (None: each config's own).
    report: also write the analysis report of all the runs (and their ensemble) in out/report.
    """
    out = Path(out)
    names = [Path(c).stem for c in configs]
    _check_study(names, epochs_scale, budget_pflop)
    overrides = [set_string("data.cache", cache)]
    if holdout_per_class is not None:
        overrides.append(f"data.holdout_per_class={holdout_per_class}")
    # Under torchrun every rank trains each run (rank 0 writes it); rank 0 alone tabulates,
    # prints and writes the report, whose passes the ranks share.
    main = _join_torchrun().main
    say = progress and main
    # Every preset read and checked before any trains: a typo in the last is not found hours in.
    cfgs = [_study_config(c, overrides, epochs_scale, budget_pflop) for c in configs]
    rows = []
    for config, name, cfg in zip(configs, names, cfgs, strict=True):
        run, result = out / name, None
        if (run / "config.toml").is_file():  # trained before: with this study's options?
            _check_same_row(run, cfg, config)
        if _finished(run):
            if say:
                print(f"{name}: finished earlier, {run}", flush=True)
        elif (run / "config.toml").is_file():
            if say:
                print(f"{name}: resuming {run}", flush=True)
            result = train(None, run, resume=True, progress=progress)
        else:
            result = train(cfg, run, progress=progress)
        _stop_if_interrupted(name, result, main)
        distributed.barrier()  # rank 0 has written the run's last metrics line
        rows.append(table_row(name, Path(config), run))
    # No probability cache under torchrun: a hit on one rank only would leave the others
    # waiting in a gather (as in the CLI's sharded commands).
    prob_cache = None if distributed.current().active else DEFAULT_PROB_CACHE
    rows += ensemble_rows(rows, out, cache, prob_cache, progress=say)
    if main:
        write_text(out / "table.json", json.dumps(rows, indent=1) + "\n")
        write_text(out / "table.md", format_table(rows))
    distributed.barrier()  # every rank's report reads the study's table.json
    if report:
        _study_report(out, cache, prob_cache, main, say)
    return rows


def _check_study(names: list[str], epochs_scale: float, budget_pflop: float) -> None:
    """ConfigError for two configs of one name, or a scale or budget out of range."""
    if len(set(names)) != len(names):
        raise ConfigError(f"two configs share a name ({', '.join(names)}); rename one")
    if not (math.isfinite(epochs_scale) and epochs_scale > 0):
        raise ConfigError(f"--epochs-scale {epochs_scale}: must be a positive number")
    if not (math.isfinite(budget_pflop) and budget_pflop >= 0):
        raise ConfigError(f"--budget-pflop {budget_pflop}: must be a positive number (or 0)")


# What the study's options (--epochs-scale, --budget-pflop, --holdout-per-class) set in a row's
# config: a rerun with other options must not reuse, or resume, a row trained with these.
_STUDY_KEYS = (
    ("train", "epochs"),
    ("train", "max_pflop"),
    ("train", "snapshot_every"),
    ("schedule", "step_epochs"),
    ("schedule", "warmup_epochs"),
    ("data", "holdout_per_class"),
)


# Keys of a row's config that say where or how it runs, not what it trains: they may differ.
_WHERE_KEYS = {
    ("data", "cache"),  # the data is compared by content below
    ("data", "exclude"),
    ("train", "init_from"),
    ("train", "max_minutes"),  # raised to resume a run its time budget stopped
    ("train", "threads"),
    ("train", "device"),
    ("train", "tensorboard"),
    ("train", "log_every"),
    ("train", "eval_batch_size"),
    ("train", "keep_snapshots"),
}


def _check_same_row(run: Path, cfg: RunConfig, config: str | Path) -> None:
    """ConfigError when the row in ``run`` was trained with other study options, another
    preset (``config`` edited since), or on other data, than ``cfg`` (the row as this study
    would train it): its figures would stand in this study's table under this command."""
    trained = read_resolved_config(run)
    wanted = config_to_dict(cfg)
    for section, key in _STUDY_KEYS:
        old, new = trained.get(section, {}).get(key), wanted[section][key]
        if not _same(old, new):
            raise ConfigError(
                f"{run}: trained with {section}.{key} = {old!r}, this study gives it {new!r} "
                "(--epochs-scale, --budget-pflop and --holdout-per-class set it); run the study "
                "with the options it was trained with, or give another --out"
            )
    for section, values in wanted.items():
        for key, new in values.items():
            had = trained.get(section, {})
            if (section, key) in _WHERE_KEYS or key not in had:  # not in older run folders
                continue
            if (section, key) == ("augment", "crop") and new is None:  # fitted when trained
                continue
            if not _same(had[key], new):
                raise ConfigError(
                    f"{run}: trained with {section}.{key} = {had[key]!r}, {config} now gives "
                    f"{new!r}; give another --out for the changed preset, or restore it"
                )
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        data_id = load_checkpoint(last).get("data_id")
        if data_id and not load_cache(cfg.data.cache).has_content_id(data_id):
            raise ConfigError(
                f"{run}: trained on other data than {cfg.data.cache}; run the study on the "
                "cache it was trained on, or give another --out"
            )


def _same(old: object, new: object) -> bool:
    """Equal values, numbers within rounding (a TOML file's float against a computed one)."""
    if isinstance(old, list) and isinstance(new, list | tuple):
        return len(old) == len(new) and all(map(_same, old, new))
    numbers = isinstance(old, int | float) and isinstance(new, int | float)
    numbers = numbers and not isinstance(old, bool) and not isinstance(new, bool)
    return old == new or (numbers and math.isclose(old, new, rel_tol=1e-9, abs_tol=1e-12))


def _stop_if_interrupted(name: str, result: RunResult | None, main: bool) -> None:
    """Raise Interrupted when Ctrl-C or SIGTERM stopped the run: it stops the study, not just
    this run (rank 0 says where, and how to resume)."""
    if result is not None and result.signal is not None:
        if main:
            print(
                f"{name}: stopped at iteration {result.iteration}, checkpoint kept; run the "
                "same command to resume the study",
                file=sys.stderr,
                flush=True,
            )
        raise Interrupted(result.signal)


def _study_config(
    config: str | Path, overrides: list[str], epochs_scale: float, budget_pflop: float
) -> RunConfig:
    """A study row's config: the preset with the study's overrides, epochs and budget."""
    cfg = load_config(config, overrides)
    epochs = max(1, round(cfg.train.epochs * epochs_scale))
    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    return scale_to_budget(cfg, budget_pflop) if budget_pflop else cfg


def _study_report(
    out: Path, cache: str | Path, prob_cache: Path | None, main: bool, progress: bool
) -> None:
    """The analysis report of the study folder (its runs; its table leads section 1)."""
    with tempfile.TemporaryDirectory(prefix="tinycnn-report-") as scratch:
        build_report(
            [str(out)],
            cache,
            out / "report" if main else Path(scratch),  # the other ranks' figures: scratch
            scan_train=2000,
            prob_cache=prob_cache,
            progress=progress,
        )


def scale_to_budget(cfg: RunConfig, pflop: float) -> RunConfig:
    """cfg with its whole schedule shrunk to ``pflop`` PFLOP of training, its shape kept.

    The preset's own cost is that of the run it plans (Schedule.build: its epochs at each
    progressive-resizing side, cut where its own train.max_pflop ends it). The factor r = pflop
    / that cost scales the run's length (the epochs, rounded up), the step schedule's
    step_epochs, the warm-up and train.snapshot_every alike, and train.max_pflop ends the run on
    the budget: a step schedule of 40 epochs with a step every 10 keeps its 4 phases. A config
    that costs no more than the budget is returned unchanged.
    """
    cache = load_cache(cfg.data.cache)
    image_side = cache.image_size
    fitted = fit_crop(cfg, image_side, cache.num_classes)
    crop = fitted.augment.crop or image_side
    with torch.device("meta"):
        model = build_model(fitted, cache.num_classes, crop, initialise=False)
    flops = {side: training_flops_per_image(model, side) for side in {crop, *cfg.augment.sizes}}
    # An epoch is whole batches, at least one (as Session has it).
    iters_per_epoch = max(1, len(training_rows(cfg, cache)[0]) // cfg.train.batch_size)
    planned = Schedule.build(fitted, iters_per_epoch, crop, flops)
    cost = planned.flops_until(planned.total) / PFLOP
    if cost <= pflop:
        return cfg
    step = planned.flops_until(1) / PFLOP
    if pflop < step:  # a run is at least one step: it would spend many times the budget
        raise ConfigError(
            f"--budget-pflop {pflop:g}: less than one training step of {cfg.model.name} here "
            f"({step:.3g} PFLOP); give at least that"
        )
    r = pflop / cost
    train_cfg = replace(
        cfg.train,
        epochs=max(1, math.ceil(planned.total * r / iters_per_epoch)),
        max_pflop=pflop,
        snapshot_every=max(1, round(cfg.train.snapshot_every * r))
        if cfg.train.snapshot_every
        else 0,
    )
    schedule = replace(
        cfg.schedule,
        step_epochs=cfg.schedule.step_epochs * r,
        warmup_epochs=cfg.schedule.warmup_epochs * r,
    )
    return replace(cfg, train=train_cfg, schedule=schedule)


def _join_torchrun() -> distributed.Dist:
    """Under torchrun, join the process group before any run (all may be finished already,
    and the report's passes gather over it); on the device train.device = "auto" picks."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return distributed.init(distributed.local_device(device))


def _finished(run: Path) -> bool:
    """True when the run's last evaluation is its schedule's end (not a stop on the way)."""
    rows = read_metrics(run)
    if not rows or not (run / "config.toml").is_file():
        return False
    ended = time_budget_end(run)  # train.max_minutes ended it: that is the row's result
    if ended is not None and ended["iteration"] == rows[-1]["iteration"]:
        return True
    if rows[-1].get("partial_epoch"):
        return False
    if "schedule_done" in rows[-1]:
        return rows[-1]["schedule_done"]
    # Runs from before schedule_done: a compute budget that ends the schedule on an epoch's
    # end looks unfinished here (it resumes to finish at once).
    epochs = read_resolved_config(run)["train"]["epochs"]
    epoch = rows[-1]["epoch"]
    return epoch == epochs or not float(epoch).is_integer()  # a compute budget ends mid-epoch

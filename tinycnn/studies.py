"""``tinycnn experiment``: train several presets as ordinary run folders, then tabulate them.

Each CONFIG becomes DIR/NAME (NAME: the file's stem). Running the same command again skips
finished runs and resumes interrupted ones, so a study survives being stopped at any point.
The table puts our tuning and val errors, training compute and time beside the paper's figures
for configs/paper presets, as DIR/table.md and DIR/table.json.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from tinycnn import distributed
from tinycnn.analysis import build_report
from tinycnn.analysis.experiments import identify_preset, paper_figure
from tinycnn.atomic import write_text
from tinycnn.compute import PFLOP, training_flops_per_image
from tinycnn.config import RunConfig, load_config
from tinycnn.data.cache import load_cache
from tinycnn.ensembles import DEFAULT_PROB_CACHE
from tinycnn.errors import ConfigError
from tinycnn.run_folder import read_metrics, read_resolved_config
from tinycnn.session import build_model, training_rows
from tinycnn.training import train

COLUMNS = (
    "name",
    "model",
    "config",
    "epochs",
    "train_pflop",
    "train_minutes",
    "hardware",
    "tuning_top1_error",
    "val_top1_error",
    "val_top5_error",
    "paper_val_error",
    "paper_test_error",
)


def run_experiments(
    configs: list[str | Path],
    cache: str | Path,
    out: str | Path,
    *,
    epochs_scale: float = 1.0,
    report: bool = True,
    progress: bool = True,
) -> list[dict]:
    """Train (or resume, or skip) each config into out/NAME; returns the table's rows.

    epochs_scale: multiplies every config's train.epochs (at least 1), for quick studies.
    report: also write the analysis report of all the runs (and their ensemble) in out/report.
    """
    out = Path(out)
    names = [Path(c).stem for c in configs]
    if len(set(names)) != len(names):
        raise ConfigError(f"two configs share a name ({', '.join(names)}); rename one")
    if epochs_scale <= 0:
        raise ConfigError(f"--epochs-scale {epochs_scale}: must be a positive number")
    # Under torchrun every rank trains each run (rank 0 writes it); rank 0 alone tabulates,
    # prints and writes the report, whose passes the ranks share.
    main = _join_torchrun().main
    say = progress and main
    rows = []
    for config, name in zip(configs, names, strict=True):
        run = out / name
        if not _finished(run):
            if (run / "config.toml").is_file():
                if say:
                    print(f"{name}: resuming {run}", flush=True)
                train(None, run, resume=True, progress=progress)
            else:
                cfg = load_config(config, [f"data.cache={json.dumps(str(cache))}"])
                epochs = max(1, round(cfg.train.epochs * epochs_scale))
                cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
                train(cfg, run, progress=progress)
        elif say:
            print(f"{name}: finished earlier, {run}", flush=True)
        distributed.barrier()  # rank 0 has written the run's last metrics line
        rows.append(table_row(name, Path(config), run))
    if main:
        write_text(out / "table.json", json.dumps(rows, indent=1) + "\n")
        write_text(out / "table.md", format_table(rows))
    if report:
        runs = [str(out / name) for name in names]
        with tempfile.TemporaryDirectory(prefix="tinycnn-report-") as scratch:
            build_report(
                runs,
                cache,
                out / "report" if main else Path(scratch),  # the other ranks' figures: scratch
                scan_train=2000,
                # No probability cache under torchrun: a hit on one rank only would leave the
                # others waiting in a gather (as in the CLI's sharded commands).
                prob_cache=None if distributed.current().active else DEFAULT_PROB_CACHE,
                progress=say,
            )
    return rows


def scale_to_budget(cfg: RunConfig, pflop: float) -> RunConfig:
    """cfg with its whole schedule shrunk to ``pflop`` PFLOP of training, its shape kept.

    The factor r = pflop / (the full schedule's PFLOP) scales the epochs (rounded up), the step
    schedule's step_epochs, the warm-up and train.snapshot_every alike, and train.max_pflop ends
    the run on the budget: a step schedule of 40 epochs with a step every 10 keeps its 4 phases.
    A config whose full schedule costs no more than the budget is returned unchanged.
    """
    cache = load_cache(cfg.data.cache)
    crop = cfg.augment.crop or cache.manifest.get("image_size", 64)
    with torch.device("meta"):
        model = build_model(cfg, cache.num_classes, crop, initialise=False)
    images = len(training_rows(cfg, cache)[0]) // cfg.train.batch_size * cfg.train.batch_size
    full = cfg.train.epochs * images * training_flops_per_image(model, crop) / PFLOP
    if full <= pflop:
        return cfg
    r = pflop / full
    train_cfg = replace(
        cfg.train,
        epochs=max(1, math.ceil(cfg.train.epochs * r)),
        max_pflop=pflop,
        snapshot_every=round(cfg.train.snapshot_every * r) if cfg.train.snapshot_every else 0,
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
    if not rows or rows[-1].get("partial_epoch") or not (run / "config.toml").is_file():
        return False
    epochs = read_resolved_config(run)["train"]["epochs"]
    epoch = rows[-1]["epoch"]
    return epoch == epochs or not float(epoch).is_integer()  # a compute budget ends mid-epoch


def table_row(name: str, config: Path, run: Path) -> dict:
    """One row of the study's table, from the run folder's resolved config and metrics."""
    resolved = read_resolved_config(run)
    last = read_metrics(run)[-1]
    preset = identify_preset(resolved)
    paper = paper_figure(preset) or {}
    return {
        "name": name,
        "model": resolved["model"]["name"],
        "config": str(config),
        "epochs": last["epoch"],
        "train_pflop": last.get("train_pflop"),
        "train_minutes": last["elapsed_seconds"] / 60,
        "hardware": last.get("hardware", "not recorded"),
        "tuning_top1_error": last.get("tune_top1_error"),
        "val_top1_error": last["val_top1_error"],
        "val_top5_error": last["val_top5_error"],
        "paper_val_error": paper.get("val", 0) / 100 if paper else None,
        "paper_test_error": paper.get("test", 0) / 100 if paper else None,
    }


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table; error rates in percent, PFLOP and minutes as numbers.

    The paper's val error corresponds to our tuning split, its test error to our val split.
    """

    def cell(row: dict, key: str) -> str:
        value = row.get(key)
        if value is None:
            return "-"
        if key.endswith("_error"):
            return f"{value:.2%}"
        if isinstance(value, float):
            return f"{value:.3g}"
        return str(value)

    lines = [
        "Error rates in percent. The paper's val error stands beside our tuning split, its test",
        "error beside our val split (the official val split, never used for tuning).",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    lines += ["| " + " | ".join(cell(row, key) for key in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"

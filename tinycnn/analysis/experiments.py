"""The experiments table and training curves: what each member is, how it was trained, and the
paper's own figure for runs made from a ``configs/paper`` preset.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tinycnn.checkpoint import load_checkpoint
from tinycnn.config import config_to_dict, load_config
from tinycnn.errors import ConfigError, TinycnnError
from tinycnn.members import resolve_members
from tinycnn.run_folder import read_metrics

# The paper's results table (PAPER.md, section 6), error in percent: preset -> (row, val, test).
# Its val split played the part of our held-out tuning split, its test that of our val split.
PAPER_RESULTS = {
    "shallow": ("Shallow model", 82.5, 83.1),
    "cnn5": ("5 layer CNN", 77.6, 77.8),
    "paper8_nodropout": ("8 layer CNN", 67.4, 67.3),
    "paper8_l2_1e-4": ("8 layer CNN, dropout, lambda 1e-4", 63.6, 63.3),
    "paper8_l2_3e-4": ("8 layer CNN, dropout, lambda 3e-4", 59.5, 60.0),
    "paper8_l2_5e-4": ("8 layer CNN, dropout, lambda 5e-4", 58.0, 58.2),
}
PAPER_ENSEMBLE = ("3 8-layer CNNs, ensemble", 56.9, 56.7)
PRESETS = Path(__file__).resolve().parents[2] / "configs" / "paper"
# Config keys that say how a run was executed or how long, not which recipe it follows.
_EXECUTION_KEYS = {
    "data": {"cache", "holdout_per_class", "holdout_seed", "exclude"},
    "train": {
        "epochs",
        "seed",
        "device",
        "precision",
        "channels_last",
        "deterministic",
        "threads",
        "eval_batch_size",
        "snapshot_every",
        "keep_snapshots",
        "max_minutes",
        "max_pflop",
        "tensorboard",
        "init_from",
    },
}
# Schedule lengths in epochs: a run shrunk to a budget scales them all by one factor.
_LENGTH_KEYS = ("step_epochs", "warmup_epochs")


@dataclass
class Member:
    """One checkpoint of the report, with what its run folder says about it."""

    spec: str  # the member spec that named it
    checkpoint: Path
    run: Path | None  # the run folder, None for a bare checkpoint file
    label: str  # "run" or "run@epoch-003": short, unique within a report
    payload: dict  # the checkpoint's metadata (no weights)


def run_folder(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (RUN/checkpoints/X.pt), or None."""
    parent = checkpoint.parent
    if parent.name == "checkpoints" and (parent.parent / "config.toml").is_file():
        return parent.parent
    return None


def member_label(checkpoint: Path, run: Path | None, single: bool) -> str:
    """A short name: the run folder's name, plus the snapshot when a run gives several."""
    if run is None:
        return checkpoint.name
    return run.name if single else f"{run.name}@{checkpoint.stem}"


@cache
def _preset_configs() -> dict[str, dict]:
    """Each paper preset's resolved config (dict), read once; empty outside a source checkout."""
    found = {}
    for path in sorted(PRESETS.glob("*.toml")):
        try:
            found[path.stem] = config_to_dict(load_config(path))
        except TinycnnError:  # a preset this tinycnn cannot read: no comparison for it
            continue
    return found


def _recipe(config: dict) -> dict:
    ignored = {**_EXECUTION_KEYS, "schedule": _LENGTH_KEYS}
    return {
        section: {k: v for k, v in values.items() if k not in ignored.get(section, ())}
        for section, values in config.items()
        if isinstance(values, dict)
    }


def _lengths_scaled(config: dict, preset: dict) -> bool:
    """Whether the schedule's lengths in epochs (the lr step, the warm-up) are the preset's
    times one factor: 1 as written, below 1 shrunk to a compute budget (studies.scale_to_budget)."""
    ours, theirs = config.get("schedule", {}), preset.get("schedule", {})
    pairs = [(ours.get(key, 0), theirs.get(key, 0)) for key in _LENGTH_KEYS]
    if any(mine and not its for mine, its in pairs):
        return False
    ratios = [mine / its for mine, its in pairs if its]
    return all(r > 0 and math.isclose(r, ratios[0], rel_tol=1e-9) for r in ratios)


def identify_preset(config: dict) -> str | None:
    """The configs/paper preset whose recipe a run's resolved config follows, or None.

    Two configs follow the same recipe when every key agrees except those of execution and
    length (device, threads, seeds, cache, epochs, ...), and the schedule's step and warm-up are
    the preset's or shrunk by one factor (``--budget-pflop``): a shortened run of a preset is
    still that preset, and the epochs column says how far it went.
    """
    recipe = _recipe(config)
    for name, preset in _preset_configs().items():
        if _recipe(preset) == recipe and _lengths_scaled(config, preset):
            return name
    return None


def paper_figure(preset: str | None) -> dict | None:
    """The paper's row for a preset: {"row", "val", "test"} in percent, or None."""
    if preset not in PAPER_RESULTS:
        return None
    row, val, test = PAPER_RESULTS[preset]
    return {"row": row, "val": val, "test": test}


def hardware(payload: dict) -> str:
    """Where the snapshot was trained, as far as the checkpoint and its metrics say."""
    metrics = payload.get("metrics") or {}
    recorded = payload.get("hardware") or metrics.get("hardware")
    if recorded:
        return str(recorded)
    # Older runs do not record the machine: say what the config and metrics do tell.
    train = payload.get("config", {}).get("train", {})
    parts = [f"device={train.get('device', '?')}", f"threads={train.get('threads') or 'all'}"]
    if metrics.get("precision"):
        parts.append(str(metrics["precision"]))
    if metrics.get("images_per_second"):
        parts.append(f"{metrics['images_per_second']:.0f} train img/s")
    return f"not recorded ({', '.join(parts)})"


def experiment_row(member: Member, params: int) -> dict:
    """The run-level columns of the experiments table for one member (errors added later)."""
    payload = member.payload
    config = payload.get("config", {})
    preset = identify_preset(config)
    return {
        "label": member.label,
        "spec": member.spec,
        "checkpoint": str(member.checkpoint),
        "run": str(member.run) if member.run else None,
        "model": payload["model"]["name"],
        "params": params,
        # A run stopped mid-epoch (time budget, Ctrl-C) logged its fractional epoch.
        "epoch": (payload.get("metrics") or {}).get("epoch", payload.get("epoch")),
        "epochs": config.get("train", {}).get("epochs"),
        "iteration": payload.get("iteration"),
        "training_seconds": payload.get("elapsed_seconds"),
        "hardware": hardware(payload),
        "preset": preset,
        "paper": paper_figure(preset),
    }


def ensemble_paper_figure(rows: list[dict]) -> dict | None:
    """The paper's ensemble row when the members are what it ensembled: 3 runs of its 8-layer
    dropout presets, one model each (not two runs, nor snapshots of one)."""
    runs = {r["run"] or r["checkpoint"] for r in rows}
    if (
        len(rows) == 3
        and len(runs) == 3
        and all((r["preset"] or "").startswith("paper8_l2") for r in rows)
    ):
        row, val, test = PAPER_ENSEMBLE
        return {"row": row, "val": val, "test": test}
    return None


CURVE_KEYS = (
    "epoch",
    "train_loss",
    "val_loss",
    "tune_loss",
    "train_top1_error",
    "val_top1_error",
    "tune_top1_error",
)


def training_curves(members: list[Member]) -> dict[str, list[dict]]:
    """Per run folder, named as its members are (the folder's name, numbered where two folders
    share it): its metrics per evaluation, the keys of CURVE_KEYS only."""
    runs = list(dict.fromkeys(m.run.resolve() for m in members if m.run is not None))
    names = [run.name for run in runs]
    curves: dict[str, list[dict]] = {}
    for i, run in enumerate(runs):
        name = (
            run.name
            if names.count(run.name) == 1
            else f"{run.name} ({names[: i + 1].count(run.name)})"
        )
        curves[name] = [
            {k: row[k] for k in CURVE_KEYS if row.get(k) is not None} for row in read_metrics(run)
        ]
    return curves


def expand_study(members: list[str]) -> tuple[list[str], list[dict] | None]:
    """Members with a study folder (``tinycnn experiment``'s: table.json, one run folder per
    trained row) replaced by its runs; and that study's table (None without one)."""
    expanded, table = [], None
    for member in members:
        folder = Path(member)
        if not (folder / "table.json").is_file() or (folder / "checkpoints").is_dir():
            expanded.append(member)
            continue
        try:
            table = json.loads((folder / "table.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{folder / 'table.json'}: cannot read the study's table ({exc})"
            ) from None
        runs = [folder / row["name"] for row in table]
        expanded += [str(run) for run in runs if (run / "checkpoints").is_dir()]
    return expanded, table


def load_members(specs: list[str]) -> list[Member]:
    """The checkpoints the member specs name, with labels unique within the report."""
    found = [(spec, path) for spec in specs for path in resolve_members(spec)]
    if not found:
        raise ConfigError("name at least one run folder or checkpoint to report on")
    runs = [run_folder(path) for _, path in found]
    members = []
    for (spec, path), run in zip(found, runs, strict=True):
        single = runs.count(run) == 1
        payload = {k: v for k, v in load_checkpoint(path).items() if k not in ("optimizer", "rng")}
        payload["model"] = {k: v for k, v in payload["model"].items() if k != "state"}
        members.append(Member(spec, path, run, member_label(path, run, single), payload))
    labels = [m.label for m in members]
    for i, m in enumerate(members):  # same-named runs in different folders: number them
        if labels.count(m.label) > 1:
            m.label = f"{m.label} ({labels[: i + 1].count(m.label)})"
    return members

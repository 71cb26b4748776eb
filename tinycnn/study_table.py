"""The table of a study (``tinycnn experiment``): a row per trained run from its folder, the
paper's ensembles made of the runs (no training), and the Markdown the rows print as; the
paper's figures beside ours.
"""

from __future__ import annotations

from pathlib import Path

from tinycnn.analysis.experiments import PAPER_ENSEMBLE, identify_preset, paper_figure
from tinycnn.ensembles import ensemble
from tinycnn.members import snapshot_count
from tinycnn.run_folder import read_metrics, read_resolved_config

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
    "gain_vs_best_member",
    "paper_val_error",
    "paper_test_error",
)


def table_row(name: str, config: Path, run: Path) -> dict:
    """One row of the study's table, from the run folder's resolved config and metrics."""
    resolved = read_resolved_config(run)
    last = read_metrics(run)[-1]
    preset = identify_preset(resolved)
    paper = paper_figure(preset) or {}
    return {
        "name": name,
        "preset": preset,
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


def ensemble_rows(
    rows: list[dict], out: Path, cache: str | Path, prob_cache: Path | None, progress: bool
) -> list[dict]:
    """The paper's ensembles, made of the study's trained runs (final models; no training).

    With two or more 8-layer dropout runs (configs/paper/paper8_l2_*): the model ensemble of
    them all (the paper's "3 8-layer CNNs"); the snapshot ensemble of the lambda 5e-4 run (else
    the first): 3 snapshots train.snapshot_every iterations apart (the paper's 10,000, shrunk
    with a budget) ending with the final model (``RUN@apart:N:3``; a short run's all, if
    fewer); and every run's 3 snapshots together (the paper's 9 members). Each is scored on the
    tuning split (when the runs hold one out) and the official val split.
    """
    models = [r for r in rows if (r.get("preset") or "").startswith("paper8_l2")]
    if len(models) < 2:
        return []
    spacing = {r["name"]: _snapshot_spacing(out / r["name"]) for r in models}
    snapshot_run = next((r for r in models if r["preset"] == "paper8_l2_5e-4"), models[0])
    # The paper's row (and its figures) only where it is the paper's ensemble: 3 models.
    three = PAPER_ENSEMBLE[0] if len(models) == 3 else f"{len(models)} 8-layer CNNs, ensemble"
    wanted = [(three, [f"{out / r['name']}@last" for r in models])]
    if all(spacing.values()):
        # 3 snapshots each, or all that a short run has (a selection short of its K is an error)
        count = {r["name"]: max(1, min(3, snapshot_count(out / r["name"]))) for r in models}
        apart = {
            r["name"]: f"{out / r['name']}@apart:{spacing[r['name']]}:{count[r['name']]}"
            for r in models
        }
        wanted.append((f"{snapshot_run['name']}, {{}} snapshots", [apart[snapshot_run["name"]]]))
        wanted.append((f"{len(models)} models x {{}} snapshots", list(apart.values())))
    return [
        _ensemble_row(name, specs, models, cache, prob_cache, progress) for name, specs in wanted
    ]


def _snapshot_spacing(run: Path) -> int:
    return int(read_resolved_config(run)["train"].get("snapshot_every") or 0)


def _ensemble_row(
    name: str,
    specs: list[str],
    models: list[dict],
    cache: str | Path,
    prob_cache: Path | None,
    progress: bool,
) -> dict:
    splits = ["tune", "val"] if all(r["tuning_top1_error"] is not None for r in models) else ["val"]
    scored = {
        split: ensemble(specs, cache, split=split, prob_cache=prob_cache, progress=progress)
        for split in splits
    }
    val = scored["val"]
    # The snapshots a short run has: maybe under 3 each.
    each, extra = divmod(len(val.members), len(specs))
    name = name.replace("{}", str(each) if not extra else f"{len(val.members) / len(specs):.3g}")
    runs = {Path(spec.partition("@")[0]).name for spec in specs}
    used = [r for r in models if r["name"] in runs]
    paper = PAPER_ENSEMBLE if name == PAPER_ENSEMBLE[0] else None
    return {
        "name": name,
        "preset": None,
        "model": f"ensemble of {len(val.members)}",
        "config": " ".join(specs),
        "epochs": None,
        "train_pflop": sum(r["train_pflop"] or 0 for r in used),
        "train_minutes": sum(r["train_minutes"] for r in used),
        "hardware": "; ".join(sorted({r["hardware"] for r in used})),
        "tuning_top1_error": scored["tune"].ensemble["top1_error"] if "tune" in scored else None,
        "val_top1_error": val.ensemble["top1_error"],
        "val_top5_error": val.ensemble["top5_error"],
        "gain_vs_best_member": val.gain,
        "paper_val_error": paper[1] / 100 if paper else None,
        "paper_test_error": paper[2] / 100 if paper else None,
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
        if key == "gain_vs_best_member":  # a difference of error rates: points, signed
            return f"{value:+.2%}"
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
    if any(row["model"].startswith("ensemble") for row in rows):
        lines += [
            "",
            "gain_vs_best_member: the best member's val error minus the ensemble's, in points",
            "(positive: the ensemble is better). The paper: 3 snapshots of each model lowered its",
            "test error by about 1 point, all 9 members by another 1-2 points (no table figure).",
        ]
    return "\n".join(lines) + "\n"

"""study_table.py: a row from a run folder written here (the paper's figures from PAPER.md beside
ours) and the Markdown table by hand. The paper's ensembles made of a study's runs are checked in
tests/test_studies.py, on the study the table comes from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinycnn.config import load_config, to_toml
from tinycnn.study_table import COLUMNS, format_table, table_row

ROOT = Path(__file__).resolve().parents[1]


def _run_folder(path: Path, preset: str, *overrides: str, metrics: list[dict]) -> Path:
    path.mkdir()
    cfg = load_config(ROOT / "configs" / "paper" / f"{preset}.toml", list(overrides))
    (path / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
    lines = [json.dumps(m) for m in metrics]
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_row_is_the_runs_last_evaluation_beside_the_papers_figures(tmp_path: Path) -> None:
    first = {"iteration": 10, "epoch": 1, "elapsed_seconds": 60.0, "val_top1_error": 0.9,
             "val_top5_error": 0.7}  # fmt: skip
    last = {"iteration": 20, "epoch": 2, "elapsed_seconds": 150.0, "train_pflop": 0.25,
            "hardware": "a CPU", "tune_top1_error": 0.61, "val_top1_error": 0.6,
            "val_top5_error": 0.35}  # fmt: skip
    # A shortened run of the lambda 5e-4 preset (fewer epochs, another seed) is still that preset.
    run = _run_folder(
        tmp_path / "run", "paper8_l2_5e-4", "train.epochs=2", "train.seed=7", metrics=[first, last]
    )
    row = table_row("l2", Path("configs/paper/paper8_l2_5e-4.toml"), run)
    assert row["preset"] == "paper8_l2_5e-4" and row["model"] == "paper8"
    assert row["epochs"] == 2 and row["train_minutes"] == 2.5 and row["train_pflop"] == 0.25
    assert row["hardware"] == "a CPU"
    assert (row["tuning_top1_error"], row["val_top1_error"], row["val_top5_error"]) == (
        0.61,
        0.6,
        0.35,
    )
    # PAPER.md's table: "8 layer CNN, dropout, lambda 5e-4 | 58.0 | 58.2".
    assert (row["paper_val_error"], row["paper_test_error"]) == pytest.approx((0.58, 0.582))
    # Another recipe (a changed learning rate) is no preset: no paper figure beside it.
    other = _run_folder(tmp_path / "other", "paper8_l2_5e-4", "optim.lr=0.5", metrics=[first, last])
    row = table_row("mine", Path("mine.toml"), other)
    assert row["preset"] is None and row["paper_val_error"] is None
    assert row["paper_test_error"] is None


def test_the_markdown_table_by_hand() -> None:
    row = {key: None for key in COLUMNS}
    row.update(name="a", model="cnn5", config="c.toml", epochs=3, train_pflop=0.123456,
               val_top1_error=0.5, val_top5_error=0.25, paper_val_error=0.776)  # fmt: skip
    text = format_table([row])
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| name"))
    assert lines[header] == "| " + " | ".join(COLUMNS) + " |"
    assert lines[header + 1] == "|" + " --- |" * len(COLUMNS)
    # name, model, config, epochs, pflop, minutes, hardware, tuning, val, top-5, gain, paper x2
    assert lines[header + 2] == (
        "| a | cnn5 | c.toml | 3 | 0.123 | - | - | - | 50.00% | 25.00% | - | 77.60% | - |"
    )
    assert "gain_vs_best_member:" not in text and text.endswith("\n")
    ensemble = dict(row, name="e", model="ensemble of 3", gain_vs_best_member=0.012)
    text = format_table([row, ensemble])
    assert "| 25.00% | +1.20% | 77.60% |" in text.splitlines()[header + 3]
    assert "| -0.40% |" in format_table([dict(ensemble, gain_vs_best_member=-0.004)])
    assert "gain_vs_best_member: the best member's val error minus the ensemble's" in text


def test_a_short_runs_snapshot_ensemble_asks_for_the_snapshots_it_has(
    tmp_path: Path, monkeypatch
) -> None:
    # Two lambda runs, snapshots every 4 iterations: one ran 8 iterations (2 snapshots), the
    # other 12 (3). A selection short of its K is an error (members.py), so the short run's
    # snapshot ensemble asks for its 2, the other's for the paper's 3.
    import tinycnn.study_table
    from tinycnn.members import resolve_members

    rows, iterations = [], {"paper8_l2_5e-4": 8, "paper8_l2_1e-4": 12}
    for preset, last in iterations.items():
        metrics = [{"iteration": last, "epoch": 1, "val_top1_error": 0.5}]
        run = _run_folder(tmp_path / preset, preset, "train.snapshot_every=4", metrics=metrics)
        (run / "checkpoints").mkdir()
        for i in range(4, last + 1, 4):
            (run / "checkpoints" / f"iter-{i:07d}.pt").touch()
        rows.append({"name": preset, "preset": preset})
    asked = {}
    monkeypatch.setattr(
        tinycnn.study_table, "_ensemble_row", lambda name, specs, *_: asked.update({name: specs})
    )
    tinycnn.study_table.ensemble_rows(rows, tmp_path, "cache", None, progress=False)
    short = f"{tmp_path / 'paper8_l2_5e-4'}@apart:4:2"
    long = f"{tmp_path / 'paper8_l2_1e-4'}@apart:4:3"
    assert asked["paper8_l2_5e-4, {} snapshots"] == [short]
    assert asked["2 models x {} snapshots"] == [short, long]
    assert [len(resolve_members(spec)) for spec in (short, long)] == [2, 3]

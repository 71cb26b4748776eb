"""tinycnn experiment: presets trained as run folders, skipped when done, resumed when cut."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.run_folder import read_metrics
from tinycnn.studies import run_experiments
from tinycnn.training import train

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
[data]
normalization = "channel"
[model]
name = "cnn5"
conv_channels = [8, 8, 8]
fc_widths = [32]
[train]
epochs = 4
batch_size = 16
threads = 1
"""


@pytest.fixture(scope="module")
def cache(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(
        synth_sources["folder"], tmp_path_factory.mktemp("c") / "cache", progress=False
    ).path


def test_a_study_trains_skips_and_resumes(cache: Path, tmp_path: Path, capsys) -> None:
    small = tmp_path / "small.toml"
    small.write_text(SMALL)
    other = tmp_path / "other.toml"
    other.write_text(SMALL.replace("fc_widths = [32]", "fc_widths = [16]"))
    out = tmp_path / "study"
    # "other" was started before and cut after 2 iterations: the study resumes it.
    cfg = load_config(other, [f"data.cache={json.dumps(str(cache))}", "train.epochs=2"])
    train(cfg, out / "other", progress=False, stop_at_iteration=2)
    rows = run_experiments([small, other], cache, out, epochs_scale=0.5, report=False)
    assert [r["name"] for r in rows] == ["small", "other"]
    assert [len(read_metrics(out / n)) for n in ("small", "other")] == [2, 2]  # 4 x 0.5, and 2
    for row in rows:
        last = read_metrics(out / row["name"])[-1]
        assert row["val_top1_error"] == last["val_top1_error"]
        assert row["train_pflop"] == last["train_pflop"] > 0
        assert row["paper_val_error"] is None
    assert "| small | cnn5 |" in (out / "table.md").read_text()
    assert json.loads((out / "table.json").read_text()) == rows
    stamp = (out / "small" / "checkpoints" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    run_experiments([small, other], cache, out, epochs_scale=0.5, report=False)
    assert "small: finished earlier" in capsys.readouterr().out
    assert (out / "small" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp


def test_a_paper_preset_shows_the_papers_figures(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "study"
    preset = ROOT / "configs" / "paper" / "cnn5.toml"  # 30 epochs x 1/30
    argv = ["experiment", str(preset), "--data", str(cache), "--out", str(out)]
    assert main([*argv, "--epochs-scale", str(1 / 30), "-q"]) == 0
    [row] = json.loads((out / "table.json").read_text())
    assert (row["paper_val_error"], row["paper_test_error"]) == pytest.approx((0.776, 0.778))
    assert "77.60%" in capsys.readouterr().out
    assert (out / "report" / "index.html").is_file()

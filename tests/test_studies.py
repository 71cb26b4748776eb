"""tinycnn experiment: presets trained as run folders, skipped when done, resumed when cut."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import SMALL_PRESET
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.errors import ConfigError
from tinycnn.run_folder import read_metrics, read_resolved_config
from tinycnn.studies import run_experiments
from tinycnn.study_table import ensemble_rows
from tinycnn.training import train

ROOT = Path(__file__).resolve().parents[1]


def test_a_study_trains_skips_and_resumes(
    cache: Path, disagreeing_cache: Path, tmp_path: Path, capsys
) -> None:
    small = tmp_path / "small.toml"
    small.write_text(SMALL_PRESET)
    other = tmp_path / "other.toml"
    other.write_text(SMALL_PRESET.replace("fc_widths = [32]", "fc_widths = [16]"))
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
    # The same study on other data (the same classes, other labels): its rows are not these.
    with pytest.raises(ConfigError, match=rf"^{out / 'small'}: trained on other data than "):
        run_experiments([small, other], disagreeing_cache, out, epochs_scale=0.5, report=False)
    # The preset edited since its row trained: the row is not the preset's any more.
    small.write_text(SMALL_PRESET + "[optim]\nlr = 0.05\n")
    with pytest.raises(ConfigError, match=rf"^{out / 'small'}: trained with optim.lr = 0.001, "):
        run_experiments([small, other], cache, out, epochs_scale=0.5, report=False)
    # A typo in the last preset is found before the first trains (it had been, hours later).
    typo = tmp_path / "typo.toml"
    typo.write_text(SMALL_PRESET.replace("epochs = 4", "epochz = 4"))
    fresh = tmp_path / "fresh"
    with pytest.raises(ConfigError, match=rf"^{typo}: unknown key train.epochz"):
        run_experiments([other, typo], cache, fresh, epochs_scale=0.5, report=False)
    assert not (fresh / "other").exists()


def test_a_row_its_time_budget_ended_is_finished(
    cache: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # train.max_minutes ending a row is its result: a rerun of the study had resumed it (one
    # more step past the budget, a changed row), then failed on the spent budget for good.
    import tinycnn.timing

    small = tmp_path / "small.toml"
    small.write_text(SMALL_PRESET)
    out = tmp_path / "study"
    monkeypatch.setattr(tinycnn.timing.Budget, "exhausted", lambda self, iteration: iteration == 2)
    [row] = run_experiments([small], cache, out, epochs_scale=0.5, report=False)
    monkeypatch.undo()
    assert read_metrics(out / "small")[-1]["iteration"] == 2
    stamp = (out / "small" / "checkpoints" / "last.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert run_experiments([small], cache, out, epochs_scale=0.5, report=False) == [row]
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


# The paper's results table (PAPER.md, section 6), error in percent: (val, test), typed here
# from the paper, apart from the code's own table.
PAPER_TABLE = {
    "shallow": (82.5, 83.1),
    "cnn5": (77.6, 77.8),
    "paper8_nodropout": (67.4, 67.3),
    "paper8_l2_1e-4": (63.6, 63.3),
    "paper8_l2_3e-4": (59.5, 60.0),
    "paper8_l2_5e-4": (58.0, 58.2),
    "3 8-layer CNNs, ensemble": (56.9, 56.7),
}


def _hand_ensemble_error(checkpoints: list[Path], cache: Path) -> float:
    """Top-1 error on val of the members' averaged probabilities, computed here."""
    from tinycnn.data.cache import load_cache
    from tinycnn.inference import images_tensor, load_model
    from tinycnn.runtime import make_runtime

    val = load_cache(cache).split("val")
    runtime = make_runtime("cpu", "fp32", False, 1, True)
    probs = sum(
        load_model(p, runtime).probabilities(images_tensor(val.images)) for p in checkpoints
    ) / len(checkpoints)
    return (probs.argmax(dim=1).numpy() != val.labels).mean()


@pytest.mark.slow
def test_the_paper_table_by_one_command_at_a_small_budget(
    cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import tinycnn.studies
    from tinycnn.compute import PFLOP, training_flops_per_image
    from tinycnn.data.cache import load_cache
    from tinycnn.models import create_model
    from tinycnn.run_folder import read_resolved_config

    presets = sorted((ROOT / "configs" / "paper").glob("*.toml"))
    out, budget = tmp_path / "study", 0.002
    argv = ["experiment", *map(str, presets), "--data", str(cache), "--out", str(out)]
    assert main([*argv, "--budget-pflop", str(budget), "--holdout-per-class", "2", "-q"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "table.json").read_text())}
    snapshots, nine = "paper8_l2_5e-4, 3 snapshots", "3 models x 3 snapshots"
    assert set(rows) == {p.stem for p in presets} | {"3 8-layer CNNs, ensemble", snapshots, nine}
    for name, (val, test) in PAPER_TABLE.items():
        assert (rows[name]["paper_val_error"], rows[name]["paper_test_error"]) == pytest.approx(
            (val / 100, test / 100)
        )
    # Every 8-layer row's whole schedule shrunk by r = budget / (40 epochs of 1 batch of 128).
    classes = load_cache(cache).num_classes
    per_image = training_flops_per_image(create_model("paper8", num_classes=classes), 56)
    r = budget * PFLOP / (40 * 128 * per_image)
    for name in ("paper8_nodropout", "paper8_l2_1e-4", "paper8_l2_3e-4", "paper8_l2_5e-4"):
        resolved = read_resolved_config(out / name)
        assert resolved["train"]["max_pflop"] == budget
        assert resolved["train"]["epochs"] == math.ceil(40 * r)
        assert resolved["schedule"]["step_epochs"] == pytest.approx(10 * r)
        assert rows[name]["train_pflop"] <= budget
        assert rows[name]["tuning_top1_error"] is not None
    # The ensembles: the three dropout runs' final models, and 3 snapshots each.
    dropout = [out / f"paper8_l2_{lam}" / "checkpoints" for lam in ("1e-4", "3e-4", "5e-4")]
    three = rows["3 8-layer CNNs, ensemble"]
    assert three["model"] == "ensemble of 3"
    assert three["val_top1_error"] == pytest.approx(
        _hand_ensemble_error([c / "last.pt" for c in dropout], cache)
    )
    assert rows[snapshots]["model"] == "ensemble of 3" and rows[nine]["model"] == "ensemble of 9"
    assert rows[nine]["train_pflop"] == pytest.approx(
        sum(rows[n]["train_pflop"] for n in ("paper8_l2_1e-4", "paper8_l2_3e-4", "paper8_l2_5e-4"))
    )
    # The study's report leads with the table: the paper's figure beside ours, row by row.
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["study"] == json.loads((out / "table.json").read_text())
    assert len(report["experiments"]) == len(presets)  # the trained runs are its members
    # Each shrunk run still named by its preset, the paper's figure beside it.
    assert [(r["preset"], r["paper"]["val"]) for r in report["experiments"]] == [
        (p.stem, PAPER_TABLE[p.stem][0]) for p in presets
    ]
    page = (out / "report" / "index.html").read_text()
    section = page[page.index("The paper's table, reproduced") :]
    assert section.index("3 8-layer CNNs, ensemble") < section.index("56.9%")
    # Again: every run is finished, so nothing trains; the ensemble rows come out the same.
    monkeypatch.setattr(tinycnn.studies, "train", lambda *a, **k: pytest.fail("trained again"))
    options = ["--budget-pflop", str(budget), "--holdout-per-class", "2"]
    assert main([*argv, *options, "--no-report", "-q"]) == 0
    again = {row["name"]: row for row in json.loads((out / "table.json").read_text())}
    assert again[nine]["val_top1_error"] == rows[nine]["val_top1_error"]
    # Other options ask for other rows: the ones here are not passed off as theirs (they had
    # been skipped, and the table rewritten under the new command).
    table = (out / "table.json").read_bytes()
    for other in (["--budget-pflop", str(2 * budget), "--holdout-per-class", "2"], options[:2]):
        assert main([*argv, *other, "--no-report", "-q"]) == 1
        err = capsys.readouterr().err
        assert f"{out}/" in err and ": trained with " in err and "give another --out" in err, err
    assert (out / "table.json").read_bytes() == table
    # Two of the runs are not the paper's 3-model ensemble: their row says 2, without its figures.
    two = [rows["paper8_l2_1e-4"], rows["paper8_l2_5e-4"]]
    made = {r["name"]: r for r in ensemble_rows(two, out, cache, None, progress=False)}
    assert set(made) == {"2 8-layer CNNs, ensemble", snapshots, "2 models x 3 snapshots"}
    assert all(r["paper_val_error"] is None for r in made.values())
    assert made["2 8-layer CNNs, ensemble"]["model"] == "ensemble of 2"


@pytest.mark.slow
def test_sigterm_stops_the_whole_study_not_just_its_current_run(
    cache: Path, tmp_path: Path
) -> None:
    long = tmp_path / "long.toml"
    long.write_text(SMALL_PRESET.replace("epochs = 4", "epochs = 500\nlog_every = 1"))
    after = tmp_path / "after.toml"
    after.write_text(SMALL_PRESET)
    out = tmp_path / "study"
    command = [sys.executable, "-m", "tinycnn", "experiment", str(long), str(after)]
    command += ["--data", str(cache), "--out", str(out), "--no-report", "-q"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    steps = out / "long" / "steps.jsonl"
    deadline = time.monotonic() + 120
    while not (steps.is_file() and steps.read_text().count("\n") >= 3):  # inside the loop
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert "long: stopped at iteration" in stderr and "resume the study" in stderr
    assert not (out / "after").exists()  # the next preset was not started
    assert (out / "long" / "checkpoints" / "last.pt").is_file()
    assert not (out / "table.json").exists()


@pytest.mark.slow
def test_a_budget_shrinks_what_the_preset_really_spends(cache: Path, tmp_path: Path) -> None:
    # The fast recipe in small: progressive resizing (steps at 32 and 48 cost less than at the
    # crop's 64) and its own train.max_pflop ending the run long before its 200 epochs. Its real
    # cost is what its own run spends (counted step by step by the training loop); half of that
    # as the budget runs about half, with the warm-up halved; twice that leaves it as it is.
    text = (ROOT / "configs" / "fast" / "fastnet-1.5pflop.toml").read_text()
    for old, new in (
        ("width = 64", "width = 8"),
        ("batch_size = 128", "batch_size = 16"),
        ("holdout_per_class = 50", "holdout_per_class = 2"),
        ("max_pflop = 1.5", "max_pflop = 2e-5"),
    ):
        assert old in text
        text = text.replace(old, new)
    preset = tmp_path / "fast.toml"
    preset.write_text(text)

    def study(name: str, budget: float) -> tuple[dict, dict]:
        out = tmp_path / name
        run_experiments([preset], cache, out, budget_pflop=budget, report=False, progress=False)
        return read_metrics(out / "fast")[-1], read_resolved_config(out / "fast")

    whole, raw = study("whole", 0.0)
    cost = whole["train_pflop"]
    assert 1.8e-5 < cost <= 2e-5 and raw["train"]["epochs"] == 200
    half, raw = study("half", cost / 2)
    assert 0.95 * cost / 2 <= half["train_pflop"] <= cost / 2  # the old pricing: 0.63 of it
    assert raw["schedule"]["warmup_epochs"] == pytest.approx(0.25, rel=1e-6)
    assert raw["train"]["max_pflop"] == pytest.approx(cost / 2)
    same, raw = study("same", 2 * cost)
    assert same["train_pflop"] == cost and same["iteration"] == whole["iteration"]
    assert raw["schedule"]["warmup_epochs"] == 0.5 and raw["train"]["max_pflop"] == 2e-5


def test_a_budget_under_one_step_is_refused(cache: Path, tmp_path: Path) -> None:
    # It had trained one step anyway, thousands of times the budget, and said nothing.
    from tinycnn.studies import scale_to_budget

    small = tmp_path / "small.toml"
    small.write_text(SMALL_PRESET)
    cfg = load_config(small, [f"data.cache={json.dumps(str(cache))}"])
    with pytest.raises(ConfigError, match=r"^--budget-pflop 1e-12: less than one training step"):
        scale_to_budget(cfg, 1e-12)
    assert scale_to_budget(cfg, 1e-6).train.max_pflop == 1e-6  # a few steps: scaled

"""The analysis report: its numbers on tiny runs (one model, an ensemble), its files, the pieces
(preset identification, t-SNE layout, class orderings), and the page as a real browser renders it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import SMALL, numbers_by_hand, reference_probabilities
from tinycnn.analysis import build_report, html
from tinycnn.analysis.classes import best_and_worst, confusion_order, highest_loss
from tinycnn.analysis.experiments import PRESETS, identify_preset, paper_figure
from tinycnn.analysis.html import SECTIONS
from tinycnn.analysis.report import _class_sections, _Job
from tinycnn.analysis.tsne import grid_layout, penultimate_codes, sample_rows
from tinycnn.cli import main
from tinycnn.config import config_to_dict, load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic
from tinycnn.demo import _report as demo_report
from tinycnn.ensembles import ProbabilityCache
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate, split_rows
from tinycnn.inference import load_model
from tinycnn.runtime import make_runtime
from tinycnn.training import train

FP32 = make_runtime(precision="fp32", channels_last=False, threads=1)
SECTION_IDS = [key for key, _ in SECTIONS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(cache, run a, run b): two 2-epoch runs of 7 generated classes with a tuning split."""
    root = tmp_path_factory.mktemp("report")
    data = make_synthetic(
        root / "data", classes=7, train_per_class=14, val_per_class=6, test_count=4, seed=5
    )
    cache = prepare(data, root / "cache", progress=False).path
    folders = []
    for seed in (0, 1):
        overrides = [*SMALL, "train.epochs=2", "data.holdout_per_class=2", f"train.seed={seed}"]
        cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *overrides])
        train(cfg, root / f"run{seed}", progress=False)
        folders.append(root / f"run{seed}")
    return cache, folders[0], folders[1]


def _report(cache: Path, members: list[str], out: Path):
    return build_report(
        members, cache, out, tsne_images=30, ambiguous=6, runtime=FP32, prob_cache=None
    )


@pytest.fixture(scope="module")
def single(runs, tmp_path_factory: pytest.TempPathFactory):
    cache, a, _ = runs
    return _report(cache, [str(a)], tmp_path_factory.mktemp("single") / "report")


@pytest.fixture(scope="module")
def pair(runs, tmp_path_factory: pytest.TempPathFactory):
    cache, a, b = runs
    return _report(cache, [str(a), f"{b}@epochs:1,2"], tmp_path_factory.mktemp("pair") / "out")


def test_single_run_numbers(runs, single) -> None:
    cache, run, _ = runs
    data = json.loads((single.out / "report.json").read_text())
    (row,) = data["experiments"]
    (evaluation,) = evaluate([str(run)], cache, runtime=FP32)
    assert row["val_top1_error"] == pytest.approx(evaluation.top1_error)
    assert row["val_top5_error"] == pytest.approx(evaluation.top5_error)
    assert row["tune_top1_error"] is not None and row["epoch"] <= row["epochs"] == 2
    assert row["params"] == sum(
        p.numel() for p in load_model(run / "checkpoints/best.pt").model.parameters()
    )
    assert row["preset"] is None and row["paper"] is None  # SMALL is no paper preset
    assert data["ensemble"]["val_top1_error"] == pytest.approx(row["val_top1_error"])
    assert [r["epoch"] for r in data["curves"]["run0"]] == [1, 2]
    per_class = data["per_class"]
    assert [r["count"] for r in per_class] == [6] * 7
    accuracy = sum(r["top1_accuracy"] * r["count"] for r in per_class) / 42
    assert accuracy == pytest.approx(1 - row["val_top1_error"])
    assert len(data["best"]) == 4 and len(data["worst"]) == 3  # 7 classes split between them
    assert np.array(data["confusion"]["matrix"]).sum() == 42
    # The model's own val numbers, from its probabilities computed by hand (fp32, centre crop).
    labels = torch.from_numpy(load_cache(cache).split("val").labels.astype(np.int64))
    probs = reference_probabilities(cache, run / "checkpoints/best.pt", "center")
    by_hand = numbers_by_hand(probs, labels)
    matrix = by_hand["confusion"]  # rows true, columns predicted
    assert data["confusion"]["matrix"] == matrix
    assert row["val_top1_error"] == pytest.approx(by_hand["top1"])
    assert row["val_loss"] == pytest.approx(by_hand["loss"], rel=1e-5)
    for r in per_class:
        c = r["class"]
        assert r["top1_accuracy"] == pytest.approx(matrix[c][c] / 6)
        assert r["most_confused_count"] == max(n for p, n in enumerate(matrix[c]) if p != c)
    index = {n.split(",")[0].strip(): c for c, n in enumerate(load_cache(cache).names)}
    totals = sorted(
        (matrix[a][b] + matrix[b][a] for a in range(7) for b in range(a + 1, 7)), reverse=True
    )
    assert [p["total"] for p in data["confused_pairs"]] == [t for t in totals[:8] if t]
    for pair in data["confused_pairs"]:
        for d in pair["directions"]:  # true a, predicted b, n times
            assert d["count"] == matrix[index[d["true"]]][index[d["predicted"]]], d
    assert data["tsne"]["images"] == 30 and data["tsne"]["code_dims"] == 32  # fc_widths=[32]
    assert len(data["tsne"]["points"]) == 30
    assert data["filters"]["shape"] == [8, 3, 3, 3]


def test_confusion_matrix_and_confused_pairs_by_hand(runs, tmp_path: Path) -> None:
    # Hand-made predictions on the 42 val images (6 per class): class 0 taken for class 1
    # three times, class 1 for class 0 once, class 2 for class 5 twice; every other image right.
    data = load_cache(runs[0])
    labels = np.asarray(data.split("val").labels, np.int64)
    assert np.bincount(labels).tolist() == [6] * 7
    mistakes = {(0, 1): 3, (1, 0): 1, (2, 5): 2}  # (true, predicted): times
    predicted = labels.copy()
    for (true, guess), times in mistakes.items():
        predicted[np.flatnonzero(labels == true)[:times]] = guess
    probs = np.full((len(labels), 7), 0.05, np.float32)
    probs[np.arange(len(labels)), predicted] = 0.7
    job = _Job(tmp_path / "report", data, ProbabilityCache(None), seed=0, progress=False)
    sections = _class_sections(probs, labels, job)
    expected = [[6 if t == p else 0 for p in range(7)] for t in range(7)]  # rows true
    for (true, guess), times in mistakes.items():
        expected[true][true] -= times
        expected[true][guess] = times
    assert sections["confusion"]["matrix"] == expected
    name = [n.split(",")[0].strip() for n in data.names]
    assert len(set(name)) == 7
    pairs = [
        (p["total"], [(d["true"], d["predicted"], d["count"]) for d in p["directions"]])
        for p in sections["confused_pairs"]
    ]
    assert pairs == [
        (4, [(name[0], name[1], 3), (name[1], name[0], 1)]),
        (2, [(name[2], name[5], 2), (name[5], name[2], 0)]),
    ]
    files = data.split("val").files
    zero_as_one = sections["confused_pairs"][0]["directions"][0]["examples"]
    assert [e["file"] for e in zero_as_one] == [files[r] for r in np.flatnonzero(labels == 0)[:3]]
    assert {(e["label"], e["predicted"], e["correct"]) for e in zero_as_one} == {
        (name[0], name[1], False)
    }
    table = {r["class"]: r for r in sections["per_class"]}
    for c, accuracy, confused, count in [
        (0, 3 / 6, name[1], 3),
        (1, 5 / 6, name[0], 1),
        (2, 4 / 6, name[5], 2),
        (5, 1.0, None, 0),
    ]:
        row = table[c]
        assert row["top1_accuracy"] == pytest.approx(accuracy) and row["count"] == 6
        assert (row["most_confused_with"], row["most_confused_count"]) == (confused, count)
    page = html.confusion(sections)
    assert f"{name[0]} taken for {name[1]}: 3" in page
    assert f"{name[1]} taken for {name[0]}: 1" in page
    assert f"{name[5]} taken for {name[2]}: 0" in page


def test_ensemble_numbers(pair) -> None:
    data = pair.data
    labels = [r["label"] for r in data["experiments"]]
    assert labels == ["run0", "run1@epoch-001", "run1@epoch-002"]
    best = min(r["val_top1_error"] for r in data["experiments"])
    assert data["ensemble_gain"] == pytest.approx(best - data["ensemble"]["val_top1_error"])
    assert data["ensemble"]["tune_top1_error"] is not None  # all share one tuning split
    assert set(data["curves"]) == {"run0", "run1"}
    assert (pair.out / data["ensemble_figure"]).is_file()
    # Two snapshots of run1 trained once: the ensemble's time counts run1's longer one.
    seconds = {r["label"]: r["training_seconds"] for r in data["experiments"]}
    expected = seconds["run0"] + max(seconds["run1@epoch-001"], seconds["run1@epoch-002"])
    assert data["ensemble"]["training_seconds"] == pytest.approx(expected)
    # The page says which way the error went, in points computed here from the two errors.
    points = round(100 * (best - data["ensemble"]["val_top1_error"]), 2)
    way = (
        "the same val top-1 error"
        if points == 0
        else (f"{abs(points):.2f} points {'lower' if points > 0 else 'higher'} val top-1 error")
    )
    assert f"<b>{way}" in (pair.out / "index.html").read_text()


@pytest.mark.parametrize("report", ["single", "pair"])
def test_every_referenced_file_exists(report: str, request: pytest.FixtureRequest) -> None:
    result = request.getfixturevalue(report)
    page = result.index.read_text(encoding="utf-8")
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in page
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert len(links) > 20
    for link in links:
        assert not re.match(r"[a-z]+:", link), f"{link}: the page must not need a network"
        assert (result.out / link).is_file(), link
    assert {"report.json", "index.html", "ambiguous.txt"} <= {p.name for p in result.out.iterdir()}


def test_ambiguous_list_names_training_images(runs, single) -> None:
    cache, run, _ = runs
    lines = (single.out / "ambiguous.txt").read_text(encoding="utf-8").splitlines()
    train_files = (cache / "train_files.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and len(set(lines)) == 6
    assert set(lines) <= set(train_files)
    # Never the held-out tuning images: the model did not train on them.
    _, tune_rows = split_rows(
        load_cache(cache), "tune", load_model(run / "checkpoints/best.pt").config
    )
    assert not set(lines) & {train_files[r] for r in tune_rows}
    losses = [item["loss"] for item in single.data["ambiguous"]["images"]]
    assert losses == sorted(losses, reverse=True)
    assert [i["file"] for i in single.data["ambiguous"]["images"]] == lines


@pytest.mark.parametrize(
    ("preset", "overrides", "expected"),
    [
        ("paper8_l2_5e-4", [], "paper8_l2_5e-4"),
        (
            "paper8_l2_5e-4",
            ["train.epochs=2", "train.threads=1", "data.holdout_per_class=10"],
            "paper8_l2_5e-4",
        ),
        ("paper8_l2_1e-4", ["train.seed=3"], "paper8_l2_1e-4"),
        ("cnn5", [], "cnn5"),
        ("paper8_l2_5e-4", ["model.dropout=0.3"], None),  # another recipe
        ("paper8_l2_5e-4", ["optim.lr=0.05"], None),
        ("paper8_l2_5e-4", ["model.conv_channels=[64, 64, 64, 64, 64]"], None),
        # Shrunk to a budget (--budget-pflop): step and warm-up by one factor, 0.04 here.
        (
            "paper8_l2_5e-4",
            ["schedule.step_epochs=0.4", "schedule.warmup_epochs=0.02", "train.epochs=2"],
            "paper8_l2_5e-4",
        ),
        ("shallow", ["schedule.step_epochs=0.4", "train.max_pflop=0.1"], "shallow"),
        ("paper8_l2_5e-4", ["schedule.step_epochs=5"], None),  # steps twice as often
        ("paper8_l2_5e-4", ["schedule.step_epochs=0.4", "schedule.warmup_epochs=0.5"], None),
        ("shallow", ["schedule.warmup_epochs=0.5"], None),  # a warm-up it never had
    ],
)
def test_paper_preset_identified(preset: str, overrides: list[str], expected: str | None) -> None:
    config = config_to_dict(load_config(PRESETS / f"{preset}.toml", ["data.cache='x'", *overrides]))
    assert identify_preset(config) == expected


def test_paper_figures() -> None:
    assert paper_figure("paper8_l2_5e-4") == {
        "row": "8 layer CNN, dropout, lambda 5e-4",
        "val": 58.0,
        "test": 58.2,
    }
    assert paper_figure("finetune") is None and paper_figure(None) is None


def test_penultimate_codes_are_the_classifier_input(runs) -> None:
    cache, run, _ = runs
    loaded = load_model(run / "checkpoints/best.pt", FP32)
    images = torch.from_numpy(np.array(load_cache(cache).split("val").images[:5]))
    codes = penultimate_codes(loaded, images)
    assert codes.shape == (5, 32)
    logits = loaded.logits(images)
    assert torch.allclose(loaded.model.classifier(codes), logits, atol=1e-5)


def test_sample_rows_spread_over_classes() -> None:
    labels = np.repeat(np.arange(4), [10, 10, 10, 3])
    rows = sample_rows(labels, 12, seed=0)
    assert len(rows) == 12 and list(rows) == sorted(rows)
    assert np.bincount(labels[rows]).tolist() == [3, 3, 3, 3]
    assert len(sample_rows(labels, 99, seed=0)) == len(labels)


def test_grid_layout_keeps_neighbours() -> None:
    points = np.array([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    layout = grid_layout(points, 2)
    assert layout.tolist() == [0, 1, 2, 3]  # top-left, top-right, bottom-left, bottom-right


def test_confusion_order_puts_confused_classes_together() -> None:
    matrix = np.eye(6, dtype=np.int64) * 20
    for a, b in ((0, 3), (1, 5), (2, 4)):
        matrix[a, b] = matrix[b, a] = 6
    order = confusion_order(matrix).tolist()
    for a, b in ((0, 3), (1, 5), (2, 4)):
        assert abs(order.index(a) - order.index(b)) == 1


@pytest.mark.parametrize(
    ("accuracies", "best", "worst"),
    [
        (
            [0.9, 0.1, 0.5, 0.7, 0.3, 0.2, 0.8, 0.6, 0.4, 0.0, 1.0, 0.05],
            [10, 0, 6, 3, 7],
            [9, 11, 1, 5, 4],
        ),
        ([0.5, 0.9, 0.1], [1, 0], [2]),
        ([0.5, 0.5, 0.5, 0.5], [0, 1], [3, 2]),  # ties: by class index
    ],
)
def test_best_and_worst(accuracies: list[float], best: list[int], worst: list[int]) -> None:
    table = [
        {"class": i, "top1_accuracy": a, "top5_accuracy": 1.0} for i, a in enumerate(accuracies)
    ]
    got_best, got_worst = best_and_worst(table)
    assert [r["class"] for r in got_best] == best and [r["class"] for r in got_worst] == worst


def test_highest_loss_ranks_by_label_probability() -> None:
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.01, 0.99]])
    labels = np.array([0, 0, 1, 0])
    assert highest_loss(probs, labels, np.arange(4), 2).tolist() == [3, 1]
    assert highest_loss(probs, labels, np.array([0, 2]), 5).tolist() == [2, 0]


def test_cli_report(runs, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache, run, _ = runs
    out = tmp_path / "cli"
    args = ["report", str(run), "--data", str(cache), "--out", str(out), "--no-cache"]
    options = ["--tsne-images", "20", "--ambiguous", "3", "--scan-train", "14", "-q"]
    assert main([*args, *options, "--precision", "fp32"]) == 0
    assert str(out / "index.html") in capsys.readouterr().out
    assert len((out / "ambiguous.txt").read_text().splitlines()) == 3
    scanned = json.loads((out / "report.json").read_text())["ambiguous"]
    assert scanned["scanned"] == 14 and scanned["training_images"] == 7 * 12  # 2 held out
    assert main([*args, "--tsne-images", "2"]) == 1
    assert "--tsne-images 2" in capsys.readouterr().err


# Run in the browser after the page (and every image) has loaded: what it rendered, and what
# clicking the per-class table's headers did, written into the DOM for --dump-dom.
BROWSER_CHECK = """
<script>
window.addEventListener("load", function () {
  var out = {sections: [], images: [], sorts: {}};
  document.querySelectorAll("section").forEach(function (s) {
    out.sections.push([s.id, s.offsetHeight]);
  });
  document.querySelectorAll("img").forEach(function (i) {
    out.images.push([i.getAttribute("src"), i.complete, i.naturalWidth, i.naturalHeight]);
  });
  var table = document.getElementById("per-class");
  var column = function (c, data) {
    return Array.from(table.tBodies[0].rows).map(function (r) {
      return data ? r.cells[c].dataset.value : r.cells[c].textContent;
    });
  };
  var header = table.querySelectorAll("th");
  header[4].click(); out.sorts.top1_first = column(4, true);
  header[4].click(); out.sorts.top1_second = column(4, true);
  header[1].click(); out.sorts.names = column(1, false);
  var pre = document.createElement("pre");
  pre.id = "browser-check";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "chromium is missing: the report's browser test needs it "
        "(apt-get update && apt-get install -y chromium; .ci/run installs it)",
        pytrace=False,
    )


def _browse(page: Path, profile: Path, *args: str) -> str:
    """Run headless chromium on a file, offline (every host unresolvable), returning stdout."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=http://127.0.0.1:9",
        "--virtual-time-budget=10000",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_page_in_a_real_browser(pair, tmp_path_factory: pytest.TempPathFactory) -> None:
    page = pair.index.read_text(encoding="utf-8")
    check = pair.out / "browser-check.html"  # beside index.html, so relative links work
    check.write_text(page.replace("</body>", BROWSER_CHECK + "</body>"), encoding="utf-8")
    profile = tmp_path_factory.mktemp("chromium")
    dom = _browse(check, profile, "--dump-dom")
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', dom, re.S)
    assert found, "the check script did not run: " + dom[-500:]
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert [s for s, _ in result["sections"]] == SECTION_IDS
    assert all(height > 50 for _, height in result["sections"])
    assert len(result["images"]) > 20
    for src, complete, width, height in result["images"]:
        assert complete and width > 0 and height > 0, f"{src} did not load"
    first = [float(v) for v in result["sorts"]["top1_first"]]
    second = [float(v) for v in result["sorts"]["top1_second"]]
    assert first == sorted(first) and second == sorted(first, reverse=True)
    assert result["sorts"]["names"] == sorted(result["sorts"]["names"], key=str.lower)
    screenshot = tmp_path_factory.mktemp("artefacts") / "report.png"
    _browse(pair.index, profile, f"--screenshot={screenshot}", "--window-size=1280,4000")
    assert screenshot.stat().st_size > 10_000
    print(f"report screenshot: {screenshot}")


def test_demo_report_is_reused_until_the_run_changes(runs, tmp_path: Path) -> None:
    cache, run, _ = runs
    index = demo_report(run, cache, tmp_path / "report")
    stamp = index.stat().st_mtime_ns
    assert index == tmp_path / "report" / "index.html"
    assert demo_report(run, cache, tmp_path / "report").stat().st_mtime_ns == stamp


def test_under_torchrun_only_rank_0_embeds_and_writes(runs, tmp_path: Path, monkeypatch) -> None:
    import tinycnn.analysis.report as report
    from tinycnn.distributed import Dist
    from tinycnn.ensembles import ProbabilityCache

    cache, a, _ = runs
    model = load_model(a / "checkpoints" / "best.pt", FP32)
    job = report._Job(tmp_path, load_cache(cache), ProbabilityCache(None), 0, False)
    monkeypatch.setattr(report.distributed, "current", lambda: Dist(rank=1, world=2))
    # The sharded pass is torchrun's (tests/test_distributed.py); here, rank 1's own share.
    monkeypatch.setattr(report.tsne, "penultimate_codes", lambda m, images: torch.zeros(30, 8))

    def embed(codes, seed):
        raise AssertionError("rank 1 ran the t-SNE embedding")

    monkeypatch.setattr(report.tsne, "embed", embed)
    assert report._tsne_section(model, 30, job) == {}
    assert job.files == [] and not any(tmp_path.iterdir())


def test_a_full_disk_mid_report_leaves_nothing_and_keeps_the_old_report(
    runs, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import tinycnn.atomic as atomic

    cache, run, _ = runs
    out = tmp_path / "report"
    argv = ["report", str(run), "--data", str(cache), "--out", str(out), "--no-cache", "-q"]
    argv += ["--tsne-images", "20", "--precision", "fp32"]
    assert main(argv) == 0
    old = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (out / "notes.txt").write_text("the user's own file")
    killed = tmp_path / ".report.tmp-999999999-0badc0de"  # a build whose process is gone
    (killed / "figures").mkdir(parents=True)
    written: list[str] = []
    original = atomic.write_into

    def fills_up(tmp: Path, data) -> None:  # the disk is full from the fourth file on
        written.append(tmp.name)
        if len(written) > 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        original(tmp, data)

    monkeypatch.setattr(atomic, "write_into", fills_up)
    for target in (out, tmp_path / "new" / "report"):
        written.clear()
        capsys.readouterr()
        assert main([*argv[:5], str(target), *argv[6:]]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"tinycnn: error: {target}: cannot")
        assert "(disk full: " in err and "nothing was written" in err and ".tmp-" not in err
        assert len(written) == 4  # three files were written before the failure: none is kept
        assert not [p for p in target.parent.iterdir() if ".tmp-" in p.name]  # killed's too
    # The report written before is intact, the user's file too; the new folder was never made.
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == {
        **old,
        Path("notes.txt"): b"the user's own file",
    }
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_two_runs_of_one_folder_name_keep_a_curve_each(runs, tmp_path: Path) -> None:
    # run0 and elsewhere/run0 (the same folder name; the copy one evaluation shorter): each run's
    # curve under its member's label, and a run named twice (two snapshots) has one curve.
    from tinycnn.analysis.experiments import load_members, training_curves
    from tinycnn.run_folder import METRICS

    _, a, b = runs
    other = tmp_path / "elsewhere" / a.name
    shutil.copytree(a, other)
    lines = (other / METRICS).read_text().splitlines(keepends=True)
    (other / METRICS).write_text("".join(lines[:-1]))
    members = load_members([str(a), str(other), f"{b}@epochs:1,2"])
    assert [m.label for m in members][:2] == [f"{a.name} (1)", f"{a.name} (2)"]
    curves = training_curves(members)
    assert list(curves) == [f"{a.name} (1)", f"{a.name} (2)", b.name]
    epochs = [[row["epoch"] for row in curves[name]] for name in curves]
    assert epochs == [[1, 2], [1], [1, 2]]


def test_ambiguous_images_never_include_what_train_exclude_left_out(
    runs, single, tmp_path: Path
) -> None:
    # Trained without the 6 images of a report's ambiguous.txt (and 2 a class held out): the
    # next report scores only the 7 x 14 - 7 x 2 - 6 = 78 images it trained on.
    cache, _, _ = runs
    excluded = single.out / "ambiguous.txt"
    overrides = [*SMALL, "train.epochs=2", "data.holdout_per_class=2"]
    settings = [f"data.cache={json.dumps(str(cache))}", *overrides]
    cfg = load_config(None, [*settings, f"data.exclude={json.dumps(str(excluded))}"])
    train(cfg, tmp_path / "run", progress=False)
    result = build_report(
        [str(tmp_path / "run")], cache, tmp_path / "report", tsne_images=30, ambiguous=78,
        scan_train=0, runtime=FP32, prob_cache=None,
    )  # fmt: skip
    section = result.data["ambiguous"]
    assert section["scanned"] == section["training_images"] == 78
    listed = (tmp_path / "report" / "ambiguous.txt").read_text(encoding="utf-8").splitlines()
    assert len(listed) == 78
    assert not set(listed) & set(excluded.read_text(encoding="utf-8").splitlines())
    # The list gone: which images it trained on is not known, and the report says so.
    moved = shutil.move(excluded, tmp_path / "moved.txt")
    try:
        with pytest.raises(ConfigError, match=r"the images it trained on.*cannot read it"):
            build_report(
                [str(tmp_path / "run")], cache, tmp_path / "again", tsne_images=30,
                ambiguous=5, runtime=FP32, prob_cache=None,
            )  # fmt: skip
    finally:
        shutil.move(moved, excluded)
    assert not (tmp_path / "again").exists()


def test_per_class_top5_follows_the_summary_s_rule_on_ties() -> None:
    # All probabilities equal (a model at chance): the classes' top-5 hits add up to the
    # summary's top-5 error (argsort had taken other classes than topk: 0.975 against 0.970).
    from tinycnn.analysis.classes import per_class_table
    from tinycnn.metrics import error_rates

    labels = np.arange(200).repeat(10)
    probs = np.full((2000, 200), 1 / 200, np.float32)
    table = per_class_table(probs, labels, [f"n{c}" for c in range(200)], ["x"] * 200)
    hits = sum(row["top5_accuracy"] * row["count"] for row in table)
    rates = error_rates(torch.from_numpy(np.log(probs)), torch.from_numpy(labels))
    assert 1 - hits / 2000 == pytest.approx(rates["top5_error"])
    assert sum(row["top1_accuracy"] * row["count"] for row in table) == 10  # class 0's, by hand


def test_the_t_sne_legend_names_every_class(monkeypatch) -> None:
    # A class folder named "_other" is a class; matplotlib leaves "_" labels out of a legend.
    from tinycnn.analysis import figures

    shown = []

    def legend(fig) -> bytes:
        shown.extend(text.get_text() for text in fig.axes[0].get_legend().get_texts())
        return b""

    monkeypatch.setattr(figures, "_png", legend)
    points = np.random.default_rng(0).normal(size=(30, 2))
    figures.tsne_scatter(points, np.arange(3).repeat(10), ["_other", "cat", "dog"])
    assert [t.lstrip("\u200b") for t in shown] == ["_other", "cat", "dog"]


def test_the_papers_ensemble_figure_stands_beside_3_runs_of_its_dropout_presets_only() -> None:
    # Any 2 or more checkpoints of those presets had been given the paper's "3 8-layer CNNs"
    # figures: 2 runs, or 3 snapshots of one run.
    from tinycnn.analysis.experiments import ensemble_paper_figure

    def row(run: str, checkpoint: str, preset: str = "paper8_l2_5e-4") -> dict:
        return {"run": run, "checkpoint": f"{run}/{checkpoint}", "preset": preset}

    three = [row("a", "last.pt"), row("b", "last.pt", "paper8_l2_1e-4"), row("c", "last.pt")]
    assert ensemble_paper_figure(three) == {
        "row": "3 8-layer CNNs, ensemble",
        "val": 56.9,
        "test": 56.7,
    }
    assert ensemble_paper_figure(three[:2]) is None
    assert ensemble_paper_figure([row("a", f"epoch-00{k}.pt") for k in (1, 2, 3)]) is None
    assert ensemble_paper_figure([*three[:2], row("c", "last.pt", "cnn5")]) is None

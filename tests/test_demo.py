"""The README's first command: `tinycnn demo` generates data, prepares it, trains and reports."""

from __future__ import annotations

from pathlib import Path

import pytest

from tinycnn.cli import main
from tinycnn.training import read_metrics


@pytest.mark.slow
def test_demo_end_to_end_and_rerun(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "-q"]) == 0
    report = capsys.readouterr().out
    assert (out / "data" / "tiny-imagenet-synth" / "wnids.txt").is_file()
    assert (out / "cache" / "manifest.json").is_file()
    metrics = read_metrics(out / "run")
    assert len(metrics) == 8
    assert metrics[-1]["val_top1_error"] < 0.5  # 10 classes: chance is 0.9 error
    # In time order: data, cache, training, the result in error rates, the paths, what next.
    order = ["generating 10 classes", "cache ", "result: val top-1 error", "wrote:", "next,"]
    positions = [report.index(marker) for marker in order]
    assert positions == sorted(positions), report
    assert f"{metrics[-1]['val_top1_error']:.1%}" in report.split("result:")[1].splitlines()[0]
    assert "accuracy" not in report  # one unit everywhere: error rates
    for folder in ("data", "cache", "run", "report"):
        line = next(x for x in report.splitlines() if x.startswith(f"  {out / folder} "))
        assert " kB " in line or " MB " in line, line
    assert (out / "report" / "index.html").is_file()
    stamp = (out / "run" / "checkpoints" / "last.pt").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "-q"]) == 0  # a rerun reuses everything
    assert "up to date" in capsys.readouterr().out
    assert (out / "run" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp

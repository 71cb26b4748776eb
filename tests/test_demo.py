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


def test_a_demo_stopped_in_its_first_epoch_resumes_and_another_seed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stopped before its first evaluation (no metrics line yet), the next demo had started a new
    # run over the old one and failed; a demo of another --seed had reported this seed's run.
    import tinycnn.demo as demo
    from tinycnn.errors import ConfigError
    from tinycnn.training import train

    quick = ["train.epochs=1", "model.conv_channels=[8, 8, 8]"]
    monkeypatch.setattr(demo, "DEMO_TRAINING", [*demo.DEMO_TRAINING, *quick])
    monkeypatch.setattr(demo, "train", lambda *a, **k: train(*a, **k, stop_at_iteration=3))
    out = tmp_path / "demo"
    with pytest.raises(KeyboardInterrupt, match="run the demo again to resume it"):
        demo.run_demo(out, progress=False, say=lambda *_: None)
    assert (out / "run" / "checkpoints" / "last.pt").is_file()
    assert not (out / "run" / "metrics.jsonl").exists() or not read_metrics(out / "run")
    monkeypatch.setattr(demo, "train", train)
    said: list[str] = []
    result = demo.run_demo(out, progress=False, say=said.append)
    assert result["epochs"] == 1 and read_metrics(out / "run")[-1]["iteration"] == 1000 // 64
    with pytest.raises(ConfigError, match=r"its data was made with --seed 0, not 1"):
        demo.run_demo(out, seed=1, progress=False, say=lambda *_: None)

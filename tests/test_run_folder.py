"""run_folder.py: a run folder's lock (one process at a time) and its metrics log."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import paused, train_argv
from tinycnn.cli import main
from tinycnn.run_folder import read_metrics


def test_a_damaged_metrics_line_is_named(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", "train.epochs=1")) == 0
    log = out / "metrics.jsonl"
    log.write_text("garbage\n" + log.read_text())
    assert main(["train", "--resume", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"{log} line 1: not a metrics record" in err and "\n" not in err


def test_a_second_process_on_a_run_folder_is_refused(cache: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    first = paused(train_argv(cache, out), "step", 1, tmp_path / "flag")
    try:
        for argv in (train_argv(cache, out), ["train", "--resume", str(out), "-q"]):
            assert main(argv) == 1
            err = capsys.readouterr().err.strip()
            assert f"in use by another tinycnn process (pid {first.pid}," in err, err
            assert "\n" not in err
    finally:
        first.kill()
        first.communicate(timeout=60)
    # The kernel dropped the dead process's lock: its run resumes.
    assert main(["train", "--resume", str(out), "-q"]) == 0
    assert read_metrics(out)[-1]["iteration"] == 9

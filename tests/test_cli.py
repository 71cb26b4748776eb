"""The command line (cli.py, cli_args.py) across commands: help, progress, exit codes, one-line
errors for outputs that cannot be written, Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import tinycnn
from tests.helpers import QUICK
from tinycnn.cli import main


def test_evaluate_labels_each_checkpoint_and_shows_progress(
    cache: Path, tmp_path: Path, capsys
) -> None:
    cfg = tinycnn.load_config(None, [f"data.cache={json.dumps(str(cache))}", *QUICK])
    run = tinycnn.train(cfg, tmp_path / "run", progress=False).run_dir
    assert main(["evaluate", f"{run}@epochs:1,2", "--data", str(cache)]) == 0
    captured = capsys.readouterr()
    for epoch in ("epoch-001.pt", "epoch-002.pt"):
        assert f"{run / 'checkpoints' / epoch}:" in captured.out
        assert f"evaluate {epoch} on val" in captured.err


def test_info_on_a_folder_that_is_not_a_cache(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    assert main(["info", str(tmp_path / "photos")]) == 1
    err = capsys.readouterr().err
    assert "not a prepared cache" in err and f"--out {tmp_path / 'photos'}" not in err


def test_python_m_tinycnn_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "tinycnn", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in ("prepare", "info", "train", "evaluate", "ensemble", "predict", "export"):
        assert command in out


def test_export_and_ensemble_take_run_folders_and_show_progress(
    cache: Path, tmp_path: Path, capsys
) -> None:
    cfg = tinycnn.load_config(None, [f"data.cache={json.dumps(str(cache))}", *QUICK])
    run = tinycnn.train(cfg, tmp_path / "run", progress=False).run_dir
    out = tmp_path / "model.onnx"
    assert main(["export", str(run), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    argv = ["ensemble", f"{run}@epochs:1,2", "--data", str(cache), "--no-cache"]
    assert main([*argv, "--out", str(tmp_path / "ens")]) == 0
    err = capsys.readouterr().err
    assert "evaluate epoch-001.pt on val" in err and "evaluate epoch-002.pt on val" in err
    assert main(["export", f"{run}@epochs:1,2", "--format", "onnx", "--out", str(out)]) == 1
    assert "names 2 checkpoints; give one" in capsys.readouterr().err

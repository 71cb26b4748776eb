"""The command line (cli.py, cli_args.py) across commands: help, progress, exit codes, one-line
errors for outputs that cannot be written, Ctrl-C."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import tinycnn
from tests.helpers import (
    QUICK,
    SMALL_PRESET,
    Small,
    assert_one_line_error,
    fail_fsync,
    fail_writes,
    run_cli,
    train_argv,
)
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


WRITING_COMMANDS = {
    "export": lambda s, out: [
        *("export", s.checkpoint, "--format", "torchscript", "--out", out / "model.pt"),
        *("--data", s.cache, "--check-count", 4),
    ],
    "ensemble": lambda s, out: [
        *("ensemble", s.checkpoint, "--data", s.cache, "--out", out / "ens"),
        *("--no-cache", "--device", "cpu", "-q"),
    ],
    "predict": lambda s, out: [
        *("predict", s.checkpoint, "--data", s.cache, "--submission", out / "sub.txt"),
        *("--device", "cpu", "-q"),
    ],
}


@pytest.mark.parametrize("command", sorted(WRITING_COMMANDS))
@pytest.mark.parametrize(
    ("fail", "code", "text", "words"),
    [
        (fail_writes, errno.ENOSPC, "No space left on device", "disk full"),
        (fail_writes, errno.EROFS, "Read-only file system", "read-only file system"),
        (fail_fsync, errno.EACCES, "Permission denied", "permission denied"),
    ],
)
def test_writing_commands_report_unwritable_output_in_one_line(
    small: Small,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    command: str,
    fail,
    code: int,
    text: str,
    words: str,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    fail(monkeypatch, code, text)
    status, _, err = run_cli(capsys, WRITING_COMMANDS[command](small, out))
    assert_one_line_error(status, err, str(out), words)
    assert list(out.iterdir()) == []  # nothing half-written, no temporary file


def test_ctrl_c_outside_training_names_itself(monkeypatch, capsys) -> None:
    def interrupted(_args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("tinycnn.cli._cmd_models", interrupted)
    assert main(["models"]) == 130
    assert "interrupted (Ctrl-C)" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-3", "two"])
def test_stop_at_needs_a_positive_iteration_count(cache: Path, tmp_path: Path, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*train_argv(cache, tmp_path / "run"), "--stop-at", value])
    assert exit_info.value.code == 2
    assert f"{value!r} is not a number of iterations >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["ensemble", "RUN@epochs:1,2", "--data", "CACHE", "--weights", "nan,1"], ["weight nan"]),
        (["ensemble", "RUN@epochs:1,2", "--data", "CACHE", "--weights", "inf,1"], ["weight inf"]),
        (["ensemble", "RUN@epochs:1,2", "--data", "CACHE", "--weights=-1,2"], ["weight -1.0"]),
        (["ensemble", "RUN@epochs:1,2", "--data", "CACHE", "--weights", "1,x"], ["'x' is not a"]),
        (["predict", "RUN@epochs:1,2", "--images", "IMAGE", "--weights", "nan,1"], ["weight nan"]),
        (["predict", "RUN@epochs:1,2", "--images", "IMAGE", "--weights", "x"], ["'x' is not a"]),
        (["evaluate", "RUN@epochs:1,two", "--data", "CACHE"], ["'two' is not a positive"]),
        (["experiment", "PRESET", "--data", "CACHE", "--budget-pflop", "nan"], ["--budget-pflop"]),
        (["experiment", "PRESET", "--data", "CACHE", "--epochs-scale", "nan"], ["--epochs-scale"]),
        (["export", "RUN", "--format", "torchscript", "--check-count", "-15"], ["count -15"]),
        (["export", "RUN", "--format", "torchscript", "--check-count", "0"], ["--check-count 0"]),
        (["export", "RUN", "--format", "torchscript", "--data", "NOPE"], ["not a prepared cache"]),
    ],
)
def test_malformed_numbers_are_one_line_errors_and_write_nothing(
    run, tmp_path: Path, capsys, argv: list[str], fragments: list[str]
) -> None:
    # NaN weights had averaged to NaN probabilities (an error rate from argmax 0, exit 0); the
    # others had ended in a traceback, or checked an export on a slice [:-15] of the images.
    cache, folder = run
    image = tmp_path / "in" / "image.png"
    image.parent.mkdir()
    Image.new("RGB", (64, 64), (90, 120, 30)).save(image)
    preset = tmp_path / "in" / "small.toml"
    preset.write_text(SMALL_PRESET)
    names = {"RUN": str(folder), "CACHE": str(cache), "IMAGE": str(image), "PRESET": str(preset)}
    out = tmp_path / "out"
    names["NOPE"] = str(tmp_path / "nope")
    argv = [re.sub("|".join(names), lambda m: names[m.group()], a) for a in argv]
    if argv[0] in ("experiment", "export"):
        argv += ["--out", str(out / ("m.pt" if argv[0] == "export" else "study"))]
    code, _, err = run_cli(capsys, [*argv, "-q"] if argv[0] != "export" else argv)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Checked before any work: the submission had been written before --top was refused.
        (["predict", "RUN", "--data", "CACHE", "--submission", "SUB", "--top", "0"], "'0' is not"),
        (["predict", "RUN", "--images", "SUB", "--max-pixels", "-1"], "'-1' is not a whole number"),
        # Before a download: --size 0 had ended in a traceback, a short --sha256 after it.
        (["fetch", "--url", "file:///x.tar.gz", "--out", "OUT", "--size", "0"], "'0' is not a"),
        (
            ["fetch", "--url", "file:///x.tar.gz", "--out", "OUT", "--sha256", "abc"],
            "64 hex digits",
        ),
        (
            ["fetch", "--url", "file:///x.tar.gz", "--out", "OUT", "--md5", "90528d7c"],
            "32 hex digits",
        ),
    ],
)
def test_bad_limits_are_refused_by_the_parser_before_any_work(
    run, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    cache, folder = run
    out = tmp_path / "out"
    names = {"RUN": str(folder), "CACHE": str(cache), "SUB": str(out / "s.tsv"), "OUT": str(out)}
    argv = [names.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_paths_with_any_characters_reach_the_config_unchanged(
    cache: Path, tmp_path: Path, capsys
) -> None:
    # An emoji (outside the BMP: json.dumps wrote a surrogate pair TOML refuses, and the path
    # was kept with its quotes), a quote and a backslash, in --data and --exclude alike.
    import shutil

    from tinycnn.run_folder import read_resolved_config

    odd = tmp_path / 'data 😀 "q" \\ x'
    shutil.copytree(cache, odd / "cache")
    exclude = odd / "ex 😀.txt"
    exclude.write_text((cache / "train_files.txt").read_text().splitlines()[0] + "\n")
    code, _, err = run_cli(
        capsys, train_argv(odd / "cache", tmp_path / "run", "--exclude", exclude)
    )
    assert code == 0, err
    resolved = read_resolved_config(tmp_path / "run")
    assert resolved["data"]["cache"] == str(odd / "cache")
    assert resolved["data"]["exclude"] == str(exclude)
    # A value meant as TOML (quoted) that is not valid TOML is an error, not a string.
    code, _, err = run_cli(
        capsys, train_argv(cache, tmp_path / "bad", "--set", 'data.exclude="unterminated')
    )
    assert_one_line_error(code, err, "not a valid TOML value")
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--set", 'optim.betas=["a", "b"]'], "optim.betas = ['a', 'b']: expected two numbers"),
        (["--set", "model.options=3"], "model.options = 3: expected a table"),
        (["--set", "data.holdout_seed=-1"], "data.holdout_seed = -1: must be a number >= 0"),
    ],
)
def test_config_values_of_the_wrong_kind_are_one_line(
    cache: Path, tmp_path: Path, capsys, extra: list[str], fragment: str
) -> None:
    code, _, err = run_cli(capsys, train_argv(cache, tmp_path / "run", *extra))
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "DATA", "--out", "OUT", "--workers", "-1"],
        ["evaluate", "RUN", "--data", "DATA", "--batch-size", "0"],
        ["evaluate", "RUN", "--data", "DATA", "--batch-size", "-3"],
    ],
)
def test_counts_below_one_are_refused_by_the_parser(
    cache: Path, tmp_path: Path, capsys, argv
) -> None:
    names = {"DATA": str(cache), "OUT": str(tmp_path / "out"), "RUN": str(tmp_path)}
    argv = [names.get(a, a) for a in argv]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2  # argparse's usage error, naming the option and its value
    message = f"argument {argv[-2]}: '{argv[-1]}' is not a whole number >= 1"
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "RUN", "--data", "DATA", "--out", "OUT", "--seed", "-1"],
        ["report", "RUN", "--data", "DATA", "--out", "OUT", "--seed", "4294967296"],
        ["demo", "--out", "OUT", "--seed", "-3"],
    ],
)
def test_seeds_outside_what_numpy_takes_are_refused_by_the_parser(
    cache: Path, tmp_path: Path, capsys, argv
) -> None:
    # The report had scored every member first, then died in numpy or scikit-learn.
    names = {"DATA": str(cache), "OUT": str(tmp_path / "out"), "RUN": str(tmp_path)}
    with pytest.raises(SystemExit) as exited:
        main([names.get(a, a) for a in argv])
    assert exited.value.code == 2
    assert f"argument --seed: '{argv[-1]}' is not a whole number in [0, 2**32 - 1]" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # Each had been accepted, one of the two silently winning or the option unused.
        (["train", "--data", "CACHE", "--set", 'data.cache="/elsewhere"', "--out", "OUT"],
         "--data and --set data.cache both set data.cache"),
        (["train", "--data", "CACHE", "--exclude", "X", "--set", 'data.exclude="Y"', "--out",
          "OUT"], "--exclude and --set data.exclude both set data.exclude"),
        (["train", "--data", "CACHE", "--init-from", "RUN", "--set", 'train.init_from="Z"',
          "--out", "OUT"], "--init-from and --set train.init_from both set it"),
        (["predict", "RUN", "--images", "OUT", "--data", "CACHE"],
         "is read only for --submission FILE"),
        (["ensemble", "RUN", "--data", "CACHE", "--select-on", "val"],
         "--select-on val chooses members for --greedy; add --greedy"),
    ],
)  # fmt: skip
def test_an_option_that_would_be_ignored_is_refused(
    run, tmp_path: Path, capsys, argv: list[str], message: str
) -> None:
    cache, folder = run
    out = tmp_path / "out"
    names = {"RUN": str(folder), "CACHE": str(cache), "OUT": str(out)}
    assert main([names.get(a, a) for a in argv]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "target"),
    [
        (["predict", "{run}", "--data", "{cache}", "--submission", "{out}"], "folder"),
        (["ensemble", "{run}@last:2", "--data", "{cache}", "--no-cache", "--out", "{out}"], "file"),
        (["report", "{run}", "--data", "{cache}", "--no-cache", "--out", "{out}"], "file"),
        (["predict", "{run}", "--data", "{cache}", "--submission", "{out}/sub.txt"], "file"),
    ],
)
def test_an_output_path_that_cannot_be_written_is_refused_before_the_work(
    run, tmp_path: Path, capsys, monkeypatch, command: list[str], target: str
) -> None:
    # A folder where the submission goes, a file where a folder goes or among the parents:
    # said at once, not after every image was scored (the full test split: minutes).
    import tinycnn.inference

    cache, folder = run
    out = tmp_path / "out"
    out.mkdir() if target == "folder" else out.write_text("something")

    def scored(*args, **kwargs):
        raise AssertionError("scored images before checking the output path")

    monkeypatch.setattr(tinycnn.inference.LoadedModel, "logits", scored)
    argv = [a.format(run=folder, cache=cache, out=out) for a in command]
    assert main([*argv, "-q"]) == 1
    err = capsys.readouterr().err.strip()
    reason = (
        {
            "folder": "(it is a folder)",
            "file": "(it is a file, and a folder is written here)",
        }[target]
        if not argv[-1].endswith("sub.txt")
        else f"(a parent is a file, not a folder: {out})"
    )
    assert f"cannot write {reason}; " in err and err.endswith("nothing was written"), err
    assert "\n" not in err
    assert (out.is_dir() and not any(out.iterdir())) or out.read_text() == "something"

"""run_plan.py: what a run checks before it touches its folder (the cache, the device, the
hold-out, --init-from, --exclude, TensorBoard): a failed start leaves no folder."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import small_config, train_argv
from tinycnn.checkpoint import load_checkpoint
from tinycnn.cli import main
from tinycnn.errors import ConfigError
from tinycnn.training import train


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("train.device=cuda:0", "CUDA is not available"),
        ("data.holdout_per_class=12", "data.holdout_per_class = 12: class 0 has only 12"),
        # Each of these had left a run folder (.lock, config.toml), some with a traceback;
        # a study rerun then "resumed" the refused start with the old preset.
        ("augment.pad=64", "augment.pad must be < image side"),
        ("train.device=meta", "train.device = 'meta': expected auto, cpu or cuda"),
        ("train.device=xpu", "train.device = 'xpu': expected auto, cpu or cuda"),
        ("optim.eps=-1", "optim.eps = -1.0: must be a positive number"),
        ("optim.eps=nan", "optim.eps = nan: must be a positive number"),
        ("optim.momentum=0", 'optim.momentum = 0: optim.name = "nesterov" needs a momentum'),
        ("train.seed=18446744073709551616", "train.seed = 18446744073709551616: must be in"),
        ("train.threads=100000", "train.threads = 100000: at most 1024"),
    ],
)
def test_a_failed_start_leaves_no_run_folder(
    cache: Path, tmp_path: Path, capsys, setting: str, message: str
) -> None:
    if setting.startswith("train.device=cuda") and torch.cuda.is_available():
        setting = "train.device=cuda:99"
        message = "cuda:99"
    extra = ["--set", "optim.name=nesterov"] if "momentum" in setting else []
    out = tmp_path / "run"
    assert main(train_argv(cache, out, *extra, "--set", setting)) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_a_start_refused_after_the_folder_is_made_leaves_nothing_behind(
    cache: Path, tmp_path: Path, capsys
) -> None:
    # More cycles than iterations is found where the schedule is built, after the run folder
    # is made: the folder it made goes; in a folder that was there, the files it wrote go.
    cyclic = ["--set", "schedule.name=cyclic", "--set", "schedule.cycles=100000"]
    out = tmp_path / "run"
    assert main(train_argv(cache, out, *cyclic)) == 1
    assert "schedule.cycles = 100000" in capsys.readouterr().err
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(train_argv(cache, out, *cyclic)) == 1
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    # A folder that holds a run is refused as before, and keeps every file.
    assert main(train_argv(cache, out, "--stop-at", "1")) == 0
    held = sorted(p.name for p in out.iterdir())
    assert main(train_argv(cache, out, *cyclic)) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == held


def test_training_refuses_a_damaged_cache(cache: Path, tmp_path: Path, capsys) -> None:
    damaged = tmp_path / "cache"
    shutil.copytree(cache, damaged)
    images = damaged / "train_images.npy"
    data = bytearray(images.read_bytes())
    data[-5000:] = bytes(5000)  # zeroed pixels: same size, so only a checksum can tell
    images.write_bytes(bytes(data))
    out = tmp_path / "run"
    assert main(train_argv(damaged, out)) == 1
    err = capsys.readouterr().err.strip()
    assert str(images) in err and "--force" in err and "\n" not in err, err
    assert not out.exists()


def test_init_from_weights_that_do_not_fit_is_one_line_before_any_work(
    cache: Path, tmp_path: Path, capsys
) -> None:
    first = tmp_path / "first"
    assert main(train_argv(cache, first, "--set", "train.epochs=1")) == 0
    out = tmp_path / "wider"
    checkpoint = first / "checkpoints" / "last.pt"
    argv = train_argv(cache, out, "--set", "model.fc_widths=[64]", "--init-from", str(checkpoint))
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert str(checkpoint) in err and "shape of" in err and "(32, " in err and "\n" not in err, err
    assert not out.exists()


def test_exclude_drops_the_listed_training_images(cache: Path, tmp_path: Path, capsys) -> None:
    from tinycnn.data.cache import load_cache

    files = load_cache(cache).split("train").files
    listed = tmp_path / "ambiguous.txt"
    listed.write_text(f"# two images\n{files[0]}\n{files[7]}\n{files[7]}\n")
    out = tmp_path / "run"
    argv = train_argv(cache, out, "--set", "train.epochs=1")
    assert main([*argv, "--exclude", str(listed)]) == 0
    config = (out / "config.toml").read_text()
    assert f'exclude = "{listed}"' in config
    from tinycnn.config import config_from_dict
    from tinycnn.run_folder import read_resolved_config
    from tinycnn.run_plan import training_rows

    cfg = config_from_dict(read_resolved_config(out))
    train_rows, tune_rows = training_rows(cfg, load_cache(cache))
    assert len(train_rows) == 60 - 10 - 2 + len({0, 7} & set(tune_rows.tolist()))
    assert not {0, 7} & set(train_rows.tolist())
    listed.write_text("train/nope.JPEG\n")
    assert main(train_argv(cache, tmp_path / "bad", "--exclude", str(listed))) == 1
    err = capsys.readouterr().err
    assert f"{listed} line 1: 'train/nope.JPEG' is not a training image" in err
    assert not (tmp_path / "bad").exists()


def test_init_from_in_a_config_file_is_honoured_and_resolved(
    cache: Path, tmp_path: Path, monkeypatch
) -> None:
    first = tmp_path / "first"
    assert main(train_argv(cache, first, "--set", "train.epochs=1")) == 0
    monkeypatch.chdir(tmp_path)  # a relative path, as a user types it
    relative = "first/checkpoints/last.pt"
    second = tmp_path / "second"
    settings = ["--set", f'train.init_from="{relative}"', "--set", "optim.lr=1e-12"]
    assert main(train_argv(cache, second, "--set", "train.epochs=1", *settings)) == 0
    assert f'init_from = "{tmp_path / relative}"' in (second / "config.toml").read_text()
    start = load_checkpoint(first / "checkpoints" / "last.pt")["model"]["state"]
    after = load_checkpoint(second / "checkpoints" / "last.pt")["model"]["state"]
    for name, tensor in start.items():  # lr 1e-12: one epoch moves nothing measurable
        assert torch.allclose(after[name], tensor, atol=1e-6), name


def test_tensorboard_missing_is_one_clear_error(cache: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        train(small_config(cache, "train.tensorboard=true"), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def test_an_edited_run_config_and_a_bad_device_option_are_named(
    cache: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--stop-at", "1")) == 0
    config = out / "config.toml"
    config.write_text(config.read_text().replace("max_minutes =", "max_minute ="))
    assert main(["train", "--resume", str(out), "-q"]) == 1
    assert f"tinycnn: error: {config}: unknown key train.max_minute" in capsys.readouterr().err
    # evaluate's --device had been blamed on train.device, which the user had not typed.
    argv = ["evaluate", str(out), "--data", str(cache), "--device", "foo"]
    assert main(argv) == 1
    assert "tinycnn: error: --device foo: not a device" in capsys.readouterr().err

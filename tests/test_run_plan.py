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
    ],
)
def test_a_failed_start_leaves_no_run_folder(
    cache: Path, tmp_path: Path, capsys, setting: str, message: str
) -> None:
    if setting.startswith("train.device") and torch.cuda.is_available():
        setting = "train.device=cuda:99"
        message = "cuda:99"
    out = tmp_path / "run"
    assert main(train_argv(cache, out, "--set", setting)) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


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

"""Checkpoints: bytes damaged after writing are refused by every load, naming the file; files that
are not what a checkpoint claims (pickled modules, bare state dicts, other keys or shapes) are
one line in every command that loads one."""

from __future__ import annotations

import json
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from tests.helpers import SMALL, Small, assert_one_line_error, run_cli
from tinycnn.checkpoint import CheckpointError, check_classes, load_checkpoint, save_checkpoint
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.errors import ConfigError
from tinycnn.evaluation import evaluate
from tinycnn.inference import load_model
from tinycnn.training import train


def damage_largest_tensor(path: Path, count: int = 16) -> str:
    """Invert count bytes in the middle of the checkpoint's largest entry; returns its name.

    The archive stays a valid zip of the same size: only the entry's CRC-32 can tell.
    """
    with zipfile.ZipFile(path) as archive:
        entry = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(path.read_bytes())
    # The local header: 30 fixed bytes, then the name and the extra field, then the data.
    name_length, extra_length = struct.unpack_from("<HH", data, entry.header_offset + 26)
    start = entry.header_offset + 30 + name_length + extra_length + entry.compress_size // 2
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))
    return entry.filename


@pytest.fixture(scope="module")
def run(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """(cache, run folder) of one epoch of a tiny model: last.pt, best.pt, epoch-001.pt."""
    root = tmp_path_factory.mktemp("ckpt")
    cache = prepare(synth_sources["folder"], root / "cache", progress=False).path
    cfg = load_config(None, [f"data.cache={json.dumps(str(cache))}", *SMALL, "train.epochs=1"])
    train(cfg, root / "run", progress=False)
    return cache, root / "run"


@pytest.fixture
def damaged(run, tmp_path: Path) -> tuple[Path, str]:
    """(a copy of best.pt damaged in its largest tensor, the damaged entry's name)."""
    path = tmp_path / "damaged.pt"
    shutil.copyfile(run[1] / "checkpoints" / "best.pt", path)
    return path, damage_largest_tensor(path)


LOADERS = {  # name: call it on (cache, checkpoint)
    "load_checkpoint": lambda cache, path: load_checkpoint(path),
    "load_model": lambda cache, path: load_model(path),
    "evaluate": lambda cache, path: evaluate([path], cache, progress=False),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_damaged_tensor_bytes_are_refused_naming_the_file_and_entry(run, damaged, loader) -> None:
    path, entry = damaged
    with pytest.raises(CheckpointError) as caught:
        LOADERS[loader](run[0], path)
    message = str(caught.value)
    assert message.startswith(f"{path}: damaged checkpoint (entry {entry}: "), message
    assert "CRC-32" in message and "use another checkpoint" in message and "\n" not in message


def _same(a: object, b: object) -> bool:
    """Equal payloads: tensors by their values, containers element by element."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def _header_bytes(path: Path) -> list[int]:
    """Offsets of every byte of the archive's headers: each entry's local header and name, and
    the central directory with the end records (everything but the entries' data)."""
    data = path.read_bytes()
    offsets: list[int] = []
    with zipfile.ZipFile(path) as archive:
        for entry in archive.infolist():
            (name_length,) = struct.unpack_from("<H", data, entry.header_offset + 26)
            offsets += range(entry.header_offset, entry.header_offset + 30 + name_length)
        directory = min(archive.start_dir, len(data))
    return [*offsets, *range(directory, len(data))]


def test_a_flipped_bit_in_any_zip_header_is_refused_or_harmless(run, tmp_path: Path) -> None:
    # Every header byte with its lowest and its highest bit flipped: each load either refuses
    # the file as a CheckpointError naming it, or reads the very same payload (flips in fields
    # zipfile ignores). A flip in an entry's name (UnicodeDecodeError), in its flags ("is
    # encrypted", a RuntimeError) or in the end record ("span multiple disks", BadZipFile from
    # is_zipfile) had escaped as a traceback.
    source = run[1] / "checkpoints" / "best.pt"
    sound = load_checkpoint(source)
    original = source.read_bytes()
    path = tmp_path / "flipped.pt"
    refused = 0
    for offset in _header_bytes(source):
        for bit in (0x01, 0x80):
            data = bytearray(original)
            data[offset] ^= bit
            path.write_bytes(bytes(data))
            try:
                payload = load_checkpoint(path)
            except CheckpointError as exc:
                assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc), str(exc)
                refused += 1
                continue
            assert _same(payload, sound), offset
    assert refused > 100  # most header bytes matter


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under folder and its bytes, but the lock (each command stamps its pid in)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def test_the_cli_refuses_a_damaged_checkpoint_in_one_line(run, damaged, tmp_path, capsys) -> None:
    cache, _ = run
    path, entry = damaged
    out = tmp_path / "out"
    commands = {
        "evaluate": ["evaluate", path, "--data", cache, "--json"],
        "init-from": ["train", "--data", cache, "--init-from", path, "--out", out, "-q"],
        "report": ["report", path, "--data", cache, "--out", out],
    }
    for name, argv in commands.items():
        assert main([str(a) for a in argv]) == 1, name
        captured = capsys.readouterr()
        line = captured.err.strip()
        assert line.startswith(f"tinycnn: error: {path}: damaged checkpoint (entry {entry}"), line
        assert "\n" not in line and not captured.out, name
        assert not out.exists(), f"{name} wrote {out}"


def test_resume_refuses_a_damaged_last_checkpoint_and_writes_nothing(
    run, tmp_path: Path, capsys
) -> None:
    out = Path(shutil.copytree(run[1], tmp_path / "run"))
    last = out / "checkpoints" / "last.pt"
    entry = damage_largest_tensor(last)
    before = _tree(out)
    assert main(["train", "--resume", str(out), "-q"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"tinycnn: error: {last}: damaged checkpoint (entry {entry}"), line
    assert line.endswith("); a resume needs this file (the snapshots hold no optimiser state): "
                         "put back a sound copy, or train a new run from a snapshot with "
                         "--init-from"), line  # fmt: skip
    assert "use another checkpoint" not in line
    assert "\n" not in line
    assert _tree(out) == before  # nothing written, nothing removed
    # Cut short (a copy that stopped): the same advice.
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = _tree(out)
    assert main(["train", "--resume", str(out), "-q"]) == 1
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"tinycnn: error: {last}: not a readable checkpoint ("), line
    assert line.endswith("train a new run from a snapshot with --init-from") and "\n" not in line
    assert _tree(out) == before


def test_sound_checkpoints_load_and_unchecksummed_ones_are_not_refused(
    run, tmp_path: Path, monkeypatch
) -> None:
    best = run[1] / "checkpoints" / "best.pt"
    assert load_checkpoint(best)["iteration"] == 3
    # torch may be told to write no CRC-32 (0 for every entry): nothing to check, still loads.
    from torch.utils.serialization import config

    monkeypatch.setattr(config.save, "compute_crc32", False)
    plain = tmp_path / "plain.pt"
    torch.save(load_checkpoint(best), plain)
    with zipfile.ZipFile(plain) as archive:
        assert {info.CRC for info in archive.infolist() if info.file_size} == {0}
    assert load_checkpoint(plain)["iteration"] == 3


@pytest.mark.parametrize(
    ("classes", "difference"),
    [
        (["n03", "n02", "n01"], "same classes, different order"),
        (["n01", "n02"], "3 classes vs 2"),
        (["n01", "n02", "n09"], "1 classes differ, e.g. n09"),
    ],
)
def test_a_class_list_other_than_the_checkpoints_is_refused_saying_how(
    classes: list[str], difference: str
) -> None:
    trained = ["n01", "n02", "n03"]
    check_classes(trained, list(trained), "run/last.pt", "data/tiny")  # the same: no error
    with pytest.raises(ConfigError) as caught:
        check_classes(trained, classes, "run/last.pt", "data/tiny")
    assert str(caught.value) == (
        f"run/last.pt: trained on a different class list than data/tiny ({difference}); use "
        "data prepared from the same dataset"
    )


# --- checkpoints that are not what they claim: one line in every command that loads one -------


def _edited(small: Small, path: Path, edit) -> Path:
    payload = torch.load(small.checkpoint, weights_only=True)
    edit(payload)
    save_checkpoint(path, payload)
    return path


def _bad_state(payload: dict) -> None:
    state = payload["model"]["state"]
    del state["features.0.weight"]
    state["extra.weight"] = torch.zeros(1)


def _bad_shapes(payload: dict) -> None:
    state = payload["model"]["state"]
    state["classifier.weight"] = torch.zeros(10, 32)
    state["classifier.bias"] = torch.zeros(10)


BAD_CHECKPOINTS = {  # name: (make it from the small run, words the one line must hold)
    "pickled module": (
        lambda s, p: torch.save(load_model(s.checkpoint).model, p),
        "a pickled tinycnn.models.paper.PaperCNN object",
    ),
    "bare state dict": (
        lambda s, p: torch.save(load_model(s.checkpoint).model.state_dict(), p),
        "a bare state dict",
    ),
    "missing and unexpected keys": (
        lambda s, p: _edited(s, p, _bad_state),
        "missing keys: features.0.weight; unexpected keys: extra.weight",
    ),
    "wrong shapes": (
        lambda s, p: _edited(s, p, _bad_shapes),
        "shape of classifier.weight is (10, 32) in the checkpoint, (5, 32) in cnn5; "
        "shape of classifier.bias is (10,) in the checkpoint, (5,) in cnn5",
    ),
    "unknown model": (
        lambda s, p: _edited(s, p, lambda d: d["model"].update(name="resnet999")),
        "cannot rebuild its model (unknown model 'resnet999'",
    ),
    "missing field": (
        lambda s, p: _edited(s, p, lambda d: d.pop("classes")),
        "missing classes",
    ),
    "truncated": (
        lambda s, p: p.write_bytes(s.checkpoint.read_bytes()[:5000]),
        "not a readable checkpoint (not a PyTorch zip archive",
    ),
    "damaged tensor bytes": (
        lambda s, p: damage_largest_tensor(Path(shutil.copyfile(s.checkpoint, p))),
        "damaged checkpoint (entry ",
    ),
}

LOADING_COMMANDS = {
    "evaluate": lambda s, ckpt, out: ["evaluate", ckpt, "--data", s.cache],
    "ensemble": lambda s, ckpt, out: [
        *("ensemble", ckpt, s.checkpoint, "--data", s.cache, "--out", out, "--no-cache"),
    ],
    "predict": lambda s, ckpt, out: ["predict", ckpt, "--images", s.dataset / "test"],
    "export": lambda s, ckpt, out: [
        *("export", ckpt, "--format", "torchscript", "--out", out / "m.pt", "--data", s.cache),
    ],
}


@pytest.fixture(scope="module")
def bad_checkpoints(small: Small, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    paths = {}
    for name, (make, _) in BAD_CHECKPOINTS.items():
        paths[name] = root / f"{name.replace(' ', '-')}.pt"
        make(small, paths[name])
    return paths


@pytest.mark.parametrize("command", sorted(LOADING_COMMANDS))
@pytest.mark.parametrize("kind", sorted(BAD_CHECKPOINTS))
def test_bad_checkpoints_are_one_line_in_every_command(
    small: Small,
    bad_checkpoints: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    kind: str,
    command: str,
) -> None:
    path = bad_checkpoints[kind]
    code, _, err = run_cli(capsys, LOADING_COMMANDS[command](small, path, tmp_path / "out"))
    line = assert_one_line_error(code, err, f"{path}: ", BAD_CHECKPOINTS[kind][1])
    assert "weights_only" not in line and "trust" not in line  # none of torch's advice
    assert not (tmp_path / "out").exists()  # nothing written


def test_read_checkpoint_hashes_checks_and_loads_one_version(tmp_path: Path, monkeypatch) -> None:
    # A checkpoint replaced (by a rename, as every writer does) while it is read: the payload and
    # the digest are both the version that was opened, the digest that of its bytes (hashlib over
    # the file, read before the replacement).
    import hashlib

    import tinycnn.checkpoint as checkpoint

    path, newer = tmp_path / "best.pt", tmp_path / "newer.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"state": {"w": torch.ones(64, 64)}}})
    save_checkpoint(newer, {"epoch": 2, "model": {"state": {"w": torch.zeros(64, 64)}}})
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    original = torch.load

    def replaced_first(*args, **kwargs):
        newer.replace(path)  # between the digest and the load
        return original(*args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "load", replaced_first)
    payload, digest = checkpoint.read_checkpoint(path)
    assert payload["epoch"] == 1 and bool((payload["model"]["state"]["w"] == 1).all())
    assert digest == expected

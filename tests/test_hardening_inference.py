"""Hardening of the inference side (issue 7): full disks, read-only folders, stale ensemble caches,
huge images, bad checkpoints and configs each give one line and exit 1, never a traceback.

Full disks and read-only folders are simulated in-process: the tests run as root, where chmod
0o555 stops nothing, so tinycnn.atomic's ``open`` is replaced by one whose writes fail with the
errno (after part of the data, so a half-written temporary file exists and must be removed),
or ``os.fsync`` fails (as a full NFS or quota-limited disk reports it).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.helpers import Small, assert_one_line_error, fail_fsync, fail_writes, run_cli
from tests.test_checkpoint import damage_largest_tensor
from tinycnn import atomic
from tinycnn.atomic import save_npy, write_json, write_text
from tinycnn.checkpoint import save_checkpoint
from tinycnn.cli import build_parser
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.ensembles import ProbabilityCache, ProbabilityCacheWarning, ensemble
from tinycnn.errors import ConfigError, OutputError
from tinycnn.inference import load_model
from tinycnn.prediction import MAX_PIXELS, load_images
from tinycnn.runtime import make_runtime

# errno, strerror, the words the message must use
WRITE_FAILURES = [
    (errno.ENOSPC, "No space left on device", "disk full"),
    (errno.EDQUOT, "Disk quota exceeded", "disk quota exceeded"),
    (errno.EROFS, "Read-only file system", "read-only file system"),
    (errno.EACCES, "Permission denied", "permission denied"),
]


WRITERS = {
    "text": lambda path: write_text(path, "hello\n"),
    "json": lambda path: write_json(path, {"a": 1}),
    "npy": lambda path: save_npy(path, np.zeros((100, 10), np.float32)),
    "checkpoint": lambda path: save_checkpoint(path, {"weights": torch.zeros(1000)}),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize(("code", "text", "words"), WRITE_FAILURES)
@pytest.mark.parametrize("fail", [fail_writes, fail_fsync])
def test_failed_write_is_one_output_error_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer, code, text, words, fail
) -> None:
    target = tmp_path / "out" / "new" / "file.bin"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("other file")
    fail(monkeypatch, code, text)
    with pytest.raises(OutputError) as caught:
        WRITERS[writer](target)
    message = str(caught.value)
    assert str(target) in message and words in message and "\n" not in message
    # No temporary file, no target, and the folder made for it is gone again.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "result.json"
    write_json(target, {"old": True})
    fail_writes(monkeypatch, errno.ENOSPC, "No space left on device")
    with pytest.raises(OutputError, match="disk full"):
        write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_parent_that_is_a_file_is_one_output_error(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file")
    with pytest.raises(OutputError, match="not a folder"):
        write_text(tmp_path / "plain" / "sub" / "x.txt", "hi")


def test_other_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError), atomic.atomic_path(tmp_path / "x") as tmp:
        tmp.write_text("half")
        1 / 0  # noqa: B018
    assert list(tmp_path.iterdir()) == []


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


# --- the ensemble's probability cache: keyed on the data's content; optional -----------------


def _pad(data: bytes, size: int) -> bytes:
    return data + b"\0" * (size - len(data))  # after the JPEG's end marker: ignored by decoders


def test_ensemble_follows_a_rebuilt_cache_whose_source_looks_unchanged(
    small: Small, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A rebuilt cache with other pixels, from a source whose names, sizes and times are the
    same (so its fingerprint is too): the cached member probabilities must not be reused."""
    dataset = Path(shutil.copytree(small.dataset, tmp_path / "data"))
    images = dataset / "val" / "images"
    first, other = (images / "val_0.JPEG").read_bytes(), (images / "val_1.JPEG").read_bytes()
    size = max(len(first), len(other))
    (images / "val_0.JPEG").write_bytes(_pad(first, size))
    cache = prepare(dataset, tmp_path / "cache", workers=1, progress=False)
    store, out = tmp_path / "probs", tmp_path / "ens"
    args = ["--data", cache.path, "--device", "cpu", "--precision", "fp32", "--json"]
    ensemble_args = ["ensemble", small.checkpoint, *args, "--prob-cache", store, "--out", out]
    assert run_cli(capsys, ensemble_args)[0] == 0

    stat = (images / "val_0.JPEG").stat()
    (images / "val_0.JPEG").write_bytes(_pad(other, size))  # another picture, same size and time
    os.utime(images / "val_0.JPEG", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    rebuilt = prepare(dataset, tmp_path / "cache", workers=1, progress=False, force=True)
    assert rebuilt.manifest["source"] == cache.manifest["source"]  # the source looks the same

    code, printed, _ = run_cli(capsys, ensemble_args)
    assert code == 0
    member = json.loads(printed)["members"][0]
    code, printed, _ = run_cli(capsys, ["evaluate", small.checkpoint, *args])
    assert member["top1_error"] == json.loads(printed)["top1_error"]
    fp32 = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    fresh = load_model(small.checkpoint, fp32).probabilities(
        torch.from_numpy(np.array(load_cache(rebuilt.path).split("val").images))
    )
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), fresh.numpy(), atol=1e-6)


KEY_CHANGES = {
    "same": lambda k: k,
    "checkpoint": lambda k: {**k, "checkpoint": k["other_checkpoint"]},
    "data": lambda k: {**k, "cache": SimpleNamespace(content_id="0123456789abcdef")},
    "split": lambda k: {**k, "split": "train"},
    "rows": lambda k: {**k, "split": "tune", "rows": np.array([1, 2, 3])},
    "tune rows": lambda k: {**k, "split": "tune", "rows": np.array([1, 2, 4])},
    "tta": lambda k: {**k, "tta": "flip"},
    "precision": lambda k: {**k, "precision": "bf16"},
}


def test_probability_cache_key_covers_everything_probabilities_depend_on(
    small: Small, tmp_path: Path
) -> None:
    other = tmp_path / "other.pt"
    payload = torch.load(small.checkpoint, weights_only=True)
    save_checkpoint(other, {**payload, "iteration": payload["iteration"] + 1})
    base = {
        "checkpoint": small.checkpoint,
        "cache": load_cache(small.cache),
        "split": "val",
        "tta": "center",
        "rows": None,
        "precision": "fp32",
        "other_checkpoint": other,
    }

    def key(parts: dict) -> str:
        return ProbabilityCache.key(**{k: v for k, v in parts.items() if k != "other_checkpoint"})

    keys = {name: key(make(base)) for name, make in KEY_CHANGES.items()}
    assert key(base) == keys["same"]  # stable
    assert len(set(keys.values())) == len(keys), keys  # every change gives its own key


def _prob_cache_under_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "plain").write_text("not a folder")
    return tmp_path / "plain" / "probs"  # real: mkdir fails, no mock


def _read_only_prob_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "probs"
    fail_writes(monkeypatch, errno.EROFS, "Read-only file system", under=store)
    return store


def _full_prob_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "probs"
    fail_fsync(monkeypatch, errno.ENOSPC, "No space left on device", under=store)
    return store


@pytest.mark.parametrize(
    ("make_store", "words"),
    [
        (_prob_cache_under_a_file, "not a folder"),
        (_read_only_prob_cache, "read-only file system"),
        (_full_prob_cache, "disk full"),
    ],
)
def test_an_unwritable_probability_cache_is_one_warning_not_a_failure(
    small: Small,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    make_store,
    words: str,
) -> None:
    store = make_store(tmp_path, monkeypatch)
    out = tmp_path / "ens"
    argv = [
        *("ensemble", small.checkpoint, f"{small.run}@last", "--data", small.cache),
        *("--device", "cpu", "--prob-cache", store, "--out", out, "-q"),
    ]
    code, printed, err = run_cli(capsys, argv)
    assert code == 0, err
    assert "ensemble: " in printed and "its best member" in printed
    assert (out / "probabilities.npy").is_file() and (out / "ensemble.json").is_file()
    lines = err.strip().splitlines()  # two members, one warning
    assert len(lines) == 1 and lines[0].startswith("tinycnn: warning: "), err
    assert str(store) in lines[0] and words in lines[0]


def test_an_unreadable_cached_entry_is_computed_again(small: Small, tmp_path: Path) -> None:
    store = tmp_path / "probs"
    fp32 = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    first = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    [entry] = store.iterdir()
    entry.write_bytes(entry.read_bytes()[:50])  # truncated
    with pytest.warns(ProbabilityCacheWarning, match="unreadable cached probabilities"):
        again = ensemble([str(small.checkpoint)], small.cache, runtime=fp32, prob_cache=store)
    np.testing.assert_array_equal(first.probabilities, again.probabilities)


# --- predict: images too large to decode safely ----------------------------------------------


def _huge_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width x height, all black, written row by row (~17 KB for 12000^2)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)  # filter byte, then 8 pixels a byte
    data = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data)
    path.write_bytes(png + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _huge_png(tmp_path_factory.mktemp("huge") / "huge.png", 12000, 12000)


# (image side, max_pixels, the reason's words, or None when the image is predicted)
PIXEL_LIMITS = [
    (12000, MAX_PIXELS, "12000x12000 = 144,000,000 pixels, over the limit of 50,000,000"),
    (100, 9_999, "100x100 = 10,000 pixels, over the limit of 9,999"),
    (100, 10_000, None),  # the limit itself is allowed
    (100, 0, None),  # no limit
    (12000, 143_999_999, "over the limit of 143,999,999"),
]


@pytest.mark.parametrize(("side", "max_pixels", "words"), PIXEL_LIMITS)
def test_images_over_the_pixel_limit_are_refused_before_decoding(
    huge_png: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    side: int,
    max_pixels: int,
    words: str | None,
) -> None:
    from PIL import ImageFile

    if side == 12000:
        path = huge_png
        real_load = ImageFile.ImageFile.load

        def load(image):  # decoding the big one would take ~1 GB: it must not happen
            assert image.size != (12000, 12000), "the huge image was decoded"
            return real_load(image)

        monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    else:
        path = _huge_png(tmp_path / "small.png", side, side)
    files, images, failures = load_images([path], max_pixels=max_pixels)
    if words is None:
        assert files == [path] and images.shape == (1, 64, 64, 3) and not failures
    else:
        assert files == [] and len(failures) == 1 and failures[0][0] == path
        assert words in failures[0][1] and "--max-pixels" in failures[0][1], failures


def test_cli_predict_reports_a_huge_image_and_predicts_the_rest(
    small: Small, huge_png: Path, capsys: pytest.CaptureFixture
) -> None:
    image = next((small.dataset / "val" / "images").iterdir())
    argv = ["predict", small.checkpoint, "--images", huge_png, image, "--device", "cpu"]
    code, printed, err = run_cli(capsys, argv)
    assert code == 2, err  # some predicted, some not
    assert f"{huge_png}: image too large: 12000x12000" in printed
    code, printed, err = run_cli(capsys, [*argv, "--max-pixels", "100"])
    assert code == 1 and printed.count("over the limit of 100 ") == 2, printed
    code, _, err = run_cli(capsys, [*argv, "--max-pixels", "-1"])
    assert_one_line_error(code, err, "--max-pixels -1")
    parser_default = build_parser().parse_args(["predict", "x"]).max_pixels
    assert parser_default == MAX_PIXELS  # the CLI does not import predict.py to read it


# --- checkpoints that are not what they claim, and configs that cannot be ---------------------


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


CLASS_COUNT_CONFIGS = [  # (TOML text or None, --set overrides)
    (None, ["model.num_classes=5"]),
    ("[model]\nname = 'cnn5'\nnum_classes = 10\n", []),
    (None, ["model.options={num_classes = 5}"]),
]


@pytest.mark.parametrize(("toml", "overrides"), CLASS_COUNT_CONFIGS)
def test_num_classes_in_a_config_is_a_config_error(
    tmp_path: Path, toml: str | None, overrides: list[str]
) -> None:
    path = None
    if toml is not None:
        path = tmp_path / "run.toml"
        path.write_text(toml)
    with pytest.raises(ConfigError, match=r"model.num_classes = \d+: the number of classes comes "):
        load_config(path, overrides)


def test_cli_train_with_num_classes_is_one_line(
    small: Small, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["train", "--data", small.cache, "--out", tmp_path / "run"]
    code, _, err = run_cli(capsys, [*argv, "--set", "model.num_classes=5"])
    assert_one_line_error(code, err, "model.num_classes = 5", "comes from the data")
    assert not (tmp_path / "run").exists()

"""Export: ONNX and TorchScript files that hold the preprocessing and match evaluation's logits."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx  # the test extra installs onnx and onnxruntime: never skip the round trip
import onnxruntime
import pytest
import torch

from tinycnn import checkpoint, export
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.errors import CacheError, ConfigError
from tinycnn.export import (
    ExportError,
    Preprocessed,
    export_model,
    find_check_images,
    format_report,
)
from tinycnn.inference import load_model
from tinycnn.runtime import make_runtime
from tinycnn.training import train

# Normalisations, each with its config overrides; "mean_image/255" is Caffe's transform_param scale.
NORMS = {
    "mean_image": ['data.normalization="mean_image"'],
    "channel": ['data.normalization="channel"'],
    "none": ['data.normalization="none"'],
    "mean_image/255": ['data.normalization="mean_image"', "data.scale=0.00390625"],
}
KINDS = tuple(NORMS)
FORMATS = ("onnx", "torchscript")
# A tiny cnn5 for the real 10-class subset; a low lr: mean-image inputs are on the 0-255 scale.
TINY = [
    "model.name=cnn5",
    "model.conv_channels=[8, 8, 8]",
    "model.fc_widths=[32]",
    "train.batch_size=16",
    "train.eval_batch_size=64",
    "optim.name=nesterov",
    "optim.lr=0.0005",
    'train.device="cpu"',
    'train.precision="fp32"',
    "train.threads=1",
    "train.epochs=1",
]


@pytest.fixture(scope="module")
def mini_cache(mini_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "cache"
    return prepare(mini_archive, out, workers=1, progress=False).path


@pytest.fixture(scope="module")
def val_images(mini_cache: Path) -> np.ndarray:
    """16 real validation images, (16, 64, 64, 3) uint8."""
    return np.array(load_cache(mini_cache).split("val").images[:16])


@pytest.fixture(scope="module")
def checkpoints(mini_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A briefly trained checkpoint (5 iterations) for each normalisation kind."""
    root = tmp_path_factory.mktemp("runs")
    paths = {}
    for kind in KINDS:
        cache = f"data.cache={json.dumps(str(mini_cache))}"
        cfg = load_config(None, [cache, *TINY, *NORMS[kind]])
        folder = root / kind.replace("/", "_")
        train(cfg, folder, progress=False, stop_at_iteration=5)
        paths[kind] = folder / "checkpoints" / "last.pt"
    return paths


@pytest.fixture(scope="module")
def exported(
    checkpoints: dict[str, Path], val_images: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], export.ExportReport]:
    """Every (normalisation kind, format) exported once, checked on the real images."""
    root = tmp_path_factory.mktemp("exported")
    return {
        (kind, fmt): export_model(
            checkpoints[kind],
            fmt,
            root / f"{kind.replace('/', '_')}.{fmt}",
            check_images=val_images,
        )
        for kind in KINDS
        for fmt in FORMATS
    }


def _evaluation_logits(checkpoint: Path, images: np.ndarray) -> np.ndarray:
    runtime = make_runtime("cpu", "fp32", channels_last=False, threads=torch.get_num_threads())
    return load_model(checkpoint, runtime).logits(torch.from_numpy(images), tta="center").numpy()


def _run_file(path: Path, fmt: str, images: np.ndarray) -> np.ndarray:
    """Logits of an exported file, loaded the way a user would load it."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"images": images})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated upstream
        module = torch.jit.load(str(path))
    with torch.inference_mode():
        return module(torch.from_numpy(images)).numpy()


def _close(actual: np.ndarray, expected: np.ndarray) -> float:
    assert actual.shape == expected.shape and actual.dtype == np.float32
    diff = float(np.abs(actual - expected).max())
    assert diff <= 1e-3 * max(1.0, float(np.abs(expected).max())), diff
    return diff


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_matches_evaluation_logits(
    exported, checkpoints, val_images: np.ndarray, kind: str, fmt: str
) -> None:
    report = exported[kind, fmt]
    assert report.format == fmt and report.images_checked == 16 and report.path.is_file()
    assert report.max_abs_logit_diff <= report.tolerance
    expected = _evaluation_logits(checkpoints[kind], val_images)
    actual = _run_file(report.path, fmt, val_images)
    _close(actual, expected)
    assert (actual.argmax(1) == expected.argmax(1)).all()
    assert not list(report.path.parent.glob(".*tmp*"))  # no temporary file left behind


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("batch", [1, 5])
def test_batch_size_is_dynamic(exported, checkpoints, val_images, fmt: str, batch: int) -> None:
    images = val_images[3 : 3 + batch]
    expected = _evaluation_logits(checkpoints["mean_image"], images)
    _close(_run_file(exported["mean_image", fmt].path, fmt, images), expected)


def test_onnx_carries_the_contract_and_class_list(exported, mini_cache: Path) -> None:
    cache = load_cache(mini_cache)
    model = onnx.load(str(exported["channel", "onnx"].path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["classes"]) == cache.classes
    assert json.loads(meta["names"]) == cache.names
    assert meta["input_spec"] == exported["channel", "onnx"].input_spec
    assert "uint8[N, 64, 64, 3]" in meta["input_spec"] and "float32[N, 10]" in meta["input_spec"]
    assert "normalisation channel" in meta["preprocessing"] and "uint8" in model.doc_string
    (images,), (logits,) = model.graph.input, model.graph.output
    assert (images.name, logits.name) == ("images", "logits")
    assert images.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in images.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [64, 64, 3]


def test_torchscript_carries_the_class_list(exported, mini_cache: Path) -> None:
    cache = load_cache(mini_cache)
    extra = {"classes.json": "", "names.json": "", "input_spec.txt": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.load(str(exported["none", "torchscript"].path), _extra_files=extra)
    assert json.loads(extra["classes.json"]) == cache.classes
    assert json.loads(extra["names.json"]) == cache.names
    assert extra["input_spec.txt"].decode() == exported["none", "torchscript"].input_spec


def test_default_check_uses_random_images(checkpoints, tmp_path: Path) -> None:
    report = export_model(checkpoints["channel"], "torchscript", tmp_path / "m.pt")
    assert report.images_checked == export.CHECK_IMAGES
    first, second = format_report(report).splitlines()
    assert str(tmp_path / "m.pt") in first and "torchscript" in first
    assert "8 images" in second and "tolerance" in second


@pytest.mark.parametrize(
    ("spec", "data", "count", "expected_count"),
    [
        ("file", None, 5, 5),  # the checkpoint's training cache
        ("run@last", None, 16, 16),
        ("file", "cache", 3, 3),  # --data: that cache
        ("file", "cache", 10_000, 500),  # no more than the val split's 500
    ],
)
def test_check_images_are_the_first_val_images(
    checkpoints, mini_cache: Path, val_images, spec: str, data, count: int, expected_count: int
) -> None:
    checkpoint = checkpoints["channel"]
    spec = f"{checkpoint.parent.parent}@last" if spec == "run@last" else checkpoint
    images, source = find_check_images(spec, mini_cache if data else None, count)
    assert images.shape == (expected_count, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images[:16], val_images[: min(expected_count, 16)])
    assert source == f"the first {expected_count} val images of {mini_cache}"


def test_check_images_without_a_cache_are_random(checkpoints, tmp_path: Path) -> None:
    # The checkpoint's data.cache is gone and no --data is given: random images, and why.
    payload = checkpoint.load_checkpoint(checkpoints["channel"])
    payload["config"]["data"]["cache"] = str(tmp_path / "moved")
    path = checkpoint.save_checkpoint(tmp_path / "moved.pt", payload)
    images, source = find_check_images(path, None)
    assert images is None
    assert source == "8 random images (no cache found: pass --data CACHE to check on real ones)"


def test_check_images_from_a_damaged_cache(checkpoints, mini_cache: Path, tmp_path: Path) -> None:
    # The training cache, found damaged: random images, saying why (the export needs no cache);
    # the same cache named with --data: an error, as in every command that reads its pixels.
    import shutil

    copy = Path(shutil.copytree(mini_cache, tmp_path / "copy"))
    images = np.load(copy / "val_images.npy", mmap_mode="r+")
    images[0, 0, 0, 0] ^= 0x01
    images.flush()
    payload = checkpoint.load_checkpoint(checkpoints["channel"])
    payload["config"]["data"]["cache"] = str(copy)
    path = checkpoint.save_checkpoint(tmp_path / "on-copy.pt", payload)
    found, source = find_check_images(path, None)
    assert found is None
    assert source.startswith("8 random images (the training cache is damaged: ")
    assert f"{copy / 'val_images.npy'}: content differs" in source
    with pytest.raises(CacheError, match=r"val_images\.npy: content differs"):
        find_check_images(path, copy)


@pytest.mark.parametrize("data", ["empty folder", "missing folder"])
def test_check_images_from_a_named_folder_that_is_no_cache_are_refused(
    checkpoints, tmp_path: Path, data: str
) -> None:
    # --data names the cache to check on: one that is not a cache is an error, as in every
    # command that takes --data (it had fallen back to random images).
    folder = tmp_path / data
    if data == "empty folder":
        folder.mkdir()
    with pytest.raises(CacheError, match="is not a prepared cache"):
        find_check_images(checkpoints["channel"], folder)


def test_check_images_of_another_side_are_refused_naming_both_sides(
    checkpoints, mini_archive: Path, tmp_path: Path
) -> None:
    # A cache of 32x32 images: the message had been about an internal parameter's shape.
    small = prepare(mini_archive, tmp_path / "c32", workers=1, size=32, resize=True, progress=False)
    with pytest.raises(ConfigError) as caught:
        find_check_images(checkpoints["channel"], small.path)
    message = str(caught.value)
    assert message.startswith(f"--data {small.path}: its images are 32x32, and ")
    assert "was trained on 64x64 ones" in message


@pytest.mark.parametrize("fmt", ["tflite", "ONNX", "", "onnx "])
def test_unknown_format_is_a_config_error(checkpoints, tmp_path: Path, fmt: str) -> None:
    with pytest.raises(ConfigError, match="expected one of onnx, torchscript"):
        export_model(checkpoints["none"], fmt, tmp_path / "m")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", FORMATS)
def test_exporting_onto_a_folder_is_refused(checkpoints, tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / "model.onnx"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(ConfigError, match="is a folder"):
        export_model(checkpoints["none"], fmt, folder)
    assert [p.name for p in folder.iterdir()] == ["inside"]


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (np.zeros((2, 64, 64, 3), np.float32), "uint8"),
        (np.zeros((2, 56, 56, 3), np.uint8), "shape"),
        (np.zeros((0, 64, 64, 3), np.uint8), "shape"),
        (np.zeros((64, 64, 3), np.uint8), "shape"),
        ([[0]], "uint8"),
    ],
)
def test_bad_check_images_are_config_errors(checkpoints, tmp_path: Path, images, message) -> None:
    with pytest.raises(ConfigError, match=message):
        export_model(checkpoints["channel"], "torchscript", tmp_path / "m", check_images=images)
    assert not list(tmp_path.iterdir())


def test_missing_onnx_runtime_says_what_to_install(checkpoints, tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"onnxruntime.*pip install 'tinycnn\[export\]'"):
        export_model(checkpoints["none"], "onnx", tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


class _OffByOnePixel(Preprocessed):
    """A crop one pixel off the centre: the kind of mistake the check must catch."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.top += 1


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_wrong_preprocessing_fails_and_writes_nothing(
    checkpoints, val_images, tmp_path: Path, monkeypatch, fmt: str
) -> None:
    out = tmp_path / "model.bin"
    out.write_bytes(b"the previous export")
    monkeypatch.setattr(export, "Preprocessed", _OffByOnePixel)
    with pytest.raises(ExportError, match="differ from evaluation"):
        export_model(checkpoints["mean_image"], fmt, out, check_images=val_images)
    assert out.read_bytes() == b"the previous export"  # kept, not half-replaced
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_scale_travels_in_the_checkpoint(checkpoints) -> None:
    """data.scale reaches the checkpoint; a checkpoint from before the option reads as 1."""
    runtime = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    assert load_model(checkpoints["mean_image/255"], runtime).norm.scale == 1 / 256
    payload = torch.load(checkpoints["mean_image"], map_location="cpu", weights_only=False)
    payload["normalization"].pop("scale")
    norm = checkpoint.normalization_from_payload(payload["normalization"])
    assert norm.kind == "mean_image" and norm.scale == 1.0
    none = {"kind": "none", "scale": 0.5}
    assert checkpoint.normalization_from_payload(none).scale == 0.5
    assert checkpoint.normalization_from_payload({"kind": "none"}) is None


def test_cli_export_checks_on_real_images(run, tmp_path: Path, capsys) -> None:
    cache, folder = run
    out = tmp_path / "model.onnx"
    assert (
        main(
            [
                "export",
                str(folder / "checkpoints" / "last.pt"),
                "--format",
                "onnx",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert out.is_file() and "max |logit diff|" in text
    assert f"the first 20 val images of {cache}" in text  # the training cache, found by itself
    bad = [
        "export",
        str(folder / "checkpoints" / "last.pt"),
        "--format",
        "tflite",
        "--out",
        str(tmp_path / "m.tflite"),
    ]
    with pytest.raises(SystemExit) as info:  # argparse: not one of the formats
        main(bad)
    assert info.value.code == 2 and not (tmp_path / "m.tflite").exists()

"""prepare and the cache: identical across formats, idempotent, atomic, memory-mapped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinycnn.cli import main
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.errors import CacheError

ARRAYS = [f"{s}_{k}.npy" for s in ("train", "val") for k in ("images", "labels", "boxes")] + [
    "test_images.npy",
    "mean_image.npy",
]
TEXTS = ["train_files.txt", "val_files.txt", "test_files.txt"]
VOLATILE = ("source", "created", "seconds", "digest")  # name the source or the run (or hash them)


def _same_cache(a: Path, b: Path) -> None:
    for name in ARRAYS + TEXTS:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = load_cache(a).manifest, load_cache(b).manifest
    assert {k: v for k, v in ma.items() if k not in VOLATILE} == {
        k: v for k, v in mb.items() if k not in VOLATILE
    }


def test_folder_zip_and_tar_gz_give_identical_caches(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    caches = {}
    for kind, src in synth_sources.items():
        caches[kind] = tmp_path / kind.replace(".", "_")
        assert prepare(src, caches[kind], progress=False).rebuilt
    _same_cache(caches["folder"], caches["zip"])
    _same_cache(caches["folder"], caches["tar.gz"])


def test_cache_matches_the_images(synth_sources: dict[str, Path], tmp_path: Path) -> None:
    folder = synth_sources["folder"]
    cache = load_cache(prepare(folder, tmp_path / "c", progress=False).path)
    for name in ("train", "val", "test"):
        split = cache.split(name)
        for row in (0, len(split) // 2, len(split) - 1):
            expected = np.asarray(Image.open(folder / split.files[row]).convert("RGB"))
            assert np.array_equal(split.images[row], expected), split.files[row]
    train = cache.split("train").images.astype(np.float64)
    assert np.allclose(cache.mean_image, train.mean(axis=0), atol=1e-4)
    assert np.allclose(cache.channel_mean, train.mean(axis=(0, 1, 2)), atol=1e-3)
    assert np.allclose(cache.channel_std, train.std(axis=(0, 1, 2)), atol=1e-3)


def test_real_mini_subset(mini_folder: Path, mini_archive: Path, tmp_path: Path) -> None:
    zipped = tmp_path / "mini.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(mini_folder.rglob("*")):
            if path.is_file():
                name = path.relative_to(mini_folder.parent).as_posix()
                archive.writestr(zipfile.ZipInfo(name, (2020, 1, 1, 0, 0, 0)), path.read_bytes())
    caches = [tmp_path / n for n in ("folder", "tgz", "zip")]
    for src, out in zip((mini_folder, mini_archive, zipped), caches, strict=True):
        prepare(src, out, progress=False)
    _same_cache(caches[0], caches[1])
    _same_cache(caches[0], caches[2])
    cache = load_cache(caches[1])
    splits = cache.manifest["splits"]
    assert {k: v["count"] for k, v in splits.items()} == {"train": 1000, "val": 500, "test": 200}
    gray = [p for p in (mini_folder / "train").rglob("*.JPEG") if Image.open(p).mode != "RGB"]
    assert splits["train"]["grayscale"] == len(gray) > 0
    train = cache.split("train")
    row = train.files.index(gray[0].relative_to(mini_folder).as_posix())
    image = train.images[row]
    assert np.array_equal(image[..., 0], image[..., 1])  # grayscale became equal RGB channels
    assert cache.names[cache.classes.index("n01443537")] == "goldfish, Carassius auratus"
    assert train.boxes[0].tolist() == [0, 10, 63, 58]


def test_prepare_is_idempotent_and_notices_changes(synth_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache"
    first = prepare(synth_copy, out, progress=False)
    stamp = (out / "train_images.npy").stat().st_mtime_ns
    again = prepare(synth_copy, out, progress=False)
    assert first.rebuilt and not again.rebuilt
    assert (out / "train_images.npy").stat().st_mtime_ns == stamp
    # A changed image rebuilds, and the new cache holds the new pixels.
    image = synth_copy / load_cache(out).split("val").files[0]
    Image.new("RGB", (64, 64), (255, 0, 0)).save(image, "JPEG", quality=100)
    assert prepare(synth_copy, out, progress=False).rebuilt
    assert load_cache(out).split("val").images[0, 0, 0].tolist() == [254, 0, 0]
    assert prepare(synth_copy, out, progress=False, force=True).rebuilt
    assert not list(tmp_path.glob(".cache.*")), "no temporary folders left behind"


def test_cache_is_memory_mapped(synth_sources: dict[str, Path], tmp_path: Path) -> None:
    cache = load_cache(prepare(synth_sources["zip"], tmp_path / "c", progress=False).path)
    images = cache.split("train").images
    assert isinstance(images, np.memmap) and images.mode == "r"
    assert not images.flags.writeable
    assert images.shape == (60, 64, 64, 3) and images.dtype == np.uint8
    assert Path(images.filename) == (tmp_path / "c" / "train_images.npy").resolve()


def test_load_cache_errors(synth_sources: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CacheError, match=r"manifest\.json: missing"):
        load_cache(tmp_path)
    out = prepare(synth_sources["folder"], tmp_path / "c", progress=False).path
    with open(out / "val_images.npy", "ab") as f:
        f.write(b"extra")
    with pytest.raises(CacheError, match=r"val_images\.npy: missing or of the wrong size"):
        load_cache(out)
    # A damaged cache is rebuilt by the next prepare rather than trusted.
    assert prepare(synth_sources["folder"], out, progress=False).rebuilt
    load_cache(out)


def _prepare_process(src: Path, out: Path) -> subprocess.Popen:
    argv = ["prepare", str(src), "--out", str(out), "-q"]
    code = f"from tinycnn.cli import main; raise SystemExit(main({argv!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", code], start_new_session=True, stderr=subprocess.PIPE, text=True
    )


def _wait_for_build(out: Path, process: subprocess.Popen) -> bool:
    """Wait until the hidden build folder exists (prepare is mid-way); False if it finished."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        if list(out.parent.glob(f".{out.name}.tmp-*/*_images.npy")):
            return True
        time.sleep(0.001)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_prepare_leaves_no_cache(mini_archive: Path, tmp_path: Path, sig) -> None:
    out = tmp_path / "cache"
    for _attempt in range(5):  # the window is short; retry if prepare won the race
        process = _prepare_process(mini_archive, out)
        if _wait_for_build(out, process):
            os.killpg(process.pid, sig)
            break
        process.wait()
        assert process.returncode == 0, process.stderr.read()
        (out / "manifest.json").unlink()  # not a complete cache: the next try starts afresh
    else:
        pytest.fail("prepare always finished before it could be interrupted")
    process.wait(timeout=60)
    if sig == signal.SIGTERM:
        assert process.returncode == 143
        assert not list(tmp_path.glob(".cache.tmp-*")), "SIGTERM cleans up its build"
    with pytest.raises(CacheError):
        load_cache(out)
    assert prepare(mini_archive, out, progress=False).rebuilt  # and a rerun recovers
    assert load_cache(out).manifest["splits"]["val"]["count"] == 500
    assert not list(tmp_path.glob(".cache.*")), "the stale build was removed"


def test_info_command(synth_sources: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "c"
    assert main(["prepare", str(synth_sources["tar.gz"]), "--out", str(out)]) == 0
    assert main(["prepare", str(synth_sources["tar.gz"]), "--out", str(out), "-q"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train" in text and "60" in text and "grayscale" in text
    assert main(["info", str(out), "--json"]) == 0
    import json

    manifest = json.loads(capsys.readouterr().out)
    assert manifest["splits"]["train"]["count"] == 60 and manifest["format"] == 1
    assert manifest["classes"] == load_cache(out).classes
    assert main(["info", str(tmp_path)]) == 1

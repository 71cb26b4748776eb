"""data/prepare.py: caches identical across formats, idempotent, atomic, memory-mapped; every kind
of bad input one clear line naming the file (and line), exit 1, no cache left; a full disk."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinycnn.cli import main
from tinycnn.data.cache import load_cache, verify_cache
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


def _wnid(root: Path, line: int) -> str:
    return (root / "wnids.txt").read_text().split()[line - 1]


def _edit_line(path: Path, line: int, edit: Callable[[str], str]) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = edit(lines[line - 1])
    path.write_text("\n".join(lines) + "\n")


def _val_ann(root: Path) -> Path:
    return root / "val" / "val_annotations.txt"


def _boxes(root: Path) -> Path:
    wnid = _wnid(root, 2)
    return root / "train" / wnid / f"{wnid}_boxes.txt"


def _first_train_image(root: Path) -> Path:
    wnid = _wnid(root, 1)
    return root / "train" / wnid / "images" / f"{wnid}_3.JPEG"


def _save_jpeg(path: Path, size: int, mode: str = "RGB") -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, len(mode)), np.uint8)
    Image.fromarray(pixels.squeeze(), mode).save(path, "JPEG")


def _missing_wnids(root: Path) -> str:
    (root / "wnids.txt").unlink()
    return "wnids.txt: missing"


def _missing_class_folder(root: Path) -> str:
    wnid = _wnid(root, 2)
    shutil.rmtree(root / "train" / wnid)
    return f"train/{wnid}/images: class folder is missing (class {wnid}, line 2 of wnids.txt)"


def _stray_class_folder(root: Path) -> str:
    (root / "train" / "n99999999" / "images").mkdir(parents=True)
    _save_jpeg(root / "train" / "n99999999" / "images" / "n99999999_0.JPEG", 64)
    return "train/n99999999: class folder not listed in wnids.txt"


def _malformed_annotation(root: Path) -> str:
    _edit_line(_val_ann(root), 3, lambda line: "\t".join(line.split("\t")[:3]))
    return "val_annotations.txt line 3: expected 6 tab-separated fields, got 3"


def _duplicate_annotation(root: Path) -> str:
    lines = _val_ann(root).read_text().splitlines()
    _val_ann(root).write_text("\n".join([*lines, lines[0]]) + "\n")
    name = lines[0].split("\t")[0]
    return (
        f"val_annotations.txt line {len(lines) + 1}: duplicate entry for {name} (first on line 1)"
    )


def _annotation_missing_file(root: Path) -> str:
    _edit_line(_val_ann(root), 2, lambda line: "val_9999.JPEG\t" + line.split("\t", 1)[1])
    return "val_annotations.txt line 2: val_9999.JPEG does not exist in val/images"


def _annotation_unknown_wnid(root: Path) -> str:
    _edit_line(_val_ann(root), 2, lambda line: line.replace(line.split("\t")[1], "n00000001"))
    return "val_annotations.txt line 2: unknown class n00000001 (not in wnids.txt)"


def _malformed_box(root: Path) -> str:
    _edit_line(_boxes(root), 2, lambda line: line.split("\t")[0] + "\t1\tx\t3\t4")
    return f"{_boxes(root).name} line 2: box '1 x 3 4' is not four integers"


def _box_for_missing_file(root: Path) -> str:
    wnid = _wnid(root, 2)
    _edit_line(_boxes(root), 2, lambda line: f"{wnid}_777.JPEG\t" + line.split("\t", 1)[1])
    return f"{_boxes(root).name} line 2: {wnid}_777.JPEG does not exist in train/{wnid}/images"


def _corrupt_jpeg(root: Path) -> str:
    target = root / "val" / "images" / "val_2.JPEG"
    target.write_bytes(b"\xff\xd8 this is not really a jpeg " * 20)
    return "val/images/val_2.JPEG: corrupt or unreadable image"


def _not_an_image(root: Path) -> str:
    target = root / "val" / "images" / "val_3.JPEG"
    target.write_bytes(b"<html>404 not found</html>")  # a failed download: no image magic
    return "val/images/val_3.JPEG: corrupt or unreadable image (Pillow cannot identify its format)"


def _truncated_jpeg(root: Path) -> str:
    target = _first_train_image(root)
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    return f"{target.relative_to(root)}: truncated image"


def _empty_test_split(root: Path) -> str:
    for image in (root / "test" / "images").iterdir():
        image.unlink()
    return "test/images: the test split is empty or missing"


def _empty_val_split(root: Path) -> str:
    for image in (root / "val" / "images").iterdir():
        image.unlink()
    _val_ann(root).write_text("")
    return "val/images: the val split is empty"


def _wrong_size(root: Path) -> str:
    target = root / "test" / "images" / "test_1.JPEG"
    _save_jpeg(target, 32)
    return "test/images/test_1.JPEG: image is 32x32, not 64x64 (pass --resize"


CASES = [
    _missing_wnids,
    _missing_class_folder,
    _stray_class_folder,
    _malformed_annotation,
    _duplicate_annotation,
    _annotation_missing_file,
    _annotation_unknown_wnid,
    _malformed_box,
    _box_for_missing_file,
    _corrupt_jpeg,
    _not_an_image,
    _truncated_jpeg,
    _empty_test_split,
    _empty_val_split,
    _wrong_size,
]


def _assert_clean_failure(
    capsys: pytest.CaptureFixture[str], rc: int, expected: str, out: Path
) -> None:
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("tinycnn: error: ") and "\n" not in err, err
    assert expected in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a temporary build was left behind"


@pytest.mark.parametrize("breakage", CASES, ids=lambda f: f.__name__.strip("_"))
def test_bad_tree_fails_cleanly(
    synth_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage
) -> None:
    expected = breakage(synth_copy)
    out = tmp_path / "cache"
    rc = main(["prepare", str(synth_copy), "--out", str(out), "-q"])
    _assert_clean_failure(capsys, rc, expected, out)


def test_output_path_that_is_a_file(
    synth_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cache"
    out.write_text("my notes")
    rc = main(["prepare", str(synth_copy), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and f"{out}: exists and is a file" in err
    assert out.read_text() == "my notes"


def test_output_folder_that_is_not_a_cache(
    synth_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q"]) == 1
    assert "not a tinycnn cache" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "precious"


def test_archive_without_top_folder_via_cli(
    synth_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "flat.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in synth_copy.rglob("*"):
            if path.is_file():
                zf.write(path, path.relative_to(synth_copy).as_posix())
    out = tmp_path / "cache"
    rc = main(["prepare", str(archive), "--out", str(out), "-q"])
    _assert_clean_failure(capsys, rc, f"{archive}: wnids.txt is at the top of the archive", out)


def test_skip_bad_lists_every_skipped_image(synth_copy: Path, tmp_path: Path) -> None:
    corrupt = _corrupt_jpeg(synth_copy).split(":")[0]
    not_image, why = _not_an_image(synth_copy).split(": ", 1)
    truncated = _truncated_jpeg(synth_copy).split(":")[0]
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q", "--skip-bad"]) == 0
    cache = load_cache(out)
    skipped = {name: cache.manifest["splits"][name]["skipped"] for name in ("train", "val")}
    assert [s["file"] for s in skipped["val"]] == [corrupt, not_image]
    assert [s["file"] for s in skipped["train"]] == [truncated]
    assert "truncated" in skipped["train"][0]["reason"]
    assert skipped["val"][1]["reason"] == why  # no "<_io.BytesIO object at 0x...>"
    train, val = cache.split("train"), cache.split("val")
    assert len(train) == 5 * 12 - 1 and len(val) == 5 * 4 - 2
    verify_cache(out)  # the row digests of the packed arrays: the skipped rows left out
    assert truncated not in train.files and corrupt not in val.files
    # Rows stay aligned with labels after the bad row is dropped.
    wnids = cache.classes
    assert all(
        wnids[label] == f.split("/")[1] for f, label in zip(train.files, train.labels, strict=True)
    )


def test_resize_option_resizes_and_counts(synth_copy: Path, tmp_path: Path) -> None:
    _wrong_size(synth_copy)
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q", "--resize"]) == 0
    cache = load_cache(out)
    assert cache.manifest["splits"]["test"]["resized"] == 1
    assert cache.split("test").images.shape[1:] == (64, 64, 3)


def test_cmyk_and_grayscale_become_rgb_and_are_counted(synth_copy: Path, tmp_path: Path) -> None:
    _save_jpeg(synth_copy / "test" / "images" / "test_0.JPEG", 64, "CMYK")
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q"]) == 0
    manifest = load_cache(out).manifest
    assert manifest["splits"]["test"]["cmyk"] == 1
    grayscale = sum(1 for p in synth_copy.rglob("*.JPEG") if Image.open(p).mode == "L")
    assert sum(s["grayscale"] for s in manifest["splits"].values()) == grayscale > 0


def test_cli_error_has_no_traceback(synth_copy: Path, tmp_path: Path) -> None:
    _truncated_jpeg(synth_copy)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "tinycnn",
            "prepare",
            str(synth_copy),
            "--out",
            str(tmp_path / "cache"),
            "-q",
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "truncated image" in run.stderr
    assert not (tmp_path / "cache").exists()


def test_a_cache_with_the_original_images_boxes_is_rebuilt(
    mini_archive: Path, tmp_path: Path
) -> None:
    import json

    from tinycnn.data.cache import MANIFEST, manifest_digest

    out = prepare(mini_archive, tmp_path / "mini32", size=32, resize=True, progress=False).path
    manifest = json.loads((out / MANIFEST).read_text())
    del manifest["options"]["boxes"]  # as an older tinycnn wrote it, with 64-pixel boxes
    manifest["digest"] = manifest_digest(manifest)
    (out / MANIFEST).write_text(json.dumps(manifest))
    again = prepare(mini_archive, out, size=32, resize=True, progress=False)
    assert again.rebuilt and "boxes are in the original images' pixels" in again.reason


@pytest.mark.parametrize("where", ["worker", "parent"])
def test_a_full_disk_is_one_line_and_the_old_cache_survives(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch, capsys, where: str
) -> None:
    out = tmp_path / "cache"
    prepare(synth_sources["folder"], out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    # The workers write the images (os.pwrite, inherited by the forked workers); the parent
    # writes the labels, the mean image and the manifest (np.save).
    monkeypatch.setattr(*((os, "pwrite") if where == "worker" else (np, "save")), full)
    argv = ["prepare", str(synth_sources["folder"]), "--out", str(out), "--force", "-q"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"{out}: cannot write (disk full" in err and "nothing was written" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no build left behind

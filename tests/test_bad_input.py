"""Every kind of bad input: one clear line naming the file (and line), exit 1, no cache left."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from tinycnn.cli import main
from tinycnn.data.cache import load_cache
from tinycnn.data.decode import _reason


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


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            UnidentifiedImageError(f"cannot identify image file {io.BytesIO()!r}"),
            "corrupt or unreadable image (Pillow cannot identify its format)",
        ),
        (
            OSError(f"broken data stream when reading {io.BytesIO()!r}"),
            "corrupt or unreadable image (broken data stream when reading the image)",
        ),
        (OSError("image file is truncated"), "truncated image (image file is truncated)"),
    ],
)
def test_image_failure_reasons_hold_no_object_address(error: Exception, reason: str) -> None:
    assert _reason(error) == reason


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

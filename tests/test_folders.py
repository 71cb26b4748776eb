"""data/folders.py: a user's own class-per-folder dataset."""

from __future__ import annotations

import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

import tinycnn.data.cache as cache_module
from tests.helpers import save_image
from tinycnn.cli import main
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare

# --- own datasets: class-per-folder -------------------------------------------------------------

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "eel": (30, 30, 200)}


def _own_dataset(root: Path, val_only: str | None = None) -> Path:
    """train/<class>/ and val/<class>/ of mixed formats and sizes, test/, and clutter."""
    for k, (name, colour) in enumerate(COLOURS.items()):
        for i in range(4):
            size = [(64, 64), (100, 80), (30, 50), (256, 256)][i]
            fmt, ext = [("JPEG", "jpg"), ("PNG", "png"), ("JPEG", "jpeg"), ("BMP", "bmp")][i]
            save_image(root / "train" / name / f"img{i}.{ext}", colour, size, fmt)
        save_image(root / "val" / name / f"v{k}.JPG", colour, (64, 96), "JPEG")
    save_image(root / "test" / "t1.png", (5, 5, 5), (70, 70), "PNG")
    Image.new("L", (64, 64), 77).save(root / "test" / "t2.jpg")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    save_image(root / "train" / ".ipynb_checkpoints" / "x.jpg", (0, 0, 0), (64, 64))
    if val_only:
        save_image(root / "val" / val_only / "v.jpg", (1, 1, 1), (64, 64))
    return root


def test_own_class_per_folder_dataset(tmp_path: Path, capsys) -> None:
    root = _own_dataset(tmp_path / "mine")
    out = tmp_path / "cache"
    assert main(["prepare", str(root), "--out", str(out), "-q"]) == 0
    cache = load_cache(out)
    assert cache.classes == cache.names == ["cat", "dog", "eel"]
    assert cache.manifest["dataset"]["layout"] == "folders"
    counts = {k: v["count"] for k, v in cache.manifest["splits"].items()}
    assert counts == {"train": 12, "val": 3, "test": 2}
    for name in ("train", "val"):
        split = cache.split(name)
        assert split.images.shape[1:] == (64, 64, 3) and split.boxes is None
        for image, label, file in zip(split.images, split.labels, split.files, strict=True):
            assert file.split("/")[1] == cache.classes[label]
            colour = COLOURS[cache.classes[label]]
            assert np.abs(image.astype(int) - colour).max() <= 6, file
    assert cache.manifest["splits"]["train"]["resized"] == 9  # all but the 64x64 ones
    assert cache.split("test").files == ["test/t1.png", "test/t2.jpg"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "class-per-folder" in text and "sorted folder names order" in text
    assert "NOT the standard 200-class Tiny ImageNet: 3 classes" in text
    # The same tree as a .zip (inside a top folder) and a .tar.gz (at the top) gives the same.
    zipped, tarred = tmp_path / "mine.zip", tmp_path / "mine.tar.gz"
    with zipfile.ZipFile(zipped, "w") as archive:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(tmp_path).as_posix())
    with tarfile.open(tarred, "w:gz") as archive:
        for path in sorted(root.iterdir()):
            archive.add(path, path.name)
    for packed in (zipped, tarred):
        again = load_cache(prepare(packed, tmp_path / f"cache-{packed.name}", progress=False).path)
        assert again.classes == cache.classes
        for name in ("train", "val", "test"):
            assert again.split(name).files == cache.split(name).files
            assert np.array_equal(again.split(name).images, cache.split(name).images)


def test_own_dataset_size_and_classes(tmp_path: Path) -> None:
    root = _own_dataset(tmp_path / "mine")
    listed = tmp_path / "keep.txt"
    listed.write_text("eel\ncat\n")
    cache = load_cache(prepare(root, tmp_path / "c", progress=False, size=32, classes=listed).path)
    assert cache.classes == ["eel", "cat"]
    assert cache.manifest["dataset"]["classes_from"] == f"--classes {listed}"
    assert cache.split("train").images.shape == (8, 32, 32, 3)
    assert cache.mean_image.shape == (32, 32, 3)
    assert cache.manifest["dataset"]["dropped_images"] == {"train": 4, "val": 1}
    assert "32px images, not 64px" in cache_module.standard_difference(cache.manifest)


def test_own_dataset_class_only_in_val(tmp_path: Path, capsys) -> None:
    root = _own_dataset(tmp_path / "mine", val_only="fox")
    out = tmp_path / "cache"
    assert main(["prepare", str(root), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'val' / 'fox'}: class 'fox' is in val/ but has no images in train/" in err
    assert not out.exists()


# --- what a user's own files hold: links, zips from other tools, odd pixels ----------------------


def _two_classes(root: Path, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    for name, colour in zip(classes, (COLOURS["cat"], COLOURS["dog"]), strict=False):
        for i in range(2):
            save_image(root / "train" / name / f"t{i}.png", colour, (64, 64), "PNG")
        save_image(root / "val" / name / "v.png", colour, (64, 64), "PNG")
    return root


def test_linked_class_folders_are_read_and_link_loops_are_not_followed(tmp_path: Path) -> None:
    # dog's folders are links to folders elsewhere (they had been dropped without a word), and a
    # link back up the tree is not a loop.
    elsewhere = _two_classes(tmp_path / "elsewhere")
    root = tmp_path / "mine"
    for split in ("train", "val"):
        save_image(root / split / "cat" / "c.png", COLOURS["cat"], (64, 64), "PNG")
        (root / split / "dog").symlink_to(elsewhere / split / "dog", target_is_directory=True)
    (root / "train" / "cat" / "up").symlink_to(root, target_is_directory=True)
    cache = load_cache(prepare(root, tmp_path / "cache", progress=False).path)
    assert cache.classes == ["cat", "dog"]
    assert cache.split("train").files == ["train/cat/c.png", "train/dog/t0.png", "train/dog/t1.png"]
    assert len(cache.split("val").files) == 2


def _zip_of(root: Path, path: Path, prefix: str = "", extra: dict[str, bytes] | None = None):
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(root.rglob("*")):
            if file.is_file():
                archive.write(file, prefix + file.relative_to(root).as_posix())
        for name, data in (extra or {}).items():
            with warnings.catch_warnings():  # a name twice, on purpose
                warnings.simplefilter("ignore", UserWarning)
                archive.writestr(name, data)
    return path


def test_zips_from_other_tools_give_the_folder_s_dataset(tmp_path: Path, capsys) -> None:
    root = _two_classes(tmp_path / "mine")
    folder = load_cache(prepare(root, tmp_path / "c-folder", progress=False).path)
    # A top folder whose name ends in "train" (the root was cut inside its name), and Finder's
    # __MACOSX/ resource forks (counted as a second dataset).
    fork = {"__MACOSX/mytrain/train/cat/._t0.png": b"\x00\x05\x16\x07"}
    packed = _zip_of(root, tmp_path / "mytrain.zip", "mytrain/", fork)
    cache = load_cache(prepare(packed, tmp_path / "c-zip", progress=False).path)
    assert cache.classes == folder.classes
    assert cache.split("train").files == folder.split("train").files
    assert np.array_equal(cache.split("train").images, folder.split("train").images)
    # Info-ZIP's zip stores UTF-8 names without the UTF-8 flag (zipfile would read cp437).
    utf8 = _two_classes(tmp_path / "utf8", ("café", "日本"))
    packed = _zip_of(utf8, tmp_path / "utf8.zip")
    data = packed.read_bytes()
    with zipfile.ZipFile(packed) as archive:
        flagged = sum(i.flag_bits & 0x800 for i in archive.infolist())
    assert flagged  # zipfile set it; clear it in every local and central header
    local, central = b"PK\x03\x04\x14\x00", b"PK\x01\x02\x14\x03\x14\x00"
    for header in (local, central):  # the flags' high byte: 0x08 is bit 11, UTF-8
        data = data.replace(header + b"\x00\x08", header + b"\x00\x00")
    packed.write_bytes(data)
    with zipfile.ZipFile(packed) as archive:
        assert not any(i.flag_bits & 0x800 for i in archive.infolist())
        assert "train/café/t0.png" not in archive.namelist()  # cp437: caf\u251c\u2310
    cache = load_cache(prepare(packed, tmp_path / "c-utf8", progress=False).path)
    assert cache.classes == ["café", "日本"]
    assert cache.split("val").files == ["val/café/v.png", "val/日本/v.png"]
    # A name twice: zipfile reads the last copy for both; refused as in a .tar.gz.
    twice = _zip_of(root, tmp_path / "twice.zip", extra={"train/cat/t0.png": b"other bytes"})
    assert main(["prepare", str(twice), "--out", str(tmp_path / "c-twice"), "-q"]) == 1
    assert "holds train/cat/t0.png twice" in capsys.readouterr().err
    assert not (tmp_path / "c-twice").exists()


def test_sixteen_bit_and_transparent_pixels_are_read_as_predict_reads_them(tmp_path: Path) -> None:
    # A 16-bit gradient keeps its high byte (it had been clipped to 255), and transparent pixels
    # are white, as a viewer shows them (they had been black): the pixels predict reads.
    from tinycnn.prediction import read_image

    root = _two_classes(tmp_path / "mine")
    wide = np.tile(np.arange(64, dtype=np.uint16) * 1040, (64, 1))  # 0 .. 65,520
    Image.fromarray(wide).save(root / "train" / "cat" / "wide.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :32] = (200, 30, 30, 255)  # the right half fully transparent (and black)
    Image.fromarray(rgba, "RGBA").save(root / "train" / "dog" / "half.png")
    cache = load_cache(prepare(root, tmp_path / "cache", progress=False).path)
    train = cache.split("train")
    wide_row = np.asarray(train.images[train.files.index("train/cat/wide.png")])
    half_row = np.asarray(train.images[train.files.index("train/dog/half.png")])
    assert np.array_equal(wide_row[0, :, 0], (np.arange(64) * 1040) >> 8)  # by hand
    assert (half_row[:, 32:] == 255).all() and (half_row[:, :32] == (200, 30, 30)).all()
    assert np.array_equal(wide_row, read_image(root / "train" / "cat" / "wide.png"))
    assert np.array_equal(half_row, read_image(root / "train" / "dog" / "half.png"))


def test_prepare_is_a_no_op_for_a_cache_inside_its_folder_and_any_spelling_of_classes(
    tmp_path: Path, monkeypatch
) -> None:
    root = _two_classes(tmp_path / "mine")
    monkeypatch.chdir(root)
    first = prepare(".", "cache", progress=False)
    assert first.rebuilt
    assert not prepare(".", "cache", progress=False).rebuilt  # its own files are not the data
    listed = root / "cls.txt"
    listed.write_text("dog\ncat\n")
    assert prepare(".", "c2", classes="cls.txt", progress=False).rebuilt
    for spelling in ("cls.txt", "./cls.txt", str(listed)):
        assert not prepare(".", "c2", classes=spelling, progress=False).rebuilt, spelling

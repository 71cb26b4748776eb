"""data/folders.py: a user's own class-per-folder dataset."""

from __future__ import annotations

import tarfile
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

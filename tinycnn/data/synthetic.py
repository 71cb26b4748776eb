"""A synthetic dataset in exactly the official Tiny ImageNet layout: the demo data and test fixture.

Each class is one combination of shape, colour family and texture (synthetic_images.py), drawn
on a random gradient background with random position, scale, rotation, colour jitter and pixel
noise. Mean colour alone does not separate the classes (several share a colour family, and the
background dominates the pixel mean), but a small CNN learns them within a minute on CPU.

Everything is a pure function of the arguments: each image has its own random generator seeded
from ``(seed, split, index)``, so the same call writes byte-identical files in any order.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tinycnn.data.synthetic_images import MAX_CLASSES, class_spec, render
from tinycnn.errors import DataError

ARCHIVE_FORMATS = ("zip", "tar.gz")
JPEG_QUALITY = 90
# Archive entries carry this fixed time so that archive bytes are reproducible (2015-01-01 UTC,
# about when Tiny ImageNet was released).
ARCHIVE_EPOCH = 1420070400
ARCHIVE_DATE_TIME = (2015, 1, 1, 0, 0, 0)

# Stream ids mixed into every seed, so that no two uses of the seed share random numbers. Each
# purpose uses one fixed-length key after its id: numpy's SeedSequence ignores trailing zeros, so
# keys of different lengths within one purpose could collide.
_TRAIN, _VAL, _TEST, _VAL_ORDER, _TEST_LABELS, _GRAYSCALE, _WNIDS = range(1, 8)
_SPLIT_IDS = {"train": _TRAIN, "val": _VAL, "test": _TEST}


def make_synthetic(
    out: str | Path,
    *,
    classes: int = 10,
    train_per_class: int = 100,
    val_per_class: int = 20,
    test_count: int = 50,
    seed: int = 0,
    image_size: int = 64,
    grayscale_fraction: float = 0.02,
    archive: str | None = None,
    top_folder: str = "tiny-imagenet-synth",
) -> Path:
    """Write a synthetic dataset in the official Tiny ImageNet layout; return its folder or archive.

    out: parent folder, created if missing. classes: 1..MAX_CLASSES. train_per_class,
    val_per_class, test_count: images per class in train and val, and unlabelled test images.
    image_size: side in pixels. grayscale_fraction: share of each split saved as mode "L" JPEG
    (at least one per non-empty split when > 0). archive: None for ``out/<top_folder>/``, or
    "zip" / "tar.gz" for ``out/<top_folder>.<archive>`` holding the same tree. The tree is built
    in a temporary sibling and renamed at the end, so a failure leaves nothing complete-looking.
    """
    _check_args(classes, train_per_class, val_per_class, test_count, seed, image_size)
    _check_output_args(grayscale_fraction, archive, top_folder)
    out = Path(out)
    target = out / (top_folder if archive is None else f"{top_folder}.{archive}")
    if target.exists():
        raise DataError(f"{target} already exists; delete it or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{top_folder}.", suffix=".tmp", dir=out))
    try:
        tree = staging / top_folder
        counts = (classes, train_per_class, val_per_class, test_count)
        _write_tree(tree, counts, _Drawer(seed, image_size, grayscale_fraction))
        if archive is None:
            tree.rename(target)
        else:
            packed = staging / target.name
            (_write_zip if archive == "zip" else _write_tar_gz)(tree, packed)
            packed.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_args(
    classes: int, train_per_class: int, val_per_class: int, test_count: int, seed: int, size: int
) -> None:
    """Raise DataError naming the first count, seed or size that is not a usable integer."""
    limits = {
        "classes": (classes, 1, MAX_CLASSES),
        "train_per_class": (train_per_class, 1, None),
        "val_per_class": (val_per_class, 0, None),
        "test_count": (test_count, 0, None),
        "seed": (seed, 0, None),
        # Below 16 pixels the shapes and textures no longer fit in an image.
        "image_size": (size, 16, None),
    }
    for name, (value, low, high) in limits.items():
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
        if not is_int or value < low or (high is not None and value > high):
            allowed = f"{low}..{high}" if high is not None else f">= {low}"
            raise DataError(f"{name}={value!r} is not allowed; use an integer {allowed}")


def _check_output_args(grayscale_fraction: float, archive: str | None, top_folder: str) -> None:
    """Raise DataError naming a bad grayscale fraction, archive format or folder name."""
    is_number = isinstance(grayscale_fraction, (int, float)) and not isinstance(
        grayscale_fraction, bool
    )
    if not is_number or not 0 <= grayscale_fraction <= 1:  # also rejects NaN
        raise DataError(f"grayscale_fraction={grayscale_fraction!r} must be a number in 0..1")
    if archive is not None and archive not in ARCHIVE_FORMATS:
        raise DataError(f"archive={archive!r} is unknown; use None, 'zip' or 'tar.gz'")
    plain = isinstance(top_folder, str) and top_folder not in ("", ".", "..")
    if not plain or any(c in top_folder for c in "/\\"):
        raise DataError(f"top_folder={top_folder!r} must be a plain folder name")


def _write_tree(root: Path, counts: tuple[int, int, int, int], draw: _Drawer) -> None:
    """Write the dataset folder at ``root`` (which must not exist).

    counts: (classes, train_per_class, val_per_class, test_count).
    """
    classes, train_per_class, val_per_class, test_count = counts
    wnids, extra_wnids = _make_wnids(draw.seed, classes)
    root.mkdir()
    _write_lines(root / "wnids.txt", wnids)
    names = {wnid: class_spec(k).name for k, wnid in enumerate(wnids)}
    for i, wnid in enumerate(extra_wnids):
        # Real words.txt covers all of ImageNet; names with commas are common there too.
        names[wnid] = f"unused synset {i}, not a class of this dataset"
    _write_lines(root / "words.txt", [f"{w}\t{names[w]}" for w in sorted(names)])
    _write_train(root / "train", wnids, train_per_class, draw)
    _write_val(root / "val", wnids, val_per_class, draw)
    _write_test(root / "test", classes, test_count, draw)


def _make_wnids(seed: int, classes: int) -> tuple[list[str], list[str]]:
    """Unique fake wnids ("n" + 8 digits): ours in class order (never sorted), then extras."""
    rng = _rng(seed, _WNIDS)
    extra = max(10, classes)
    numbers = rng.choice(10**8, size=classes + extra, replace=False)
    wnids = [f"n{number:08d}" for number in numbers]
    ours, extras = wnids[:classes], wnids[classes:]
    # The class index is the line order of wnids.txt; unsorted lines catch readers that sort.
    if classes > 1 and ours == sorted(ours):
        ours.reverse()
    return ours, extras


def _write_train(folder: Path, wnids: list[str], per_class: int, draw: _Drawer) -> None:
    """Write train/<wnid>/images/<wnid>_<k>.JPEG and the box file of each class."""
    gray = draw.grayscale_picks("train", len(wnids) * per_class)
    for label, wnid in enumerate(wnids):
        images = folder / wnid / "images"
        images.mkdir(parents=True)
        lines = []
        for k in range(per_class):
            name = f"{wnid}_{k}.JPEG"
            grayscale = label * per_class + k in gray
            box = draw.image(images / name, label, (_TRAIN, label, k), grayscale)
            lines.append(name + "".join(f"\t{v}" for v in box))
        _write_lines(folder / wnid / f"{wnid}_boxes.txt", lines)


def _write_val(folder: Path, wnids: list[str], per_class: int, draw: _Drawer) -> None:
    """Write val/images/val_<k>.JPEG, classes interleaved in a seeded order, and annotations."""
    labels = np.repeat(np.arange(len(wnids)), per_class)
    labels = _rng(draw.seed, _VAL_ORDER).permutation(labels)
    gray = draw.grayscale_picks("val", len(labels))
    (folder / "images").mkdir(parents=True)
    lines = []
    for k, label in enumerate(labels.tolist()):
        name = f"val_{k}.JPEG"
        box = draw.image(folder / "images" / name, label, (_VAL, k), k in gray)
        lines.append(f"{name}\t{wnids[label]}" + "".join(f"\t{v}" for v in box))
    _write_lines(folder / "val_annotations.txt", lines)


def _write_test(folder: Path, classes: int, count: int, draw: _Drawer) -> None:
    """Write test/images/test_<k>.JPEG: unlabelled images of random classes."""
    gray = draw.grayscale_picks("test", count)
    labels = _rng(draw.seed, _TEST_LABELS).integers(classes, size=count)
    (folder / "images").mkdir(parents=True)
    for k, label in enumerate(labels.tolist()):
        draw.image(folder / "images" / f"test_{k}.JPEG", label, (_TEST, k), k in gray)


def _write_lines(path: Path, lines: list[str]) -> None:
    """Write text lines with "\\n" endings on every platform, like the official files."""
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


def _rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one purpose (and image), independent of every other stream."""
    return np.random.default_rng([seed, *stream])


@dataclass(frozen=True)
class _Drawer:
    """Renders and saves images for one dataset: its seed, image size and grayscale share."""

    seed: int
    size: int
    grayscale_fraction: float

    def grayscale_picks(self, split: str, count: int) -> set[int]:
        """Indices of a split's images to save as mode "L"; at least one when the share is > 0."""
        if count == 0 or self.grayscale_fraction == 0:
            return set()
        picks = max(1, round(self.grayscale_fraction * count))
        rng = _rng(self.seed, _GRAYSCALE, _SPLIT_IDS[split])
        return set(rng.choice(count, size=picks, replace=False).tolist())

    def image(
        self, path: Path, label: int, stream: tuple[int, ...], grayscale: bool
    ) -> tuple[int, int, int, int]:
        """Draw one image of class ``label``, save it as JPEG; return its inclusive box."""
        pixels, box = render(class_spec(label), _rng(self.seed, *stream), self.size)
        image = Image.fromarray(pixels)
        if grayscale:
            image = image.convert("L")
        image.save(path, "JPEG", quality=JPEG_QUALITY)
        return box


def _tree_entries(tree: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of the tree and everything in it, parents first, in sorted order."""
    paths = sorted(tree.rglob("*"), key=lambda p: p.relative_to(tree).parts)
    entries = [(tree.name + "/", tree)]
    for path in paths:
        name = f"{tree.name}/{path.relative_to(tree).as_posix()}"
        entries.append((name + "/" if path.is_dir() else name, path))
    return entries


def _write_zip(tree: Path, archive: Path) -> None:
    """Pack ``tree`` into a reproducible zip: directory entries, fixed times, sorted order."""
    with zipfile.ZipFile(archive, "w") as zf:
        for name, path in _tree_entries(tree):
            info = zipfile.ZipInfo(name, date_time=ARCHIVE_DATE_TIME)
            info.create_system = 3  # Unix, so that permission bits mean the same everywhere
            if name.endswith("/"):
                info.external_attr = (0o40755 << 16) | 0x10  # directory flag for MS-DOS readers
                zf.writestr(info, b"")
                continue
            info.external_attr = 0o100644 << 16
            # JPEGs do not shrink further; deflate only the text files.
            info.compress_type = (
                zipfile.ZIP_STORED if name.endswith(".JPEG") else zipfile.ZIP_DEFLATED
            )
            zf.writestr(info, path.read_bytes())


def _write_tar_gz(tree: Path, archive: Path) -> None:
    """Pack ``tree`` into a reproducible tar.gz: fixed times and owners, no gzip name or time."""
    with (
        archive.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, path in _tree_entries(tree):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime, info.uid, info.gid, info.uname, info.gname = ARCHIVE_EPOCH, 0, 0, "", ""
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                data = path.read_bytes()
                info.mode, info.size = 0o644, len(data)
                tar.addfile(info, io.BytesIO(data))

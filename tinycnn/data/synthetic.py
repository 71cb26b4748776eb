"""A synthetic dataset in exactly the official Tiny ImageNet layout: the demo data and test fixture.

Each class is one combination of shape, colour family and texture, drawn on a random gradient
background with random position, scale, rotation, colour jitter and pixel noise. Mean colour alone
does not separate the classes (several share a colour family, and the background dominates the
pixel mean), but a small CNN learns them within a minute on CPU.

Everything is a pure function of the arguments: each image has its own random generator seeded
from ``(seed, split, index)``, so the same call writes byte-identical files in any order.
"""

from __future__ import annotations

import colorsys
import gzip
import io
import math
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from tinycnn.errors import DataError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
# Colour families by hue in degrees; saturation and value are jittered per image.
COLOURS = (
    ("red", 0.0),
    ("orange", 30.0),
    ("yellow", 55.0),
    ("green", 120.0),
    ("cyan", 180.0),
    ("blue", 225.0),
    ("purple", 280.0),
)
TEXTURES = ("plain", "striped", "checkered", "spotted")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)  # 224

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


@dataclass(frozen=True)
class ClassSpec:
    """What every image of one class shows: a shape, in a colour family, with a texture."""

    shape: str
    colour: str
    hue: float
    texture: str

    @property
    def name(self) -> str:
        """Human-readable class name for words.txt, e.g. "striped blue square"."""
        words = [self.colour, self.shape]
        if self.texture != "plain":
            words.insert(0, self.texture)
        return " ".join(words)


def class_spec(index: int) -> ClassSpec:
    """The combination shown by class ``index`` (its line in wnids.txt), 0 <= index < MAX_CLASSES.

    Shape and colour cycle with coprime periods (8 and 7) and the texture steps with both, so
    any first ``n`` classes vary in all three factors and every combination appears once.
    """
    if not 0 <= index < MAX_CLASSES:
        raise DataError(f"class index {index} is outside 0..{MAX_CLASSES - 1}")
    cycle = len(SHAPES) * len(COLOURS)
    colour, hue = COLOURS[index % len(COLOURS)]
    texture = TEXTURES[(index + index // cycle) % len(TEXTURES)]
    return ClassSpec(SHAPES[index % len(SHAPES)], colour, hue, texture)


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


def render(
    spec: ClassSpec, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one image of ``spec``: (size, size, 3) uint8 pixels and the box (x0, y0, x1, y1).

    The box is inclusive and covers exactly the object's pixels, as in the official box files.
    """
    ys, xs = _grid(size)
    radius = rng.uniform(0.2, 0.34) * size
    centre = rng.uniform(radius, size - 1 - radius, size=2)
    angle = rng.uniform(-math.pi / 8, math.pi / 8)
    # Object-local coordinates in units of the radius, rotated with the object.
    dx, dy = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    mask = _shape_mask(spec.shape, u, v)
    if not mask.any():  # cannot happen with the ranges above; keeps the box well-defined
        mask[int(centre[1]), int(centre[0])] = True
    colour = _object_colour(spec.hue, rng)
    # Texture patterns are drawn in a darker shade of the same colour family.
    shade = np.where(_texture_mask(spec.texture, u, v, rng)[..., None], colour, colour * 0.35)
    pixels = np.where(mask[..., None], shade, _background(rng, xs, ys, size))
    pixels = pixels + rng.normal(0.0, 6.0, size=pixels.shape)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), box


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (ys, xs), each (size, size) float64; cached per size."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` in local coordinates whose unit is the object's radius."""
    au, av = np.abs(u), np.abs(v)
    dist = np.hypot(u, v)
    if shape == "circle":
        return dist <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        # Equilateral, pointing up (v grows downwards): inside all three edges.
        return (v <= 0.5) & (v >= -1.0 + math.sqrt(3) * au)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        return (dist <= 1.0) & (dist >= 0.6)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "bar":
        return (au <= 1.0) & (av <= 0.35)
    if shape == "star":
        theta = np.arctan2(v, u) + math.pi / 2  # one point straight up
        points = (0.5 + 0.5 * np.cos(5 * theta)) ** 2  # 1 at the five tips, 0 between them
        return dist <= 0.45 + 0.55 * points
    raise DataError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _texture_mask(
    texture: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Where the texture shows the main colour (True) rather than its darker shade."""
    period = rng.uniform(0.3, 0.45)  # in object radii: a few repeats across every shape
    phase = rng.uniform(0.0, 1.0, size=2)
    cu, cv = u / period + phase[0], v / period + phase[1]
    if texture == "plain":
        return np.ones(u.shape, dtype=bool)
    if texture == "striped":
        return (cu + cv) % 1.0 < 0.5  # diagonal stripes
    if texture == "checkered":
        return (np.floor(cu) + np.floor(cv)) % 2 == 0
    if texture == "spotted":
        return np.hypot(cu % 1.0 - 0.5, cv % 1.0 - 0.5) > 0.3
    raise DataError(f"unknown texture {texture!r}; known: {', '.join(TEXTURES)}")


def _object_colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (3,) in 0..255 from a colour family, jittered in hue, saturation, value."""
    jittered = ((hue + rng.uniform(-10.0, 10.0)) % 360.0) / 360.0
    rgb = colorsys.hsv_to_rgb(jittered, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    return np.array(rgb) * 255.0


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """A (size, size, 3) linear gradient between two random muted colours at a random angle."""
    start, end = rng.uniform(30.0, 200.0, size=(2, 3))
    angle = rng.uniform(0.0, 2 * math.pi)
    along = (math.cos(angle) * xs + math.sin(angle) * ys) / size
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    return start + along[..., None] * (end - start)


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

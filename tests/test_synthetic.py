"""Tests of the synthetic dataset: layout, determinism, archives, bad arguments, learnability."""

from __future__ import annotations

import re
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinycnn.data import synthetic
from tinycnn.data.synthetic import MAX_CLASSES, class_spec, make_synthetic
from tinycnn.errors import DataError

# A small dataset shared by the layout tests: odd counts so that mix-ups show.
SMALL = dict(classes=6, train_per_class=8, val_per_class=5, test_count=7, seed=3)
SIZE = 64


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of a small dataset with a grayscale share that picks a few images per split."""
    return make_synthetic(tmp_path_factory.mktemp("small"), grayscale_fraction=0.1, **SMALL)


def _wnids(root: Path) -> list[str]:
    return (root / "wnids.txt").read_text().splitlines()


def _rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def _tree_files(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize(
    ("pattern", "count"),
    [
        ("wnids.txt", 1),
        ("words.txt", 1),
        ("train/*", SMALL["classes"]),
        ("train/*/*_boxes.txt", SMALL["classes"]),
        ("train/*/images/*.JPEG", SMALL["classes"] * SMALL["train_per_class"]),
        ("val/val_annotations.txt", 1),
        ("val/images/val_*.JPEG", SMALL["classes"] * SMALL["val_per_class"]),
        ("test/images/test_*.JPEG", SMALL["test_count"]),
        ("test/*", 1),  # only images/: the test split has no labels
    ],
)
def test_layout_counts(small: Path, pattern: str, count: int) -> None:
    assert small.name == "tiny-imagenet-synth"
    assert len(list(small.glob(pattern))) == count


def test_file_names_follow_the_official_numbering(small: Path) -> None:
    for wnid in _wnids(small):
        names = {p.name for p in (small / "train" / wnid / "images").iterdir()}
        assert names == {f"{wnid}_{k}.JPEG" for k in range(SMALL["train_per_class"])}
    val_count = SMALL["classes"] * SMALL["val_per_class"]
    assert {p.name for p in (small / "val" / "images").iterdir()} == {
        f"val_{k}.JPEG" for k in range(val_count)
    }
    assert {p.name for p in (small / "test" / "images").iterdir()} == {
        f"test_{k}.JPEG" for k in range(SMALL["test_count"])
    }


def test_wnids_are_unique_wellformed_and_not_sorted(small: Path) -> None:
    wnids = _wnids(small)
    assert len(wnids) == SMALL["classes"]
    assert len(set(wnids)) == len(wnids)
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert wnids != sorted(wnids)  # readers that sort would mislabel every class
    assert (small / "wnids.txt").read_bytes().endswith(b"\n")


@pytest.mark.parametrize("seed", range(8))
def test_wnids_never_sorted_even_for_two_classes(tmp_path: Path, seed: int) -> None:
    root = make_synthetic(
        tmp_path,
        classes=2,
        train_per_class=1,
        val_per_class=0,
        test_count=0,
        seed=seed,
        image_size=16,
    )
    wnids = _wnids(root)
    assert wnids != sorted(wnids)


def test_words_cover_every_class_plus_others_in_sorted_order(small: Path) -> None:
    rows = _rows(small / "words.txt")
    assert all(len(row) == 2 and row[1] for row in rows)
    words = dict(rows)
    assert [row[0] for row in rows] == sorted(words)
    assert set(_wnids(small)) < set(words)
    for k, wnid in enumerate(_wnids(small)):
        assert words[wnid] == class_spec(k).name


def test_train_boxes_one_per_image_inside_and_nonempty(small: Path) -> None:
    for wnid in _wnids(small):
        rows = _rows(small / "train" / wnid / f"{wnid}_boxes.txt")
        assert len(rows) == SMALL["train_per_class"]
        for name, *box in rows:
            assert (small / "train" / wnid / "images" / name).is_file()
            x0, y0, x1, y1 = map(int, box)
            assert 0 <= x0 <= x1 < SIZE and 0 <= y0 <= y1 < SIZE
            assert (x1 - x0 + 1) * (y1 - y0 + 1) >= 16  # the object is a real shape, not a speck


def test_val_annotations_one_per_image_known_wnids_interleaved(small: Path) -> None:
    rows = _rows(small / "val" / "val_annotations.txt")
    wnids = _wnids(small)
    assert len(rows) == len(list((small / "val" / "images").iterdir()))
    assert [row[0] for row in rows] == [f"val_{k}.JPEG" for k in range(len(rows))]
    for _name, wnid, *box in rows:
        assert wnid in wnids
        x0, y0, x1, y1 = map(int, box)
        assert 0 <= x0 <= x1 < SIZE and 0 <= y0 <= y1 < SIZE
    labels = [row[1] for row in rows]
    assert all(labels.count(w) == SMALL["val_per_class"] for w in wnids)
    assert labels != sorted(labels, key=wnids.index)  # not grouped by class


def test_images_decode_at_the_right_size_some_grayscale(small: Path) -> None:
    modes = []
    for path in small.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            assert image.size == (SIZE, SIZE)
            image.load()
            modes.append(image.mode)
    assert set(modes) == {"RGB", "L"}
    assert modes.count("L") < modes.count("RGB")


def _grayscale_counts(root: Path) -> dict[str, int]:
    """Number of mode "L" images per split."""
    counts = {}
    for split in ("train", "val", "test"):
        paths = (root / split).rglob("*.JPEG")
        counts[split] = sum(Image.open(p).mode == "L" for p in paths)
    return counts


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.0, {"train": 0, "val": 0, "test": 0}),
        (0.001, {"train": 1, "val": 1, "test": 1}),  # at least one per split
        (0.5, {"train": 6, "val": 3, "test": 2}),
        (1.0, {"train": 12, "val": 6, "test": 3}),
    ],
)
def test_grayscale_fraction_per_split(tmp_path: Path, fraction: float, expected: dict) -> None:
    root = make_synthetic(
        tmp_path,
        classes=3,
        train_per_class=4,
        val_per_class=2,
        test_count=3,
        image_size=16,
        grayscale_fraction=fraction,
    )
    assert _grayscale_counts(root) == expected


def test_same_arguments_give_identical_bytes(tmp_path: Path) -> None:
    first = make_synthetic(tmp_path / "a", **SMALL)
    second = make_synthetic(tmp_path / "b", **SMALL)
    assert _tree_files(first) == _tree_files(second)


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    first = _tree_files(make_synthetic(tmp_path / "a", **SMALL))
    other = _tree_files(make_synthetic(tmp_path / "b", **{**SMALL, "seed": 4}))
    assert first["wnids.txt"] != other["wnids.txt"]
    first_val = {k: v for k, v in first.items() if k.startswith("val/images/")}
    other_val = {k: v for k, v in other.items() if k.startswith("val/images/")}
    assert first_val.keys() == other_val.keys()
    assert all(first_val[k] != other_val[k] for k in first_val)


def test_images_do_not_depend_on_other_counts(tmp_path: Path) -> None:
    # Each image has its own seed, so adding images leaves the existing ones as they were.
    few = _tree_files(make_synthetic(tmp_path / "a", **SMALL))
    more = _tree_files(make_synthetic(tmp_path / "b", **{**SMALL, "train_per_class": 9}))
    wnid = _wnids(tmp_path / "a" / "tiny-imagenet-synth")[0]
    name = f"train/{wnid}/images/{wnid}_7.JPEG"
    assert few[name] == more[name]


def _archive_contents(path: Path) -> tuple[list[str], dict[str, bytes]]:
    """(every entry name, directories with a trailing "/"; file name -> bytes) of an archive."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            files = {n: zf.read(n) for n in names if not n.endswith("/")}
        return names, files
    with tarfile.open(path, "r:gz") as tar:
        members = tar.getmembers()
        names = [m.name + "/" if m.isdir() else m.name for m in members]
        files = {m.name: tar.extractfile(m).read() for m in members if m.isfile()}
        assert {m.mtime for m in members} == {synthetic.ARCHIVE_EPOCH}
    return names, files


@pytest.mark.parametrize("archive", ["zip", "tar.gz"])
def test_archive_holds_the_same_tree_as_the_folder(tmp_path: Path, archive: str) -> None:
    folder = make_synthetic(tmp_path / "folder", **SMALL)
    packed = make_synthetic(tmp_path / "packed", archive=archive, **SMALL)
    assert packed == tmp_path / "packed" / f"tiny-imagenet-synth.{archive}"
    assert [p.name for p in packed.parent.iterdir()] == [packed.name]  # no folder, no temp left
    names, files = _archive_contents(packed)
    expected = {f"tiny-imagenet-synth/{k}": v for k, v in _tree_files(folder).items()}
    assert files == expected
    dirs = {
        f"tiny-imagenet-synth/{p.relative_to(folder).as_posix()}/"
        for p in folder.rglob("*")
        if p.is_dir()
    }
    assert {n for n in names if n.endswith("/")} == dirs | {"tiny-imagenet-synth/"}
    assert names[0] == "tiny-imagenet-synth/"
    assert names == sorted(names, key=lambda n: n.rstrip("/").split("/"))  # parents first


@pytest.mark.parametrize("archive", ["zip", "tar.gz"])
def test_archive_bytes_are_reproducible(tmp_path: Path, archive: str) -> None:
    first = make_synthetic(tmp_path / "a", archive=archive, top_folder="x", **SMALL)
    second = make_synthetic(tmp_path / "b", archive=archive, top_folder="x", **SMALL)
    assert first.name == f"x.{archive}"
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classes": 0}, "classes=0"),
        ({"classes": -3}, "classes=-3"),
        ({"classes": MAX_CLASSES + 1}, f"classes={MAX_CLASSES + 1}"),
        ({"classes": 2.5}, "classes=2.5"),
        ({"classes": True}, "classes=True"),
        ({"train_per_class": 0}, "train_per_class=0"),
        ({"val_per_class": -1}, "val_per_class=-1"),
        ({"test_count": -1}, "test_count=-1"),
        ({"seed": -1}, "seed=-1"),
        ({"image_size": 8}, "image_size=8"),
        ({"grayscale_fraction": -0.1}, "grayscale_fraction=-0.1"),
        ({"grayscale_fraction": 1.5}, "grayscale_fraction=1.5"),
        ({"grayscale_fraction": float("nan")}, "grayscale_fraction=nan"),
        ({"archive": "rar"}, "archive='rar'"),
        ({"archive": "tgz"}, "archive='tgz'"),
        ({"top_folder": ""}, "top_folder=''"),
        ({"top_folder": "a/b"}, "top_folder='a/b'"),
        ({"top_folder": ".."}, "top_folder='..'"),
    ],
)
def test_bad_arguments_raise_data_error_naming_the_value(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(DataError, match=re.escape(message)):
        make_synthetic(tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []  # nothing written before the check


@pytest.mark.parametrize("archive", [None, "zip", "tar.gz"])
def test_existing_target_raises_and_is_kept(tmp_path: Path, archive: str | None) -> None:
    kwargs = dict(classes=1, train_per_class=1, val_per_class=0, test_count=0, image_size=16)
    target = make_synthetic(tmp_path, archive=archive, **kwargs)
    with pytest.raises(DataError, match="already exists"):
        make_synthetic(tmp_path, archive=archive, **kwargs)
    assert target.exists()


def test_failure_leaves_no_tree_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(synthetic, "_write_test", fail)
    with pytest.raises(OSError, match="disk full"):
        make_synthetic(tmp_path, **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_every_supported_class_is_a_distinct_combination(tmp_path: Path) -> None:
    specs = [class_spec(k) for k in range(MAX_CLASSES)]
    assert len({(s.shape, s.colour, s.texture) for s in specs}) == MAX_CLASSES >= 200
    assert len({s.name for s in specs}) == MAX_CLASSES
    # The first ten classes already vary in every factor, so no single cue separates them.
    first = specs[:10]
    assert min(len({s.shape for s in first}), len({s.colour for s in first})) >= 7
    assert len({s.texture for s in first}) == 4
    root = make_synthetic(
        tmp_path,
        classes=MAX_CLASSES,
        train_per_class=1,
        val_per_class=0,
        test_count=0,
        image_size=16,
    )
    assert len(_wnids(root)) == len(list((root / "train").iterdir())) == MAX_CLASSES


# --- learnability -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pixels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """Train and val images (N, 64, 64, 3) float32 and labels (N,) of a 10-class dataset."""
    root = make_synthetic(
        tmp_path_factory.mktemp("learn"),
        classes=10,
        train_per_class=40,
        val_per_class=20,
        test_count=0,
    )
    wnids = _wnids(root)
    train = [
        (root / "train" / w / "images" / f"{w}_{k}.JPEG", i)
        for i, w in enumerate(wnids)
        for k in range(40)
    ]
    val = [
        (root / "val" / "images" / row[0], wnids.index(row[1]))
        for row in _rows(root / "val" / "val_annotations.txt")
    ]

    def load(items: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
        images = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) for p, _ in items]
        return np.stack(images), np.array([label for _, label in items])

    (train_x, train_y), (val_x, val_y) = load(train), load(val)
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


def _nearest_centroid_accuracy(
    pixels: dict[str, np.ndarray], features: Callable[[np.ndarray], np.ndarray]
) -> float:
    """Val accuracy of the nearest class mean in the space ``features`` maps images to."""
    train, val = features(pixels["train_x"]), features(pixels["val_x"])
    labels = pixels["train_y"]
    centroids = np.stack([train[labels == c].mean(axis=0) for c in np.unique(labels)])
    distances = ((val[:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    return float((distances.argmin(axis=1) == pixels["val_y"]).mean())


def _raw(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def _mean_colour(images: np.ndarray) -> np.ndarray:
    return images.mean(axis=(1, 2))


def _colour_and_edges(images: np.ndarray) -> np.ndarray:
    """Position-free features: a 64-bin colour histogram and an 8-bin edge orientation histogram."""
    levels = (images // 64).astype(np.int64)  # 4 levels a channel
    bins = levels[..., 0] * 16 + levels[..., 1] * 4 + levels[..., 2]
    colour = np.stack([np.bincount(b.ravel(), minlength=64) for b in bins]).astype(np.float64)
    grey = images.mean(axis=-1)
    gx = grey[:, 1:-1, 2:] - grey[:, 1:-1, :-2]
    gy = grey[:, 2:, 1:-1] - grey[:, :-2, 1:-1]
    orientation = np.minimum((np.arctan2(gy, gx) % np.pi) / np.pi * 8, 7).astype(np.int64)
    weights = np.hypot(gx, gy)
    edges = np.stack(
        [
            np.bincount(o.ravel(), w.ravel(), minlength=8)
            for o, w in zip(orientation, weights, strict=True)
        ]
    )
    # Square roots of normalised histograms: a cheap Hellinger distance.
    return np.concatenate(
        [
            np.sqrt(colour / colour.sum(1, keepdims=True)),
            np.sqrt(edges / edges.sum(1, keepdims=True)),
        ],
        axis=1,
    )


def test_classes_are_not_separable_by_mean_colour_or_raw_pixels(pixels: dict) -> None:
    # Measured over seeds 0-2: mean colour 0.19-0.23, raw pixels 0.37-0.44; chance is 0.1.
    assert _nearest_centroid_accuracy(pixels, _mean_colour) < 0.5
    assert _nearest_centroid_accuracy(pixels, _raw) < 0.8


def test_classes_are_learnable_from_colour_and_edge_features(pixels: dict) -> None:
    # Measured 0.53-0.62 over seeds 0-2; chance is 0.1.
    assert _nearest_centroid_accuracy(pixels, _colour_and_edges) > 0.3

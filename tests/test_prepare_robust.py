"""prepare on data as found in the wild: extra classes, missing box files, BOM/CRLF text files,
wrong-size images, a user's class-per-folder images, and a prepare killed mid-way."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tinycnn.data.cache as cache_module
from tests.helpers import save_image
from tinycnn.cli import main
from tinycnn.data import decode
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.data.sources import Source, open_source
from tinycnn.data.tiny_imagenet import read_layout
from tinycnn.errors import DataError

EXTRA = ["n90000001", "n90000002"]  # appended classes, as in a 202-line wnids.txt seen on GitHub


def _wnids(root: Path) -> list[str]:
    return (root / "wnids.txt").read_text().split()


def _add_extra_classes(root: Path, per_class: int = 3) -> dict[str, int]:
    """Append EXTRA to wnids.txt with train images but no _boxes.txt, and val images of them."""
    with open(root / "wnids.txt", "a") as f:
        f.write("".join(w + "\n" for w in EXTRA))
    donor = sorted((root / "train" / _wnids(root)[0] / "images").iterdir())[:per_class]
    lines = []
    for k, wnid in enumerate(EXTRA):
        for i, image in enumerate(donor):
            target = root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(image, target)
        name = f"val_{900 + k}.JPEG"
        shutil.copy(root / "val" / "images" / "val_0.JPEG", root / "val" / "images" / name)
        lines.append(f"{name}\t{wnid}\t1\t2\t30\t40\n")
    with open(root / "val" / "val_annotations.txt", "a") as f:
        f.write("".join(lines))
    return {"train": per_class * len(EXTRA), "val": len(EXTRA)}


# --- 12: a copy with extra classes; every layout problem in one message -----------------------


def test_missing_box_files_make_boxes_unknown(synth_copy: Path, tmp_path: Path, capsys) -> None:
    extra = _add_extra_classes(synth_copy)
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q"]) == 0
    cache = load_cache(out)
    assert cache.classes == _wnids(synth_copy) and len(cache.classes) == 7
    train = cache.split("train")
    unknown = [f for f, box in zip(train.files, train.boxes, strict=True) if box[0] == -1]
    assert sorted(unknown) == sorted(
        f"train/{w}/images/{w}_{i}.JPEG" for w in EXTRA for i in range(3)
    )
    assert (train.boxes[[f.split("/")[1] not in EXTRA for f in train.files]] >= 0).all()
    dataset = cache.manifest["dataset"]
    assert dataset["missing_box_files"] == [f"train/{w}/{w}_boxes.txt" for w in EXTRA]
    assert cache.manifest["splits"]["train"]["boxes_unknown"] == extra["train"]
    assert len(cache.split("val")) == 5 * 4 + extra["val"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"boxes    unknown (-1) for {extra['train']} train images: 2 box files missing" in text
    assert "NOT the standard 200-class Tiny ImageNet: 7 classes, 7 not in Tiny ImageNet" in text


def test_classes_file_restricts_the_cache(
    synth_sources: dict[str, Path], synth_copy: Path, tmp_path: Path
) -> None:
    original = _wnids(synth_copy)
    extra = _add_extra_classes(synth_copy)
    listed = tmp_path / "classes.txt"
    listed.write_text("\n".join(original) + "\n")
    out = tmp_path / "restricted"
    assert (
        main(["prepare", str(synth_copy), "--out", str(out), "-q", "--classes", str(listed)]) == 0
    )
    restricted = load_cache(out)
    dataset = restricted.manifest["dataset"]
    assert dataset["dropped_classes"] == EXTRA
    assert dataset["dropped_images"] == extra
    # Independent truth: the same dataset before the extra classes were added.
    plain = load_cache(prepare(synth_sources["folder"], tmp_path / "plain", progress=False).path)
    assert restricted.classes == plain.classes and restricted.names == plain.names
    for name in ("train", "val", "test"):
        a, b = restricted.split(name), plain.split(name)
        assert a.files == b.files and np.array_equal(a.images, b.images), name
        if a.labels is not None:
            assert np.array_equal(a.labels, b.labels) and np.array_equal(a.boxes, b.boxes)


def test_classes_list_order_and_unknown_class(synth_copy: Path, tmp_path: Path) -> None:
    wnids = _wnids(synth_copy)
    listed = tmp_path / "classes.txt"
    listed.write_text(f"{wnids[3]}\r\n{wnids[1]}\r\n")  # CRLF, a subset, another order
    cache = load_cache(prepare(synth_copy, tmp_path / "c", progress=False, classes=listed).path)
    assert cache.classes == [wnids[3], wnids[1]]
    train = cache.split("train")
    assert [cache.classes[label] for label in train.labels] == [
        f.split("/")[1] for f in train.files
    ]
    listed.write_text(f"{wnids[0]}\nn12345678\n")
    with pytest.raises(DataError, match="class n12345678 of the --classes list is not in"):
        prepare(synth_copy, tmp_path / "d", progress=False, classes=listed)


def _fake_source(wnids: list[str], extra: list[str]) -> Source:
    """An official-layout tree in memory (names and text files only: enough for read_layout)."""
    files: dict[str, bytes] = {"wnids.txt": "".join(w + "\n" for w in wnids + extra).encode()}
    names = ["wnids.txt", "test/images/test_0.JPEG"]
    val_lines = []
    for k, wnid in enumerate(wnids + extra):
        names += [f"train/{wnid}/images/{wnid}_{i}.JPEG" for i in range(2)]
        if wnid not in extra:
            box = f"train/{wnid}/{wnid}_boxes.txt"
            files[box] = "".join(f"{wnid}_{i}.JPEG\t0\t0\t9\t9\n" for i in range(2)).encode()
            names.append(box)
        names.append(f"val/images/val_{k}.JPEG")
        val_lines.append(f"val_{k}.JPEG\t{wnid}\t0\t0\t5\t5\n")
    files["val/val_annotations.txt"] = "".join(val_lines).encode()
    names += list(files)

    class Fake(Source):
        kind = "fake"

        def names(self) -> list[str]:
            return sorted(set(names))

        def read(self, rel: str) -> bytes:
            return files[rel]

    return Fake(Path("github-copy"))


def test_classes_official_on_a_202_class_copy() -> None:
    from tinycnn.data.layout import official_wnids

    official = official_wnids()
    source = _fake_source(official, EXTRA)
    everything = read_layout(source)
    assert everything.wnids == official + EXTRA
    assert everything.notes["missing_box_files"] == [f"train/{w}/{w}_boxes.txt" for w in EXTRA]
    layout = read_layout(source, classes=official)
    assert layout.wnids == official
    assert len(layout.splits["train"].files) == 400 and len(layout.splits["val"].files) == 200
    assert layout.notes["dropped_classes"] == EXTRA
    assert layout.notes["dropped_images"] == {"train": 4, "val": 2}
    assert "missing_box_files" not in layout.notes  # the dropped classes' boxes do not matter


@pytest.mark.parametrize(
    ("kept", "extra", "hint"),
    [
        (200, EXTRA, True),  # the 202-line wnids.txt: --classes official is the fix
        (199, EXTRA, False),  # an official class missing: --classes official would fail
        (200, [], False),  # the standard dataset: nothing to say
        (10, [], False),  # the mini subset: no class to drop
    ],
)
def test_a_copy_with_extra_classes_is_told_to_use_classes_official(
    kept: int, extra: list[str], hint: bool
) -> None:
    from tinycnn.data.cache import standard_difference
    from tinycnn.data.layout import official_wnids

    counts = {"train": 500 * (kept + len(extra)), "val": 50 * (kept + len(extra)), "test": 10_000}
    manifest = {
        "classes": official_wnids()[:kept] + extra,
        "splits": {name: {"count": count} for name, count in counts.items()},
    }
    text = standard_difference(manifest)
    assert (text == "") is (kept == 200 and not extra)
    advice = "to keep only its 200 classes (dropping the 2 others), prepare again with --classes"
    assert (f"{advice} official" in text) is hint, text


def test_shipped_official_class_list_matches_the_real_archive(full_archive: Path) -> None:
    from tinycnn.data.layout import official_wnids
    from tinycnn.data.sources import _iter_tar

    real = next(
        data
        for name, data in _iter_tar(full_archive, want=lambda n: n.endswith("/wnids.txt"))
        if data is not None
    )
    assert official_wnids() == real.decode().split() and len(official_wnids()) == 200


@pytest.fixture(scope="session")
def full_archive() -> Path:
    from tests.conftest import FULL_ARCHIVE, require_real

    return require_real(FULL_ARCHIVE)


def test_every_layout_problem_in_one_message(synth_copy: Path, tmp_path: Path, capsys) -> None:
    wnids = _wnids(synth_copy)
    shutil.rmtree(synth_copy / "train" / wnids[1])  # 1: a class folder missing
    save_image(
        synth_copy / "train" / "n99999999" / "images" / "n99999999_0.JPEG", (0, 0, 0), (64, 64)
    )
    ann = synth_copy / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[2] = lines[2].replace(lines[2].split("\t")[1], "n00000001")  # 3: an unknown class
    ann.write_text("\n".join(lines) + "\n")
    (synth_copy / "wnids.txt").write_text("\n".join([*wnids, "bad id!"]) + "\n")  # 4
    for image in (synth_copy / "test" / "images").iterdir():  # 5: an empty test split
        image.unlink()
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and not out.exists()
    assert f"{synth_copy}: 5 problems in the dataset, nothing was prepared" in err
    for expected in (
        f"train/{wnids[1]}/images: class folder is missing",
        "train/n99999999: class folder not listed in wnids.txt",
        "val_annotations.txt line 3: unknown class n00000001",
        "wnids.txt line 6: 'bad id!' is not a class id",
        "test/images: the test split is empty or missing",
    ):
        assert expected in err, expected


def test_many_problems_are_counted_and_the_first_few_listed(synth_copy: Path) -> None:
    wnid = _wnids(synth_copy)[0]
    (synth_copy / "train" / wnid / f"{wnid}_boxes.txt").write_text("")  # 12 images, no box line
    with pytest.raises(DataError) as info:
        read_layout(open_source(synth_copy))
    message = str(info.value)
    assert "12 problems" in message and message.count("no box line for") == 5
    assert message.endswith("; and 7 more")


# --- 14: BOM and CRLF ---------------------------------------------------------------------------


def _boxes_file(root: Path) -> Path:
    wnid = _wnids(root)[1]
    return root / "train" / wnid / f"{wnid}_boxes.txt"


TEXT_FILES = {
    "wnids": lambda root: root / "wnids.txt",
    "words": lambda root: root / "words.txt",
    "val_annotations": lambda root: root / "val" / "val_annotations.txt",
    "boxes": _boxes_file,
}


@pytest.mark.parametrize("style", ["bom", "crlf", "bom+crlf"])
@pytest.mark.parametrize("which", list(TEXT_FILES))
def test_bom_and_crlf_text_files(
    synth_sources: dict[str, Path], synth_copy: Path, which: str, style: str
) -> None:
    expected = read_layout(open_source(synth_sources["folder"]))
    path = TEXT_FILES[which](synth_copy)
    text = path.read_text(encoding="utf-8")
    if "crlf" in style:
        text = text.replace("\n", "\r\n")
    path.write_bytes(("\ufeff" if "bom" in style else "").encode() + text.encode("utf-8"))
    got = read_layout(open_source(synth_copy))
    assert got.wnids == expected.wnids and got.names == expected.names
    for name, split in expected.splits.items():
        assert got.splits[name].files == split.files
        for field in ("labels", "boxes"):
            a, b = getattr(got.splits[name], field), getattr(split, field)
            assert (a is None and b is None) or np.array_equal(a, b), (name, field)


# --- 13: wrong-size images are not "unreadable" -------------------------------------------------


def test_wrong_size_with_skip_bad_fails_at_once_pointing_at_resize(
    synth_copy: Path, tmp_path: Path, capsys
) -> None:
    for image in (synth_copy / "train").rglob("*.JPEG"):  # a 32x32 copy of the train split
        save_image(image, (10, 20, 30), (32, 32))
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q", "--skip-bad"]) == 1
    err = capsys.readouterr().err.strip()
    assert "image is 32x32, not 64x64 (pass --resize" in err and "/train/" in err
    assert "skip-bad" not in err and "unreadable" not in err and "\n" not in err
    assert not out.exists()


def test_wrong_size_message_does_not_suggest_skip_bad(synth_copy: Path, tmp_path: Path, capsys):
    save_image(synth_copy / "test" / "images" / "test_1.JPEG", (1, 2, 3), (48, 40))
    assert main(["prepare", str(synth_copy), "--out", str(tmp_path / "c"), "-q"]) == 1
    err = capsys.readouterr().err
    assert "test/images/test_1.JPEG: image is 48x40, not 64x64 (pass --resize" in err
    assert "--skip-bad" not in err


def test_a_worker_stops_its_chunk_at_the_first_wrong_size(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name, size in [("a.png", 64), ("b.png", 32), ("c.png", 64)]:
        save_image(root / name, (9, 9, 9), (size, size), "PNG")
    target = tmp_path / "rows.bin"
    target.write_bytes(bytes(3 * 64 * 64 * 3))

    class Tree(Source):
        def read(self, rel: str) -> bytes:
            return (root / rel).read_bytes()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:  # in this process, as a worker would
        decode.init_worker(Tree(root), "none", 64)
        chunk = decode.Chunk("train", str(target), 0, [0, 1, 2], ["a.png", "b.png", "c.png"])
        result = decode.run_chunk(chunk)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert result.wrong_size is not None and result.wrong_size[0] == 1
    assert "32x32" in result.wrong_size[1] and result.failures == []
    assert result.done == 1  # c.png was not decoded: the prepare is failing anyway


def test_resize_keeps_the_aspect_by_centre_crop(synth_copy: Path, tmp_path: Path) -> None:
    # 192x64: red | blue | green thirds. A centre crop keeps only blue; squashing would mix all.
    pixels = np.zeros((64, 192, 3), np.uint8)
    pixels[:, :64, 0] = pixels[:, 64:128, 2] = pixels[:, 128:, 1] = 255
    Image.fromarray(pixels).save(synth_copy / "test" / "images" / "test_1.JPEG", quality=100)
    out = tmp_path / "cache"
    assert main(["prepare", str(synth_copy), "--out", str(out), "-q", "--resize"]) == 0
    test = load_cache(out).split("test")
    image = test.images[test.files.index("test/images/test_1.JPEG")].astype(int)
    assert (np.abs(image[4:-4, 4:-4] - [0, 0, 255]).max(axis=-1) < 40).all()


# --- issue 27 item 20: boxes of a cache made at another size -----------------------------------


@pytest.mark.parametrize(
    ("box", "width", "height", "size", "expected"),
    [
        ((14, 2, 54, 49), 64, 64, 32, (7, 1, 27, 24)),  # x: pixels 14-54 = [14, 55) -> [7, 27.5)
        ((52, 55, 57, 59), 64, 64, 32, (26, 27, 28, 29)),
        ((0, 0, 63, 63), 64, 64, 32, (0, 0, 31, 31)),  # the whole image stays the whole image
        ((0, 10, 63, 58), 64, 64, 56, (0, 8, 55, 51)),  # 10 * 7/8 = 8.75, 59 * 7/8 = 51.6
        ((40, 10, 50, 20), 128, 64, 64, (8, 10, 18, 20)),  # the centre square starts at x = 32
        ((20, 0, 100, 63), 128, 64, 32, (0, 0, 31, 31)),  # cut by the square: clipped to it
        ((0, 0, 20, 63), 128, 64, 64, (-1, -1, -1, -1)),  # wholly cropped away: unknown
        ((-1, -1, -1, -1), 64, 64, 32, (-1, -1, -1, -1)),  # unknown stays unknown
    ],
)
def test_boxes_follow_the_images_to_another_size(
    box: tuple, width: int, height: int, size: int, expected: tuple
) -> None:
    boxes = np.array([box, (1, 2, 3, 4)], np.int16)  # row 1 was not resized: it stays
    fitted = decode.fit_boxes(boxes, [(0, width, height)], size)
    assert fitted.tolist() == [list(expected), [1, 2, 3, 4]] and fitted.dtype == np.int16


def test_a_cache_at_size_32_has_boxes_in_32_pixel_coordinates(
    mini_archive: Path, tmp_path: Path
) -> None:
    # Boxes of the real mini subset, read from its annotation files, halved by hand.
    out = tmp_path / "mini32"
    cache = load_cache(prepare(mini_archive, out, size=32, resize=True, progress=False).path)
    train, val = cache.split("train"), cache.split("val")
    assert train.images.shape[1:] == (32, 32, 3)
    one = train.files.index("train/n01443537/images/n01443537_1.JPEG")  # 14 2 54 49 at 64
    assert train.boxes[one].tolist() == [7, 1, 27, 24]
    assert val.boxes[val.files.index("val/images/val_1.JPEG")].tolist() == [26, 27, 28, 29]
    assert train.boxes.min() >= 0 and train.boxes.max() <= 31 and val.boxes.max() <= 31
    assert not prepare(mini_archive, out, size=32, resize=True, progress=False).rebuilt


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


# --- 15: decode workers die with prepare --------------------------------------------------------


@pytest.fixture(scope="module")
def big_folder(mini_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real mini subset with 12x the train images (hard links): seconds to prepare."""
    root = tmp_path_factory.mktemp("big") / "tiny-imagenet-big"
    shutil.copytree(mini_folder, root, copy_function=os.link)
    for boxes in (root / "train").glob("*/*_boxes.txt"):
        lines = boxes.read_text().splitlines()
        copies = []
        for k in range(1, 12):
            for line in lines:
                name, rest = line.split("\t", 1)
                os.link(boxes.parent / "images" / name, boxes.parent / "images" / f"c{k}_{name}")
                copies.append(f"c{k}_{name}\t{rest}")
        boxes.unlink()  # a hard link to mini_folder's file: writing through it would edit that
        boxes.write_text("\n".join(lines + copies) + "\n")
    return root


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


def _start_prepare(src: Path, out: Path) -> tuple[subprocess.Popen, list[int]]:
    """`tinycnn prepare` in a subprocess, caught mid-run: (process, its two worker pids)."""
    argv = ["prepare", str(src), "--out", str(out), "-q", "--workers", "2"]
    code = f"from tinycnn.cli import main; raise SystemExit(main({argv!r}))"
    process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    workers: list[int] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        workers = _children(process.pid)
        if len(workers) == 2 and list(out.parent.glob(f".{out.name}.tmp-*/train_images.npy")):
            break
        time.sleep(0.005)
    assert len(workers) == 2 and process.poll() is None, "prepare was not caught mid-run"
    return process, workers


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if _alive(p)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_die_with_prepare(big_folder: Path, tmp_path: Path, sig: int) -> None:
    process, workers = _start_prepare(big_folder, tmp_path / "cache")
    try:
        os.kill(process.pid, sig)  # the parent only, as `kill` or an OOM killer does
        process.wait(timeout=30)
        assert not _wait_gone(workers, 5), "decode workers outlived prepare"
        assert process.returncode == (-9 if sig == signal.SIGKILL else 143)
    finally:
        for worker in workers:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_killed_worker_is_one_clean_error(big_folder: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "cache"
    process, workers = _start_prepare(big_folder, out)
    try:
        os.kill(workers[0], sig)  # e.g. the out-of-memory killer picking a worker
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1, err
        assert "Traceback" not in err and err.count("\n") == 1, err
        assert "a decode worker process died" in err and "run prepare again" in err
        assert not _wait_gone(workers, 5) and not out.exists()
        assert not list(tmp_path.glob(".cache.*")), "the build was not cleaned up"
    finally:
        for worker in workers:
            if _alive(worker):
                os.kill(worker, signal.SIGKILL)


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

"""Reading the official layout: class order, labels, names, boxes, archives, and bad trees."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinycnn.data.sources import TarGzSource, open_source
from tinycnn.data.tiny_imagenet import natural_key, read_layout
from tinycnn.errors import DataError


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("kind", ["folder", "zip", "tar.gz"])
def test_layout_follows_the_official_files(synth_sources: dict[str, Path], kind: str) -> None:
    folder = synth_sources["folder"]
    layout = read_layout(open_source(synth_sources[kind]))
    wnids = _lines(folder / "wnids.txt")
    assert layout.wnids == wnids  # line order, not sorted
    assert wnids != sorted(wnids)
    words = dict(line.split("\t", 1) for line in _lines(folder / "words.txt"))
    assert layout.names == [words[w] for w in wnids]
    train = layout.splits["train"]
    for row, rel in enumerate(train.files):
        wnid = rel.split("/")[1]
        assert train.labels[row] == wnids.index(wnid)
    val = layout.splits["val"]
    truth = {
        f: (w, [int(v) for v in box])
        for f, w, *box in (
            line.split("\t") for line in _lines(folder / "val" / "val_annotations.txt")
        )
    }
    for row, rel in enumerate(val.files):
        wnid, box = truth[rel.rsplit("/", 1)[1]]
        assert val.labels[row] == wnids.index(wnid)
        assert val.boxes[row].tolist() == box
    assert layout.splits["test"].labels is None


def test_train_boxes_match_the_boxes_files(synth_sources: dict[str, Path]) -> None:
    folder = synth_sources["folder"]
    train = read_layout(open_source(folder)).splits["train"]
    for row, rel in enumerate(train.files):
        wnid, name = rel.split("/")[1], rel.rsplit("/", 1)[1]
        boxes = {
            f: [int(v) for v in b]
            for f, *b in (
                line.split("\t") for line in _lines(folder / "train" / wnid / f"{wnid}_boxes.txt")
            )
        }
        assert train.boxes[row].tolist() == boxes[name]


def test_files_are_in_natural_order(synth_sources: dict[str, Path]) -> None:
    val = read_layout(open_source(synth_sources["folder"])).splits["val"].files
    numbers = [int(f.rsplit("_", 1)[1].split(".")[0]) for f in val]
    assert numbers == sorted(numbers)
    assert sorted(["x_10", "x_2", "x_1"], key=natural_key) == ["x_1", "x_2", "x_10"]


def test_real_mini_subset(mini_folder: Path, mini_archive: Path) -> None:
    for src in (mini_folder, mini_archive):
        layout = read_layout(open_source(src))
        assert layout.wnids == _lines(mini_folder / "wnids.txt")
        assert layout.names[0] == "goldfish, Carassius auratus"
        counts = {name: len(split.files) for name, split in layout.splits.items()}
        assert counts == {"train": 1000, "val": 500, "test": 200}
        assert np.bincount(layout.splits["train"].labels).tolist() == [100] * 10
        assert np.bincount(layout.splits["val"].labels).tolist() == [50] * 10
        assert layout.splits["train"].files[1] == "train/n01443537/images/n01443537_1.JPEG"
        assert layout.splits["train"].boxes[0].tolist() == [0, 10, 63, 58]
        val = layout.splits["val"]
        first = val.files.index("val/images/val_1.JPEG")
        assert layout.wnids[val.labels[first]] == "n04067472"  # from val_annotations.txt
        assert val.boxes[first].tolist() == [52, 55, 57, 59]


def test_folder_holding_the_dataset_folder_is_accepted(synth_sources: dict[str, Path]) -> None:
    parent = synth_sources["folder"].parent
    assert open_source(parent).path == synth_sources["folder"]


def _tar_gz(members: dict[str, bytes], fmt: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=fmt) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_tar_reader_handles_long_names(tmp_path: Path, fmt: int) -> None:
    long = "top/" + "d" * 60 + "/" + "e" * 80 + "/file.txt"  # > 100 characters
    members = {"top/wnids.txt": b"n1\n", long: b"payload", "top/b.bin": b"\x00" * 1000}
    if fmt == tarfile.USTAR_FORMAT:
        long = "top/" + "d" * 90 + "/" + "e" * 60 + "/file.txt"  # fits the ustar prefix field
        members = {"top/wnids.txt": b"n1\n", long: b"payload", "top/b.bin": b"\x00" * 1000}
    path = tmp_path / "t.tar.gz"
    path.write_bytes(_tar_gz(members, fmt))
    for keep in (1 << 20, 0):  # kept in memory, or streamed a second time
        source = TarGzSource(path, keep_bytes=keep)
        assert sorted(source.names()) == sorted(n.removeprefix("top/") for n in members)
        got = dict(source.stream(["b.bin", long.removeprefix("top/")]))
        assert got == {"b.bin": b"\x00" * 1000, long.removeprefix("top/"): b"payload"}


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["wnids.txt", "train/x.JPEG"], "wnids.txt is at the top of the archive"),
        (["data/sub/wnids.txt"], "no top folder with wnids.txt"),
        (["a/wnids.txt", "b/wnids.txt"], "several top folders"),
    ],
)
def test_archive_without_the_top_folder(tmp_path: Path, names: list[str], message: str) -> None:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "n1\n")
    with pytest.raises(DataError, match=message) as info:
        open_source(path)
    assert str(path) in str(info.value)


def test_not_an_archive(tmp_path: Path) -> None:
    for name, data in [("x.zip", b"not a zip"), ("x.tar.gz", b"not gzip at all"), ("x.rar", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(DataError, match=name):
            read_layout(open_source(path))

"""Dataset layouts (data/layout.py, data/tiny_imagenet.py, data/sources.py): class order, labels,
names, boxes, archives, bad trees with every problem in one message, class lists (--classes,
official), BOM and CRLF text files."""

from __future__ import annotations

import gzip
import io
import itertools
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import save_image
from tinycnn.cli import main
from tinycnn.data.cache import load_cache
from tinycnn.data.prepare import prepare
from tinycnn.data.sources import Source, TarGzSource, open_source
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
    # Text and digit runs alternate, text first: "²" is a digit to str.isdigit, not to the split.
    assert natural_key("a1\u00b22.JPEG") == ("a", 1, "\u00b2", 2, ".JPEG")
    assert natural_key("7") == ("", 7, "") and natural_key("") == ("",)


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


def _tar(members: dict[str, bytes], fmt: int, mode: str = "w") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode, format=fmt) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _tar_gz(members: dict[str, bytes], fmt: int) -> bytes:
    return _tar(members, fmt, mode="w:gz")


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


def _random_members(count: int, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    members = {"top/wnids.txt": b"n1\n"}
    for i in range(count):  # sizes around the 512-byte blocks and the 1 MiB reads
        size = int(rng.choice([0, 1, 511, 512, 513, 3000, (1 << 20) + 7]))
        members[f"top/f{i}.bin"] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    return members


def test_tar_reader_reads_what_tarfile_wrote(tmp_path: Path) -> None:
    members = _random_members(40)
    path = tmp_path / "t.tar.gz"
    path.write_bytes(_tar_gz(members, tarfile.GNU_FORMAT))
    # Two gzip members one after the other are one valid gzip stream (as `cat a.gz b.gz`).
    tar = _tar(members, tarfile.GNU_FORMAT)
    split = tmp_path / "split.tar.gz"
    split.write_bytes(gzip.compress(tar[:70_001]) + gzip.compress(tar[70_001:]))
    wanted = [n.removeprefix("top/") for n in members]
    for archive_path in (path, split):
        for keep in (1 << 30, 0):
            source = TarGzSource(archive_path, keep_bytes=keep)
            assert source.names() == wanted
            got = dict(source.stream(wanted))
            assert got == {n.removeprefix("top/"): d for n, d in members.items()}


def test_gzip_members_that_start_and_end_inside_one_read_are_all_read(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    members = {"top/wnids.txt": b"n1\n"}
    members |= {f"top/f{i}.bin": rng.bytes(3000) for i in range(4)}
    tar = _tar(members, tarfile.GNU_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        starts = [m.offset_data for m in archive.getmembers()][-3:]  # f1's, f2's, f3's data
    cuts = [0, *(start + 100 for start in starts), len(tar)]  # four members, all in one read
    path = tmp_path / "four.tar.gz"
    path.write_bytes(b"".join(gzip.compress(tar[a:b]) for a, b in itertools.pairwise(cuts)))
    source = TarGzSource(path)
    assert dict(source.stream(source.names())) == {n[4:]: d for n, d in members.items()}


def test_a_tar_gz_holding_a_file_twice_is_refused(tmp_path: Path) -> None:
    # tar allows a second copy (an appended update); which one the data means is unclear.
    members = [("top/wnids.txt", b"n1\n"), ("top/a.bin", b"first"), ("top/a.bin", b"second")]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path = tmp_path / "twice.tar.gz"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(DataError, match=rf"{path}: holds top/a.bin twice"):
        TarGzSource(path).names()


@pytest.mark.parametrize("damage", ["cut", "flipped"])
def test_a_damaged_tar_gz_is_a_data_error_naming_it(tmp_path: Path, damage: str) -> None:
    data = bytearray(_tar_gz(_random_members(12, seed=1), tarfile.GNU_FORMAT))
    if damage == "cut":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"{path}: (corrupt gzip data|truncated archive)"):
        TarGzSource(path).names()


@pytest.mark.parametrize("keep", [1 << 30, 0])
def test_a_tar_gz_cut_anywhere_is_a_data_error(tmp_path: Path, keep: int) -> None:
    # zlib does not raise on a stream cut short; a cut inside a member the scan skips, in a
    # header or in the trailer lost files without a word. Every cut must be refused.
    data = _tar_gz(_random_members(12, seed=2), tarfile.GNU_FORMAT)
    path = tmp_path / "cut.tar.gz"
    for cut in [0, 10, *range(100, len(data), len(data) // 23), len(data) - 8, len(data) - 1]:
        path.write_bytes(data[:cut])
        with pytest.raises(DataError, match=rf"{path}: (corrupt gzip data|truncated)"):
            TarGzSource(path, keep_bytes=keep).names()
    path.write_bytes(data)
    assert len(TarGzSource(path, keep_bytes=keep).names()) == 13  # the whole file still reads


def test_a_tar_cut_on_a_block_boundary_and_gzipped_whole_is_refused(tmp_path: Path) -> None:
    # A complete gzip stream of a tar cut after its 5th member: no end marker, files missing.
    members = _random_members(12, seed=3)
    tar = _tar(members, tarfile.GNU_FORMAT)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        sixth = archive.getmembers()[5].offset  # the 6th member's header
    path = tmp_path / "short.tar.gz"
    path.write_bytes(gzip.compress(tar[:sixth]))
    with pytest.raises(DataError, match=rf"{path}: truncated archive \(it ends without"):
        TarGzSource(path).names()


def test_gzip_padding_after_the_last_member_is_read_as_gzip_reads_it(tmp_path: Path) -> None:
    members = _random_members(3, seed=4)
    padded = _tar_gz(members, tarfile.GNU_FORMAT) + bytes(5000)
    assert gzip.decompress(padded) == _tar(members, tarfile.GNU_FORMAT)  # gzip accepts it too
    path = tmp_path / "padded.tar.gz"
    path.write_bytes(padded)
    source = TarGzSource(path)
    assert dict(source.stream(source.names())) == {n[4:]: d for n, d in members.items()}


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.LNKTYPE, "a hard link to top/a.bin"), (tarfile.SYMTYPE, "a symbolic link to a.bin")],
)
def test_a_link_in_a_tar_gz_is_refused_naming_it(tmp_path: Path, kind: bytes, what: str) -> None:
    # The link's file is another member's bytes (or outside): dropping it loses an image.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in [("top/wnids.txt", b"n1\n"), ("top/a.bin", b"image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("top/b.bin")
        link.type = kind
        link.linkname = "top/a.bin" if kind == tarfile.LNKTYPE else "a.bin"
        archive.addfile(link)
    path = tmp_path / "links.tar.gz"
    path.write_bytes(buffer.getvalue())
    with tarfile.open(path) as archive:  # tarfile lists it as a member with a file
        assert archive.getmember("top/b.bin").issym() or archive.getmember("top/b.bin").islnk()
    with pytest.raises(DataError, match=rf"{path}: top/b.bin is {what}; .*--hard-dereference"):
        TarGzSource(path).names()


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


def test_shipped_official_class_list_matches_the_real_archive(full_archive: Path) -> None:
    from tinycnn.data.layout import official_wnids
    from tinycnn.data.tar_stream import iter_tar

    real = next(
        data
        for name, data in iter_tar(full_archive, want=lambda n: n.endswith("/wnids.txt"))
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

"""The official Tiny ImageNet layout: classes, names, and the labelled file list of each split.

Class index = line order of ``wnids.txt`` (never sorted folder names: the official file is not
sorted, and every tool that sorts gives different indices). Val labels come from
``val/val_annotations.txt``, never from the flat ``val/images`` folder. Within a split, files are
in natural name order (``x_2`` before ``x_10``), train grouped by class in wnids order, so a
folder, a zip and a tar.gz of the same data give identical caches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tinycnn.data.sources import Source
from tinycnn.errors import DataError

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_WNID = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class SplitLayout:
    """One split: files (relative to the dataset root) in cache order, labels and boxes."""

    name: str
    files: list[str]
    labels: np.ndarray | None  # (N,) int16 class index; None for the unlabelled test split
    boxes: np.ndarray | None  # (N, 4) int16 x0, y0, x1, y1 (inclusive); None where not given


@dataclass
class Layout:
    wnids: list[str]
    names: list[str]
    splits: dict[str, SplitLayout]


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: test_2 < test_10."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def read_layout(source: Source) -> Layout:
    """Check the tree against the official layout and list every split; DataError on any fault."""
    names = source.names()
    present = set(names)
    folders = _by_folder(names)
    wnids = _read_wnids(source, present)
    splits = {
        "train": _train_split(source, present, folders, wnids),
        "val": _val_split(source, present, folders, wnids),
        "test": _test_split(source, folders),
    }
    return Layout(wnids=wnids, names=_read_names(source, present, wnids), splits=splits)


def _text_lines(source: Source, rel: str) -> list[str]:
    try:
        text = source.read(rel).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{source.display(rel)}: not UTF-8 text ({exc.reason})") from None
    return text.splitlines()


def _read_wnids(source: Source, present: set[str]) -> list[str]:
    if "wnids.txt" not in present:
        raise DataError(f"{source.display('wnids.txt')}: missing (it lists the classes)")
    wnids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(_text_lines(source, "wnids.txt"), 1):
        wnid = line.strip()
        if not wnid:
            continue
        where = f"{source.display('wnids.txt')} line {lineno}"
        if not _WNID.match(wnid):
            raise DataError(f"{where}: {wnid!r} is not a class id")
        if wnid in seen:
            raise DataError(f"{where}: duplicate class {wnid} (first on line {seen[wnid]})")
        seen[wnid] = lineno
        wnids.append(wnid)
    if not wnids:
        raise DataError(f"{source.display('wnids.txt')}: lists no classes")
    return wnids


def _read_names(source: Source, present: set[str], wnids: list[str]) -> list[str]:
    # words.txt covers all of ImageNet (82k lines); keep only our classes. A missing file or
    # entry falls back to the wnid itself, which is still a usable label.
    wanted = set(wnids)
    found: dict[str, str] = {}
    if "words.txt" in present:
        for line in _text_lines(source, "words.txt"):
            wnid, _, words = line.partition("\t")
            if wnid in wanted:
                found[wnid] = words.strip()
    return [found.get(w) or w for w in wnids]


def _is_image(rel: str) -> bool:
    return rel.lower().endswith(IMAGE_SUFFIXES)


def _by_folder(names: list[str]) -> dict[str, list[str]]:
    """Image file names grouped by their folder ("train/n01/images"), in natural order."""
    groups: dict[str, list[str]] = {}
    for rel in names:
        if _is_image(rel):
            folder, _, base = rel.rpartition("/")
            groups.setdefault(folder, []).append(base)
    return {folder: sorted(files, key=natural_key) for folder, files in groups.items()}


def _parse_box(fields: list[str], where: str) -> list[int]:
    try:
        box = [int(v) for v in fields]
    except ValueError:
        raise DataError(f"{where}: box {' '.join(fields)!r} is not four integers") from None
    if box[0] > box[2] or box[1] > box[3] or min(box) < 0:
        raise DataError(f"{where}: box {box} is not x0 <= x1, y0 <= y1, all >= 0")
    return box


def _read_annotations(source: Source, rel: str, n_fields: int) -> dict[str, tuple[int, list[str]]]:
    """Tab-separated lines keyed by file name -> (line number, the other fields)."""
    rows: dict[str, tuple[int, list[str]]] = {}
    for lineno, line in enumerate(_text_lines(source, rel), 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        where = f"{source.display(rel)} line {lineno}"
        if len(fields) != n_fields:
            raise DataError(
                f"{where}: expected {n_fields} tab-separated fields, "
                f"got {len(fields)} in {line.strip()!r}"
            )
        name = fields[0].strip()
        if name in rows:
            raise DataError(f"{where}: duplicate entry for {name} (first on line {rows[name][0]})")
        rows[name] = (lineno, [f.strip() for f in fields[1:]])
    return rows


def _train_split(
    source: Source, present: set[str], folders: dict[str, list[str]], wnids: list[str]
) -> SplitLayout:
    known = set(wnids)
    class_dirs = {n.split("/")[1] for n in present if n.startswith("train/") and n.count("/") >= 2}
    strays = sorted(class_dirs - known)
    if strays:
        raise DataError(
            f"{source.display('train/' + strays[0])}: class folder not listed in "
            f"wnids.txt ({len(strays)} such folder(s))"
        )
    files, labels, boxes = [], [], []
    for index, wnid in enumerate(wnids):
        images = folders.get(f"train/{wnid}/images", [])
        if not images:
            what = "has no images" if wnid in class_dirs else "is missing"
            raise DataError(
                f"{source.display(f'train/{wnid}/images')}: class folder {what} "
                f"(class {wnid}, line {index + 1} of wnids.txt)"
            )
        box_rel = f"train/{wnid}/{wnid}_boxes.txt"
        if box_rel not in present:
            raise DataError(f"{source.display(box_rel)}: missing (bounding boxes of class {wnid})")
        rows = _read_annotations(source, box_rel, 5)
        on_disk = set(images)
        for name, (lineno, _) in rows.items():
            if name not in on_disk:
                raise DataError(
                    f"{source.display(box_rel)} line {lineno}: {name} does not exist "
                    f"in train/{wnid}/images"
                )
        for name in images:
            if name not in rows:
                raise DataError(f"{source.display(box_rel)}: no box line for {name}")
            lineno, fields = rows[name]
            boxes.append(_parse_box(fields, f"{source.display(box_rel)} line {lineno}"))
            files.append(f"train/{wnid}/images/{name}")
            labels.append(index)
    return SplitLayout(
        "train", files, np.asarray(labels, np.int16), np.asarray(boxes, np.int16).reshape(-1, 4)
    )


def _val_split(
    source: Source, present: set[str], folders: dict[str, list[str]], wnids: list[str]
) -> SplitLayout:
    ann = "val/val_annotations.txt"
    if ann not in present:
        raise DataError(
            f"{source.display(ann)}: missing (val labels come only from it; the "
            "flat val/images folder carries none)"
        )
    rows = _read_annotations(source, ann, 6)
    images = folders.get("val/images", [])
    on_disk = set(images)
    index_of = {w: i for i, w in enumerate(wnids)}
    for name, (lineno, fields) in rows.items():
        where = f"{source.display(ann)} line {lineno}"
        if fields[0] not in index_of:
            raise DataError(f"{where}: unknown class {fields[0]} (not in wnids.txt)")
        if name not in on_disk:
            raise DataError(f"{where}: {name} does not exist in val/images")
    for name in images:
        if name not in rows:
            raise DataError(f"{source.display('val/images/' + name)}: no line in {ann}")
    if not images:
        raise DataError(f"{source.display('val/images')}: the val split is empty")
    files, labels, boxes = [], [], []
    for name in images:
        lineno, fields = rows[name]
        labels.append(index_of[fields[0]])
        boxes.append(_parse_box(fields[1:], f"{source.display(ann)} line {lineno}"))
        files.append(f"val/images/{name}")
    return SplitLayout(
        "val", files, np.asarray(labels, np.int16), np.asarray(boxes, np.int16).reshape(-1, 4)
    )


def _test_split(source: Source, folders: dict[str, list[str]]) -> SplitLayout:
    images = folders.get("test/images", [])
    if not images:
        raise DataError(f"{source.display('test/images')}: the test split is empty or missing")
    return SplitLayout("test", [f"test/images/{n}" for n in images], None, None)

"""The official Tiny ImageNet layout: classes, names, and the labelled file list of each split.

Class index = line order of ``wnids.txt`` (never sorted folder names: the official file is not
sorted, and every tool that sorts gives different indices), or the order of a ``--classes`` list,
which keeps only its classes. Val labels come from ``val/val_annotations.txt``, never from the
flat ``val/images`` folder. Within a split, files are in natural name order (``x_2`` before
``x_10``), train grouped by class in class order, so a folder, a zip and a tar.gz of the same data
give identical caches.

Copies found in the wild differ from the official archive (extra classes appended to wnids.txt,
classes without a ``_boxes.txt``): a missing box file makes that class's boxes unknown (-1) and is
recorded, and every real problem is reported together, in one message.
"""

from __future__ import annotations

import re

import numpy as np

from tinycnn.data.layout import (
    SPLITS,
    Layout,
    Problems,
    SplitLayout,
    decode_text,
    keep_classes,
    natural_key,
)
from tinycnn.data.sources import Source
from tinycnn.errors import DataError

__all__ = ["IMAGE_SUFFIXES", "SPLITS", "Layout", "SplitLayout", "natural_key", "read_layout"]

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
_WNID = re.compile(r"^[A-Za-z0-9_.-]+$")
_UNKNOWN_BOX = [-1, -1, -1, -1]


def read_layout(source: Source, classes: list[str] | None = None) -> Layout:
    """Check the tree against the official layout and list every split.

    Args:
        source: the dataset (folder or archive) holding wnids.txt.
        classes: keep only these class ids, in this order (None: all of wnids.txt, in its order);
            the other classes' train images and val images are dropped and counted.
    Raises DataError listing every problem found (counted, the first few quoted).
    """
    names = source.names()
    present = set(names)
    folders = _by_folder(names)
    problems = Problems(str(source.path))
    listed = _read_wnids(source, present, problems)
    wnids = keep_classes(listed, classes, source.display("wnids.txt"), problems)
    notes: dict = {"classes_from": "wnids.txt"}
    if classes is not None:
        notes["dropped_classes"] = [w for w in listed if w not in set(wnids)]
        notes["dropped_images"] = {}
    splits = {
        "train": _train_split(source, present, folders, listed, wnids, problems, notes),
        "val": _val_split(source, present, folders, listed, wnids, problems, notes),
        "test": _test_split(source, folders, problems),
    }
    if not wnids:
        problems.add(f"{source.display('wnids.txt')}: no class is left to prepare")
    problems.check()
    return Layout(wnids, _read_names(source, present, wnids), splits, "official", notes)


def _text_lines(source: Source, rel: str) -> list[str]:
    return decode_text(source.read(rel), source.display(rel))


def _read_wnids(source: Source, present: set[str], problems: Problems) -> list[str]:
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
            problems.add(f"{where}: {wnid!r} is not a class id")
        elif wnid in seen:
            problems.add(f"{where}: duplicate class {wnid} (first on line {seen[wnid]})")
        else:
            seen[wnid] = lineno
            wnids.append(wnid)
    if not wnids and not problems.found:
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
            if wnid.strip() in wanted:
                found[wnid.strip()] = words.strip()
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


def _parse_box(fields: list[str], file: str, lineno: int, problems: Problems) -> list[int]:
    try:
        box = [int(v) for v in fields]
    except ValueError:
        problems.add(f"{file} line {lineno}: box {' '.join(fields)!r} is not four integers")
        return _UNKNOWN_BOX
    if box[0] > box[2] or box[1] > box[3] or min(box) < 0:
        problems.add(f"{file} line {lineno}: box {box} is not x0 <= x1, y0 <= y1, all >= 0")
        return _UNKNOWN_BOX
    return box


def _read_annotations(
    source: Source, rel: str, n_fields: int, problems: Problems
) -> dict[str, tuple[int, list[str]]]:
    """Tab-separated lines keyed by file name -> (line number, the other fields)."""
    rows: dict[str, tuple[int, list[str]]] = {}
    file = source.display(rel)
    for lineno, line in enumerate(_text_lines(source, rel), 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) != n_fields:
            problems.add(
                f"{file} line {lineno}: expected {n_fields} tab-separated fields, "
                f"got {len(fields)} in {line.strip()!r}"
            )
            continue
        name = fields[0].strip()
        if name in rows:
            problems.add(
                f"{file} line {lineno}: duplicate entry for {name} (first on line {rows[name][0]})"
            )
            continue
        rows[name] = (lineno, [f.strip() for f in fields[1:]])
    return rows


def _train_split(
    source: Source,
    present: set[str],
    folders: dict[str, list[str]],
    listed: list[str],
    wnids: list[str],
    problems: Problems,
    notes: dict,
) -> SplitLayout:
    class_dirs = {n.split("/")[1] for n in present if n.startswith("train/") and n.count("/") >= 2}
    for stray in sorted(class_dirs - set(listed)):
        problems.add(f"{source.display('train/' + stray)}: class folder not listed in wnids.txt")
    if "dropped_images" in notes:
        notes["dropped_images"]["train"] = sum(
            len(folders.get(f"train/{w}/images", [])) for w in set(listed) - set(wnids)
        )
    files, labels, boxes = [], [], []
    missing_boxes: list[str] = []
    for index, wnid in enumerate(wnids):
        images = folders.get(f"train/{wnid}/images", [])
        if not images:
            what = "has no images" if wnid in class_dirs else "is missing"
            problems.add(
                f"{source.display(f'train/{wnid}/images')}: class folder {what} "
                f"(class {wnid}, line {listed.index(wnid) + 1} of wnids.txt)"
            )
            continue
        box_rel = f"train/{wnid}/{wnid}_boxes.txt"
        if box_rel in present:
            class_boxes = _class_boxes(source, box_rel, wnid, images, problems)
        else:  # not fatal: seen in real copies; the boxes become unknown and are counted
            missing_boxes.append(box_rel)
            class_boxes = [_UNKNOWN_BOX] * len(images)
        boxes.extend(class_boxes)
        files.extend(f"train/{wnid}/images/{name}" for name in images)
        labels.extend([index] * len(images))
    if missing_boxes:
        notes["missing_box_files"] = missing_boxes
        notes["boxes_unknown"] = {"train": sum(1 for b in boxes if b is _UNKNOWN_BOX)}
    return SplitLayout(
        "train", files, np.asarray(labels, np.int16), np.asarray(boxes, np.int16).reshape(-1, 4)
    )


def _class_boxes(
    source: Source, box_rel: str, wnid: str, images: list[str], problems: Problems
) -> list[list[int]]:
    rows = _read_annotations(source, box_rel, 5, problems)
    on_disk = set(images)
    for name, (lineno, _) in rows.items():
        if name not in on_disk:
            problems.add(
                f"{source.display(box_rel)} line {lineno}: {name} does not exist "
                f"in train/{wnid}/images"
            )
    boxes = []
    file = source.display(box_rel)
    for name in images:
        if name not in rows:
            problems.add(f"{file}: no box line for {name}")
            boxes.append(_UNKNOWN_BOX)
            continue
        lineno, fields = rows[name]
        boxes.append(_parse_box(fields, file, lineno, problems))
    return boxes


def _val_split(
    source: Source,
    present: set[str],
    folders: dict[str, list[str]],
    listed: list[str],
    wnids: list[str],
    problems: Problems,
    notes: dict,
) -> SplitLayout:
    ann = "val/val_annotations.txt"
    images = folders.get("val/images", [])
    if ann not in present:
        problems.add(
            f"{source.display(ann)}: missing (val labels come only from it; the "
            "flat val/images folder carries none)"
        )
        rows = {}
    else:
        rows = _read_annotations(source, ann, 6, problems)
    on_disk = set(images)
    index_of = {w: i for i, w in enumerate(wnids)}
    known = set(listed)
    for name, (lineno, fields) in rows.items():
        where = f"{source.display(ann)} line {lineno}"
        if fields[0] not in known:
            problems.add(f"{where}: unknown class {fields[0]} (not in wnids.txt)")
        if name not in on_disk:
            problems.add(f"{where}: {name} does not exist in val/images")
    if ann in present:
        for name in images:
            if name not in rows:
                problems.add(f"{source.display('val/images/' + name)}: no line in {ann}")
    if not images:
        problems.add(f"{source.display('val/images')}: the val split is empty")
    files, labels, boxes = [], [], []
    dropped = 0
    file = source.display(ann)
    for name in images:
        if name not in rows or rows[name][1][0] not in known:
            continue  # reported above
        lineno, fields = rows[name]
        if fields[0] not in index_of:
            dropped += 1  # a class left out by --classes
            continue
        labels.append(index_of[fields[0]])
        boxes.append(_parse_box(fields[1:], file, lineno, problems))
        files.append(f"val/images/{name}")
    if "dropped_images" in notes:
        notes["dropped_images"]["val"] = dropped
    return SplitLayout(
        "val", files, np.asarray(labels, np.int16), np.asarray(boxes, np.int16).reshape(-1, 4)
    )


def _test_split(source: Source, folders: dict[str, list[str]], problems: Problems) -> SplitLayout:
    images = folders.get("test/images", [])
    if not images:
        problems.add(f"{source.display('test/images')}: the test split is empty or missing")
    return SplitLayout("test", [f"test/images/{n}" for n in images], None, None)

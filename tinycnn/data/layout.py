"""What every dataset layout yields (classes and labelled file lists), and the checks they share.

Two layouts are read: the official Tiny ImageNet one (tiny_imagenet.py, recognised by its
wnids.txt) and the common class-per-folder one (folders.py). Both report every problem they find
in one message (``Problems``) rather than stopping at the first, so one run shows all there is
to fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from tinycnn.errors import DataError

SPLITS = ("train", "val", "test")
OFFICIAL = "official"  # --classes official: the 200 classes of Tiny ImageNet
_SHOWN_PROBLEMS = 5


@dataclass
class SplitLayout:
    """One split: files (relative to the dataset root) in cache order, labels and boxes."""

    name: str
    files: list[str]
    labels: np.ndarray | None  # (N,) int16 class index; None for the unlabelled test split
    boxes: np.ndarray | None  # (N, 4) int16 x0, y0, x1, y1 inclusive, -1 unknown; None: none


@dataclass
class Layout:
    wnids: list[str]  # class ids in class-index order (folder names for class-per-folder data)
    names: list[str]  # a readable name per class
    splits: dict[str, SplitLayout]
    kind: str = "official"  # or "folders"
    # What was left out or unknown, recorded in the manifest: classes_from, dropped_classes,
    # dropped_images {split: count}, missing_box_files [rel], boxes_unknown {split: count}.
    notes: dict = field(default_factory=dict)


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: test_2 < test_10. The split alternates
    text and digit runs (text first, empty at the ends), so the runs are the odd places."""
    parts: list = _DIGIT_RUNS.split(name)
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


class Problems:
    """Every problem found while reading a layout; ``check`` raises them as one DataError."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.found: list[str] = []

    def add(self, message: str) -> None:
        self.found.append(message)

    def check(self) -> None:
        """Raise one one-line DataError: the problem itself, or a count and the first few."""
        if len(self.found) == 1:
            raise DataError(self.found[0])
        if self.found:
            shown = "; ".join(f"({i}) {m}" for i, m in enumerate(self.found[:_SHOWN_PROBLEMS], 1))
            more = len(self.found) - _SHOWN_PROBLEMS
            rest = f"; and {more} more" if more > 0 else ""
            raise DataError(
                f"{self.where}: {len(self.found)} problems in the dataset, nothing was "
                f"prepared: {shown}{rest}"
            )


def decode_text(data: bytes, where: str) -> list[str]:
    """Lines of a UTF-8 text file; a byte-order mark and CRLF line ends are accepted."""
    try:
        return data.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text ({exc.reason})") from None


def official_wnids() -> list[str]:
    """The 200 class ids of the official Tiny ImageNet, in its wnids.txt order."""
    text = resources.files("tinycnn.data").joinpath("official_wnids.txt").read_bytes()
    return [line.strip() for line in decode_text(text, "official_wnids.txt") if line.strip()]


def read_class_list(spec: str | Path) -> list[str]:
    """The classes named by --classes: "official", or a text file of one class id per line."""
    if str(spec) == OFFICIAL:
        return official_wnids()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise DataError(
            f"{path}: no such file (--classes takes a file of class ids, one per line, or "
            f"'{OFFICIAL}' for the 200 Tiny ImageNet classes)"
        )
    classes: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(decode_text(path.read_bytes(), str(path)), 1):
        wnid = line.strip()
        if not wnid or wnid.startswith("#"):
            continue
        if wnid in seen:
            raise DataError(
                f"{path} line {lineno}: duplicate class {wnid} (first on line {seen[wnid]})"
            )
        seen[wnid] = lineno
        classes.append(wnid)
    if not classes:
        raise DataError(f"{path}: lists no classes")
    return classes


def keep_classes(
    found: list[str], wanted: list[str] | None, where: str, problems: Problems
) -> list[str]:
    """The classes to keep, in the wanted list's order (all found ones if no list)."""
    if wanted is None:
        return found
    present = set(found)
    for wnid in wanted:
        if wnid not in present:
            problems.add(f"{where}: class {wnid} of the --classes list is not in the dataset")
    return [w for w in wanted if w in present]

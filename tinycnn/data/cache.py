"""The prepared cache: per-split uint8 image arrays, labels, boxes and a manifest, memory-mapped.

Layout of a cache folder (format 1)::

    manifest.json           written last: a folder without it is not a cache
    {split}_images.npy      (N, 64, 64, 3) uint8 RGB, split in {train, val, test}
    {split}_labels.npy      (N,) int16 class index = line of wnids.txt (train, val)
    {split}_boxes.npy       (N, 4) int16 x0, y0, x1, y1, inclusive (train, val)
    {split}_files.txt       the source file of each row, relative to the dataset folder
    mean_image.npy          (64, 64, 3) float32 mean training image, 0-255 scale

Opening a cache maps the image arrays (``np.load(mmap_mode="r")``): nothing is read until used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from tinycnn.errors import CacheError

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split of a cache. ``images`` is a read-only memory map: index it, don't copy it."""

    name: str
    images: np.ndarray  # (N, 64, 64, 3) uint8, memory-mapped
    labels: np.ndarray | None  # (N,) int16, None for the unlabelled test split
    boxes: np.ndarray | None  # (N, 4) int16
    files: list[str]

    def __len__(self) -> int:
        return len(self.images)


class Cache:
    """A prepared cache folder; see the module docstring for what it holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.classes: list[str] = self.manifest["classes"]
        self.names: list[str] = self.manifest["names"]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.manifest["splits"]]

    def split(self, name: str) -> SplitData:
        """Open one split; its images are memory-mapped, the small arrays are read."""
        if name not in self.manifest["splits"]:
            raise CacheError(f"{self.path}: no split {name!r} (has {', '.join(self.splits)})")
        labels_path = self.path / f"{name}_labels.npy"
        boxes_path = self.path / f"{name}_boxes.npy"
        files_text = (self.path / f"{name}_files.txt").read_text(encoding="utf-8")
        return SplitData(
            name=name,
            images=np.load(self.path / f"{name}_images.npy", mmap_mode="r"),
            labels=np.load(labels_path) if labels_path.exists() else None,
            boxes=np.load(boxes_path) if boxes_path.exists() else None,
            files=files_text.splitlines(),
        )

    @cached_property
    def mean_image(self) -> np.ndarray:
        """(64, 64, 3) float32 mean training image, 0-255 scale (the paper's preprocessing)."""
        return np.load(self.path / "mean_image.npy")

    @property
    def channel_mean(self) -> list[float]:
        return self.manifest["stats"]["channel_mean"]

    @property
    def channel_std(self) -> list[float]:
        return self.manifest["stats"]["channel_std"]


def load_cache(path: str | Path) -> Cache:
    """Open a prepared cache folder (memory-mapped); CacheError if it is missing or incomplete."""
    return Cache(path)


def read_manifest(path: Path) -> dict:
    """The manifest of a complete cache, checked against the files beside it."""
    if path.is_file():
        raise CacheError(f"{path}: is a file, not a cache folder")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        hint = (
            "; an interrupted prepare leaves no manifest, run prepare again"
            if path.is_dir()
            else ""
        )
        raise CacheError(
            f"{manifest_path}: missing, so {path} is not a prepared cache "
            f"(make one with: tinycnn prepare SRC --out {path}){hint}"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{manifest_path}: not valid JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise CacheError(
            f"{manifest_path}: cache format {manifest.get('format')!r}, this tinycnn "
            f"reads format {FORMAT}; prepare the data again"
        )
    for name, size in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise CacheError(
                f"{file}: missing or of the wrong size; the cache is damaged, "
                "prepare the data again"
            )
    return manifest


def summarize(manifest: dict, path: str | Path = "") -> str:
    """A short human-readable summary of a manifest (what ``tinycnn info`` prints)."""
    source = manifest.get("source", {})
    classes = manifest["classes"]
    more = ", ..." if len(classes) > 3 else ""
    first = ", ".join(
        f"{w} {n.split(',')[0]}" for w, n in zip(classes[:3], manifest["names"][:3], strict=True)
    )
    lines = [
        f"cache    {path}  (format {manifest['format']}, {manifest.get('image_size', 64)}px, "
        f"prepared {manifest.get('created', '?')[:19]} in {manifest.get('seconds', 0):.1f} s)",
        f"source   {source.get('kind', '?')} {source.get('path', '?')}",
        f"classes  {len(classes)} in wnids.txt order ({first}{more})",
        f"{'split':<8} {'images':>8} {'grayscale':>10} {'cmyk':>5} {'resized':>8} {'skipped':>8}",
    ]
    for name in SPLITS:
        s = manifest["splits"].get(name)
        if s is not None:
            lines.append(
                f"{name:<8} {s['count']:>8} {s['grayscale']:>10} {s['cmyk']:>5} "
                f"{s['resized']:>8} {len(s['skipped']):>8}"
            )
    stats = manifest.get("stats", {})
    if stats:
        mean = " ".join(f"{v:.1f}" for v in stats["channel_mean"])
        std = " ".join(f"{v:.1f}" for v in stats["channel_std"])
        lines.append(f"train RGB mean {mean}, std {std} (0-255 scale)")
    for name in SPLITS:
        for skipped in manifest["splits"].get(name, {}).get("skipped", []):
            lines.append(f"skipped  {skipped['file']}: {skipped['reason']}")
    return "\n".join(lines)

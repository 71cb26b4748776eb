"""The prepared cache: per-split uint8 image arrays, labels, boxes and a manifest, memory-mapped.

Layout of a cache folder (format 1; S = image_size, 64 unless prepared with --size)::

    manifest.json           written last: a folder without it is not a cache
    {split}_images.npy      (N, S, S, 3) uint8 RGB, split in {train, val, test} (test optional)
    {split}_labels.npy      (N,) int16 class index = position in manifest["classes"]
    {split}_boxes.npy       (N, 4) int16 x0, y0, x1, y1 inclusive, in the cached S x S image's
                            pixels; -1 unknown (official layout)
    {split}_files.txt       the source file of each row, relative to the dataset folder
    mean_image.npy          (S, S, 3) float32 mean training image, 0-255 scale

Opening a cache maps the image arrays (``np.load(mmap_mode="r")``): no pixel is read until used.
Opening checks the manifest against its own digest (an edited class list or count is refused),
each file's size against the manifest (cheap) and the small files' sha256 (milliseconds);
``verify_cache`` checks each file's sha256, recorded by prepare, which catches same-size damage
(zeroed pixels, a rewritten header), and runs for a split's image array when its pixels are
first read (``SplitData.images``), once per split of an open Cache. An image array's checksum
is made of its rows' (checksums.py: the decode workers hash the rows they write, so prepare
never reads the arrays back); caches from before record the whole file's sha256 and are checked
that way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from tinycnn.data.checksums import ROWS_SHA256, checksum_files
from tinycnn.data.layout import official_wnids
from tinycnn.errors import CacheError

FORMAT = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")


@dataclass
class SplitData:
    """One split of a cache. ``images`` is a read-only memory map: index it, don't copy it.
    Its first read checks the array against its sha256 (``check``); the labels, boxes and file
    names were checked when the cache was opened."""

    name: str
    mapped: np.ndarray = field(repr=False)  # (N, 64, 64, 3) uint8, memory-mapped, as opened
    labels: np.ndarray | None  # (N,) int16, None for the unlabelled test split
    boxes: np.ndarray | None  # (N, 4) int16
    files: list[str]
    check: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def images(self) -> np.ndarray:
        self.check()  # CacheError for a damaged array; the cache remembers a sound one
        return self.mapped

    def __len__(self) -> int:
        return len(self.mapped)


class Cache:
    """A prepared cache folder; see the module docstring for what it holds."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.classes: list[str] = self.manifest["classes"]
        self.names: list[str] = self.manifest["names"]
        self.verified: set[str] = set()  # splits whose files matched their checksums

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The side of the square images (64 unless prepared with --size)."""
        return self.manifest.get("image_size", 64)

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if s in self.manifest["splits"]]

    @cached_property
    def content_id(self) -> str:
        """16 hex digits naming the data's content: same arrays and classes, same id.

        Derived from the manifest's checksums (not from when or from where the cache was made), so
        a rebuild that yields identical data keeps the id and one that changes any byte does not.
        """
        return _content_id(self.classes, _checksums(self.path, self.manifest))

    def has_content_id(self, content_id: str) -> bool:
        """Whether this cache's data is the one named ``content_id``: its own id, or, for a cache
        whose image arrays carry row digests (``rows-sha256:``), the id the same data had under
        whole-file checksums (caches prepared before them, and the checkpoints trained on those;
        computed only in that case, reading the arrays once: ~1 s per GB)."""
        if content_id == self.content_id:
            return True
        checksums = _checksums(self.path, self.manifest)
        rows = [name for name, value in checksums.items() if value.startswith(ROWS_SHA256)]
        if not rows:
            return False
        whole = checksum_files([self.path / name for name in rows])  # plain sha256
        return content_id == _content_id(self.classes, {**checksums, **whole})

    def split(self, name: str) -> SplitData:
        """Open one split; its images are memory-mapped, the small arrays are read.

        The split's image array is checked against its sha256 when its pixels are first read
        (``SplitData.images``; ``verify_cache``: ~1 s per GB, once per split of this Cache), so
        no command reads damaged pixels, and one that reads only labels reads no pixels.
        """
        if name not in self.manifest["splits"]:
            raise CacheError(f"{self.path}: no split {name!r} (has {', '.join(self.splits)})")
        labels_path = self.path / f"{name}_labels.npy"
        boxes_path = self.path / f"{name}_boxes.npy"
        files_text = (self.path / f"{name}_files.txt").read_text(encoding="utf-8")
        count = self.manifest["splits"][name]["count"]
        size = self.image_size
        return SplitData(
            name=name,
            mapped=self._load(f"{name}_images.npy", (count, size, size, 3), np.uint8, mmap=True),
            labels=self._load(labels_path.name, (count,), np.int16)
            if labels_path.exists()
            else None,
            boxes=self._load(boxes_path.name, (count, 4), np.int16)
            if boxes_path.exists()
            else None,
            files=files_text.splitlines(),
            check=partial(self.check_images, name),
        )

    def check_images(self, split: str) -> None:
        """CacheError when the split's files differ from their sha256; once per split."""
        if split not in self.verified and self.manifest.get("checksums"):
            verify_cache(self, splits=[split])  # a cache from before checksums opens unchecked

    @cached_property
    def mean_image(self) -> np.ndarray:
        """(64, 64, 3) float32 mean training image, 0-255 scale (the paper's preprocessing)."""
        size = self.image_size
        return self._load("mean_image.npy", (size, size, 3), np.float32)

    def _load(
        self, name: str, shape: tuple[int, ...], dtype: type, mmap: bool = False
    ) -> np.ndarray:
        """np.load with damage (a bad header, a wrong shape) reported as a CacheError."""
        path = self.path / name
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise CacheError(f"{path}: not a readable .npy array ({exc}); {self._fix}") from None
        if array.shape != shape or array.dtype != dtype:
            raise CacheError(
                f"{path}: {array.dtype} {array.shape}, the manifest says "
                f"{np.dtype(dtype)} {shape}; {self._fix}"
            )
        return array

    @property
    def _fix(self) -> str:
        return rebuild_hint(self.path, self.manifest)

    @property
    def channel_mean(self) -> list[float]:
        return self.manifest["stats"]["channel_mean"]

    @property
    def channel_std(self) -> list[float]:
        return self.manifest["stats"]["channel_std"]


def load_cache(path: str | Path) -> Cache:
    """Returns the Cache of a prepared folder (memory-mapped); CacheError if missing or damaged.

    Its small files (labels, boxes, file lists, the mean image: a few MB) are checked against
    their sha256 every time (milliseconds), so no command scores or trains on damaged labels;
    an image array is checked when its pixels are first read (``SplitData.images``).
    """
    cache = Cache(path)
    if cache.manifest.get("checksums"):  # a cache from before checksums opens unchecked
        verify_cache(cache, splits=())
    return cache


def verify_cache(cache_or_path: Cache | str | Path, splits: Iterable[str] | None = None) -> None:
    """Check every file's sha256 against the manifest; CacheError naming each damaged file.

    Args:
        cache_or_path: an open Cache or a cache folder.
        splits: check only these splits' files (plus mean_image.npy and the other small files);
            None checks everything. Reads every checked byte: about 1 s per GB here.
    """
    cache = cache_or_path if isinstance(cache_or_path, Cache) else Cache(cache_or_path)
    checksums = _checksums(cache.path, cache.manifest)
    names = sorted(checksums)
    if splits is not None:
        wanted = set(splits)
        unknown = wanted - set(cache.manifest["splits"])
        if unknown:
            raise CacheError(
                f"{cache.path}: no split {sorted(unknown)[0]!r} (has {', '.join(cache.splits)})"
            )
        names = [n for n in names if not n.endswith("_images.npy") or n.split("_")[0] in wanted]
    digests = checksum_files([cache.path / n for n in names], checksums)
    damaged = sorted(n for n in names if digests[n] != checksums[n])
    if damaged:
        listed = ", ".join(str(cache.path / n) for n in damaged[:3])
        more = f" and {len(damaged) - 3} more" if len(damaged) > 3 else ""
        raise CacheError(
            f"{listed}{more}: content differs from the sha256 recorded when the cache was "
            f"prepared (the file is damaged); {rebuild_hint(cache.path, cache.manifest)}"
        )
    cache.verified.update(cache.splits if splits is None else wanted)


def _content_id(classes: list[str], checksums: dict[str, str]) -> str:
    identity = {"classes": classes, "checksums": checksums}
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def rebuild_hint(path: Path, manifest: dict) -> str:
    """What to run to rebuild a cache: its own source when the manifest names it."""
    src = manifest.get("source", {}).get("path", "SRC")
    return f"rebuild it with: tinycnn prepare {src} --out {path} --force"


def _checksums(path: Path, manifest: dict) -> dict[str, str]:
    checksums = manifest.get("checksums")
    if not checksums:
        raise CacheError(
            f"{path / MANIFEST}: this cache has no checksums (prepared by an older tinycnn), so "
            f"its content cannot be verified; {rebuild_hint(path, manifest)}"
        )
    return checksums


def read_manifest(path: Path) -> dict:
    """The manifest of a complete cache, checked against the files beside it."""
    if path.is_file():
        raise CacheError(f"{path}: is a file, not a cache folder")
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        if path.is_dir() and any(path.iterdir()):
            # A folder of something else (images, a dataset): never suggest writing a cache here.
            how = "make one in a new folder with: tinycnn prepare SRC --out CACHE_DIR"
        elif path.is_dir():
            how = f"an interrupted prepare leaves it empty; run tinycnn prepare SRC --out {path}"
        else:
            how = f"make one with: tinycnn prepare SRC --out {path}"
        raise CacheError(f"{manifest_path}: missing, so {path} is not a prepared cache ({how})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(
            f"{manifest_path}: not valid JSON ({exc}); the cache is damaged, prepare it again"
        ) from None
    if not isinstance(manifest, dict):
        raise CacheError(f"{manifest_path}: not a tinycnn manifest; prepare the data again")
    if manifest.get("format") != FORMAT:
        raise CacheError(
            f"{manifest_path}: cache format {manifest.get('format')!r}, this tinycnn "
            f"reads format {FORMAT}; prepare the data again"
        )
    digest = manifest.get("digest")
    if digest != manifest_digest(manifest):
        why = (
            "has no digest of its own content (prepared by an older tinycnn)"
            if digest is None
            else "was edited after prepare: its classes, counts or statistics no longer match "
            "the digest recorded then (a model trained on it could report the wrong classes)"
        )
        raise CacheError(f"{manifest_path}: {why}; {rebuild_hint(path, manifest)}")
    for name, size in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file() or file.stat().st_size != size:
            raise CacheError(
                f"{file}: missing or of the wrong size; the cache is damaged, "
                f"{rebuild_hint(path, manifest)}"
            )
    return manifest


def manifest_digest(manifest: dict) -> str:
    """Hex sha256 of everything a manifest says (classes, names, counts, statistics, file
    sizes and checksums...) but its own ``digest``: the checksums cover the arrays, this covers
    what they mean."""
    content = {k: v for k, v in manifest.items() if k != "digest"}
    blob = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def summarize(manifest: dict, path: str | Path = "") -> str:
    """A short human-readable summary of a manifest (what ``tinycnn info`` prints)."""
    source = manifest.get("source", {})
    classes = manifest["classes"]
    dataset = manifest.get("dataset", {"layout": "official", "classes_from": "wnids.txt"})
    more = ", ..." if len(classes) > 3 else ""
    first = ", ".join(
        f"{w} {n.split(',')[0]}" if n != w else w
        for w, n in zip(classes[:3], manifest["names"][:3], strict=True)
    )
    lines = [
        f"cache    {path}  (format {manifest['format']}, {manifest.get('image_size', 64)}px, "
        f"prepared {manifest.get('created', '?')[:19]} in {manifest.get('seconds', 0):.1f} s)",
        f"source   {source.get('kind', '?')} {source.get('path', '?')} "
        f"({'Tiny ImageNet layout' if dataset['layout'] == 'official' else 'class-per-folder'})",
        f"classes  {len(classes)} in {dataset.get('classes_from', 'wnids.txt')} order "
        f"({first}{more})",
        f"dataset  {standard_difference(manifest) or 'the standard 200-class Tiny ImageNet'}",
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
    lines += _dataset_notes(dataset)
    for name in SPLITS:
        for skipped in manifest["splits"].get(name, {}).get("skipped", []):
            lines.append(f"skipped  {skipped['file']}: {skipped['reason']}")
    return "\n".join(lines)


def standard_difference(manifest: dict) -> str:
    """ "" for a cache of the standard 200-class Tiny ImageNet, else how it differs, in words."""
    official = official_wnids()
    classes = manifest["classes"]
    extra = [c for c in classes if c not in set(official)]
    missing = [c for c in official if c not in set(classes)]
    reasons = []
    if extra or missing:
        listed = ", ".join(extra[:3]) + (", ..." if len(extra) > 3 else "")
        reasons.append(
            f"{len(classes)} classes"
            + (f", {len(extra)} not in Tiny ImageNet ({listed})" if extra else "")
            + (f", {len(missing)} of its 200 missing" if missing else "")
        )
    elif classes != official:
        reasons.append("its 200 classes in another order (class indices differ from wnids.txt)")
    if manifest.get("image_size", 64) != 64:
        reasons.append(f"{manifest['image_size']}px images, not 64px")
    counts = {"train": 100_000, "val": 10_000, "test": 10_000}
    for name, expected in counts.items():
        got = manifest["splits"].get(name, {}).get("count", 0)
        if not reasons and got != expected:
            reasons.append(f"{name} has {got:,} images, not {expected:,}")
    if extra and not missing:  # a copy with classes appended (202 wnids): say the fix
        reasons.append(
            f"to keep only its 200 classes (dropping the {len(extra)} others), prepare again "
            "with --classes official"
        )
    return "NOT the standard 200-class Tiny ImageNet: " + "; ".join(reasons) if reasons else ""


def _dataset_notes(dataset: dict) -> list[str]:
    lines = []
    dropped = dataset.get("dropped_classes")
    if dropped:
        images = ", ".join(f"{n} {k}" for k, n in dataset.get("dropped_images", {}).items())
        shown = ", ".join(dropped[:5]) + (", ..." if len(dropped) > 5 else "")
        lines.append(f"dropped  {len(dropped)} classes by --classes ({shown}): {images} images")
    missing = dataset.get("missing_box_files")
    if missing:
        unknown = dataset.get("boxes_unknown", {}).get("train", 0)
        shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        lines.append(
            f"boxes    unknown (-1) for {unknown} train images: {len(missing)} box files "
            f"missing ({shown})"
        )
    return lines

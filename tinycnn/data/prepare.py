"""``tinycnn prepare``: decode every image once, in parallel, into a cache folder (see cache.py).

Safety: the cache is built in a hidden sibling folder and renamed into place only when complete,
so an interrupted or failed prepare never leaves a folder that looks like a cache. Speed: worker
processes decode and write rows at their final offsets; for a .tar.gz the parent streams the
archive once to list it and once to feed the workers.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tinycnn import __version__
from tinycnn.atomic import (
    output_error,
    remove_stale_builds,
    swap_in_folder,
    temporary_path,
    write_failure,
    write_json,
)
from tinycnn.cores import usable_cores
from tinycnn.data.cache import (
    FORMAT,
    MANIFEST,
    manifest_digest,
    read_manifest,
    verify_cache,
)
from tinycnn.data.checksums import array_checksum_from_rows, checksum_files
from tinycnn.data.decode import IMAGE_SIZE, Chunk, ChunkResult, fit_boxes
from tinycnn.data.decode_pool import chunk_layout, decode_pool, run_chunks
from tinycnn.data.folders import is_folder_layout, read_folder_layout
from tinycnn.data.layout import Layout, SplitLayout, read_class_list
from tinycnn.data.sources import Source, open_source
from tinycnn.data.tiny_imagenet import read_layout
from tinycnn.errors import CacheError, DataError


@dataclass
class PrepareResult:
    path: Path
    manifest: dict
    rebuilt: bool  # False when the cache was already up to date
    seconds: float
    reason: str = ""  # why it was (re)built, e.g. "the source changed"; "" when up to date


def prepare(
    src: str | Path,
    out: str | Path,
    *,
    workers: int | None = None,
    resize: bool = False,
    skip_bad: bool = False,
    force: bool = False,
    progress: bool = True,
    size: int = IMAGE_SIZE,
    classes: str | Path | None = None,
) -> PrepareResult:
    """Build (or confirm up to date) the cache of a dataset; returns a PrepareResult (.path, ...).

    Args:
        src: a Tiny ImageNet folder (holding wnids.txt) or archive, or a class-per-folder
            dataset (train/CLASS/*.jpg, val/CLASS/*.jpg, optional test/).
        out: the cache folder to create or refresh.
        workers: decode processes (default: one per CPU core).
        resize: centre-crop and resize images that are not size x size instead of failing on
            them (always on for class-per-folder data).
        skip_bad: skip unreadable images (each is listed in the manifest) instead of failing.
        force: rebuild even if the cache is up to date.
        size: side of the cached square images, in pixels.
        classes: keep only the classes of this file (one id per line), or "official": the
            200 classes of Tiny ImageNet; the others are dropped and counted.
    """
    start = time.perf_counter()
    out = Path(out).expanduser()
    _check_args(out, size)
    class_list = None if classes is None else read_class_list(classes)
    source = open_source(src, skip=[out])  # a cache inside a dataset folder is not its data
    options = _options(resize, skip_bad, size, classes, class_list)
    fingerprint = source.fingerprint()
    current, reason = (None, "--force") if force else _current_manifest(out, fingerprint, options)
    if current is not None:
        return PrepareResult(out, current, False, time.perf_counter() - start)
    remove_stale_builds(out)
    tmp = temporary_path(out)
    try:
        tmp.mkdir(parents=True)
        # The pool starts before the source is read: forked workers then share none of the
        # parent's memory (a .tar.gz's kept bytes), and start while the layout is checked.
        with decode_pool(source, workers or usable_cores(), size) as pool:
            layout = read_dataset(source, class_list)
            if classes is not None:
                layout.notes["classes_from"] = f"--classes {classes}"
            resize_all = resize or layout.kind == "folders"
            manifest = _build(pool, source, layout, tmp, skip_bad, progress, size, resize_all)
        _write_manifest(tmp, manifest, fingerprint, options, start)
        swap_in_folder(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        # A full or read-only disk, met by a worker or here: one line; the old cache is intact.
        failure = write_failure(exc)
        if failure is not None:
            raise output_error(out, failure) from None
        raise
    return PrepareResult(out, manifest, True, time.perf_counter() - start, reason)


def _options(
    resize: bool,
    skip_bad: bool,
    size: int,
    classes: str | Path | None,
    class_list: list[str] | None,
) -> dict:
    """The options a cache records: one built with others is rebuilt (_current_manifest)."""
    options = {
        "resize": resize,
        "skip_bad": skip_bad,
        "image_size": size,
        "classes": None if class_list is None else str(classes),
        "class_list": None if class_list is None else _digest(class_list),
    }
    if resize or size != IMAGE_SIZE:  # older caches made so kept the original images' boxes
        options["boxes"] = "fitted"
    return options


def _write_manifest(
    tmp: Path, manifest: dict, fingerprint: dict, options: dict, start: float
) -> None:
    """Complete the manifest (provenance, file sizes, checksums, digest) and write it into tmp."""
    manifest.update(
        format=FORMAT,
        tinycnn_version=__version__,
        source=fingerprint,
        options=options,
        created=datetime.now(timezone.utc).isoformat(),
        seconds=round(time.perf_counter() - start, 3),
    )
    files = sorted(tmp.iterdir())
    manifest["files"] = {p.name: p.stat().st_size for p in files}
    # The image arrays' checksums come from the workers' row digests (_build); the small files
    # are read back here.
    arrays = manifest.pop("checksums")
    others = checksum_files([p for p in files if p.name not in arrays])
    manifest["checksums"] = dict(sorted({**others, **arrays}.items()))
    manifest["digest"] = manifest_digest(manifest)  # the manifest's own meaning, last
    write_json(tmp / MANIFEST, manifest)  # last: its presence marks completeness


def read_dataset(source: Source, classes: list[str] | None = None) -> Layout:
    """The layout of any supported dataset: official Tiny ImageNet (it has wnids.txt) or
    class-per-folder; ``classes`` keeps only those classes, in that order."""
    if is_folder_layout(source.names()):
        return read_folder_layout(source, classes)
    return read_layout(source, classes)


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def _check_args(out: Path, size: int) -> None:
    """Raise for an --out that cannot take a cache, or a --size too small to be an image."""
    if out.exists() and not out.is_dir():
        raise CacheError(f"{out}: exists and is a file; --out must be a folder for the cache")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise CacheError(
            f"{out}: a non-empty folder that is not a tinycnn cache; choose a new or empty folder"
        )
    if size < 8:
        raise DataError(f"--size {size}: images must be at least 8 pixels wide")


def _current_manifest(out: Path, fingerprint: dict, options: dict) -> tuple[dict | None, str]:
    """(the existing cache's manifest, "") if it is intact and was built from this source with
    these options; else (None, why it must be rebuilt)."""
    if not (out / MANIFEST).is_file():
        return None, "new cache"
    try:
        manifest = read_manifest(out)
    except CacheError as exc:
        return None, f"the old cache is unusable: {str(exc).split('; rebuild it with')[0]}"

    def identity(fp: dict) -> dict:
        return {k: v for k, v in fp.items() if k != "path"}  # a moved source is the same data

    if identity(manifest.get("source", {})) != identity(fingerprint):
        return None, "the source changed"
    # The class list by its digest: --classes cls.txt and ./cls.txt are one list.
    old_options, options = _without_path(manifest.get("options", {})), _without_path(options)
    if old_options != options:
        if {**old_options, "boxes": options.get("boxes")} == options:
            return None, "its boxes are in the original images' pixels (an older tinycnn)"
        return None, "other options"
    if not manifest.get("checksums"):
        return None, "the old cache has no checksums (prepared by an older tinycnn)"
    try:  # same source and options: trust the files only if their checksums still match
        verify_cache(out)
    except CacheError as exc:
        return None, f"the old cache is damaged: {str(exc).split('; rebuild it with')[0]}"
    return manifest, ""


def _without_path(options: dict) -> dict:
    return {k: v for k, v in options.items() if k != "classes"}


def _build(
    pool: ProcessPoolExecutor,
    source: Source,
    layout: Layout,
    tmp: Path,
    skip_bad: bool,
    progress: bool,
    size: int,
    resize: bool,
) -> dict:
    """Decode every split into tmp and write its other files; returns the manifest's content."""
    targets = {
        name: (str(tmp / f"{name}_images.npy"), _create_npy(tmp, name, len(split.files), size))
        for name, split in layout.splits.items()
    }
    totals = {name: ChunkResult(name) for name in layout.splits}
    images = sum(len(s.files) for s in layout.splits.values())
    chunks = chunk_layout(source, layout, targets, resize)
    fail_on_bad = functools.partial(_check_result, source, layout, skip_bad)
    _decode(pool, source, chunks, totals, fail_on_bad, progress, images)
    splits = {
        name: _finish_split(tmp, source, name, split, totals[name], size)
        for name, split in layout.splits.items()
    }
    stats = _write_stats(tmp, totals["train"], splits["train"]["count"], size)
    checksums = {
        f"{name}_images.npy": array_checksum_from_rows(
            tmp / f"{name}_images.npy",
            len(split.files),
            dict(totals[name].digests),
            {row for row, _ in totals[name].failures},
        )
        for name, split in layout.splits.items()
    }
    return {
        "checksums": checksums,
        "classes": layout.wnids,
        "names": layout.names,
        "image_size": size,
        "splits": splits,
        "stats": stats,
        "dataset": {"layout": layout.kind, **layout.notes},
    }


def _check_result(source: Source, layout: Layout, skip_bad: bool, result: ChunkResult) -> None:
    """Raise DataError for a chunk's wrong-size image, or its first unreadable one (unless
    skip_bad), naming the file."""
    if result.wrong_size is not None:
        row, why = result.wrong_size
        raise DataError(f"{source.display(layout.splits[result.split].files[row])}: {why}")
    if result.failures and not skip_bad:
        row, why = min(result.failures)
        raise DataError(
            f"{source.display(layout.splits[result.split].files[row])}: {why} (use "
            "--skip-bad to skip unreadable images; each is listed in the manifest)"
        )


def _decode(
    pool: ProcessPoolExecutor,
    source: Source,
    chunks: Iterator[Chunk],
    totals: dict[str, ChunkResult],
    fail_on_bad: Callable[[ChunkResult], None],
    progress: bool,
    images: int,
) -> None:
    """Decode the chunks on the pool under a progress bar, merging into totals."""
    with tqdm(total=images, unit="img", desc="prepare", disable=not progress) as bar:
        try:
            run_chunks(pool, chunks, totals, fail_on_bad, bar)
        except BrokenProcessPool:
            # Killed from outside: the kernel's out-of-memory killer, or a signal to the worker.
            raise CacheError(
                f"{source.path}: a decode worker process died (killed by a signal or for lack "
                "of memory), so nothing was prepared; run prepare again (with fewer --workers "
                "if memory is short)"
            ) from None


def _finish_split(
    tmp: Path, source: Source, name: str, split: SplitLayout, result: ChunkResult, size: int
) -> dict:
    """Write a decoded split's other files (its bad rows dropped); returns its manifest entry."""
    bad_rows = sorted(row for row, _ in result.failures)
    if split.boxes is not None:  # in the original images' pixels: onto the cached ones
        split.boxes = fit_boxes(split.boxes, result.original_sizes, size)
    _write_split(tmp, split, bad_rows)
    if split.files and len(split.files) == len(bad_rows):
        raise DataError(f"{source.display(name)}: every image of the {name} split is unreadable")
    return {
        "count": len(split.files) - len(bad_rows),
        "grayscale": len(result.grayscale),
        "cmyk": len(result.cmyk),
        "resized": len(result.resized),
        "labelled": split.labels is not None,
        "boxes": split.boxes is not None,
        "boxes_unknown": 0
        if split.boxes is None
        else int(np.sum(np.delete(split.boxes[:, 0], bad_rows) < 0)),
        "skipped": [
            {"file": split.files[row], "reason": why} for row, why in sorted(result.failures)
        ],
    }


def _create_npy(tmp: Path, split: str, count: int, size: int) -> int:
    """Create a sparse (N, size, size, 3) uint8 .npy; returns the byte offset of its first row."""
    array = np.lib.format.open_memmap(
        tmp / f"{split}_images.npy",
        mode="w+",
        dtype=np.uint8,
        shape=(count, size, size, 3),
    )
    offset = array.offset
    del array
    return offset


def _write_split(tmp: Path, split, bad_rows: list[int]) -> None:
    """Write labels, boxes and file list; drop skipped rows from the image array."""
    keep = np.setdiff1d(np.arange(len(split.files)), bad_rows)
    if bad_rows:
        _compact_images(tmp / f"{split.name}_images.npy", keep)
    if split.labels is not None:
        np.save(tmp / f"{split.name}_labels.npy", split.labels[keep])
    if split.boxes is not None:
        np.save(tmp / f"{split.name}_boxes.npy", split.boxes[keep])
    text = "".join(split.files[i] + "\n" for i in keep)
    (tmp / f"{split.name}_files.txt").write_text(text, encoding="utf-8")


def _compact_images(path: Path, keep: np.ndarray) -> None:
    # Rare path (only with --skip-bad): copy the good rows into a new array, in slices.
    source = np.load(path, mmap_mode="r")
    packed_path = path.with_name("packed-" + path.name)
    packed = np.lib.format.open_memmap(
        packed_path, mode="w+", dtype=np.uint8, shape=(len(keep), *source.shape[1:])
    )
    for lo in range(0, len(keep), 4096):
        packed[lo : lo + 4096] = source[keep[lo : lo + 4096]]
    packed.flush()
    del packed, source
    packed_path.replace(path)


def _write_stats(tmp: Path, train: ChunkResult, count: int, size: int) -> dict:
    """Mean image and per-channel mean/std of the training images (0-255 scale)."""
    if train.pixel_sum is None or count == 0:
        raise DataError("no training image could be decoded")
    mean_image = train.pixel_sum / count
    np.save(tmp / "mean_image.npy", mean_image.astype(np.float32))
    pixels = count * size * size
    channel_mean = train.pixel_sum.sum(axis=(0, 1)) / pixels
    channel_sq = train.pixel_sq_sum.sum(axis=(0, 1)) / pixels
    channel_std = np.sqrt(np.maximum(channel_sq - channel_mean**2, 0.0))
    return {
        "scale": "0-255",
        "channel_mean": [round(float(v), 4) for v in channel_mean],
        "channel_std": [round(float(v), 4) for v in channel_std],
    }

"""Predict classes for a cache's test split (a submission file) or for any image files.

Everything here works through a ``Predictor`` (inference.py): a callable from uint8 images
(N, 64, 64, 3) to class probabilities (N, C) that also carries its ``classes`` (wnids) and
``names``. One model with its test-time augmentation is one; an ensemble is another, with the
same attributes. The public functions also take checkpoints or run folders and build it.
"""

from __future__ import annotations

import json
import os
import posixpath
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from tinycnn.atomic import check_writable, write_text
from tinycnn.checkpoint import class_difference
from tinycnn.data.cache import load_cache
from tinycnn.data.decode import fit_square, to_rgb
from tinycnn.data.tiny_imagenet import natural_key
from tinycnn.ensembles import load_predictor
from tinycnn.errors import ConfigError, EmptyFileError, ImageTooLargeError
from tinycnn.inference import LoadedModel, Predictor, model_predictor, predict_batches

IMAGE_SIZE = 64
# What a folder contributes: suffixes Pillow can read (it also registers some it only writes,
# like .pdf); MPO pictures are read by the JPEG opener, so their format has none of its own.
IMAGE_SUFFIXES = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN or fmt == "MPO"
)
# Images with more pixels than this are refused before they are decoded (--max-pixels). Decoding
# costs about 3 bytes a pixel, and several times that while converting: 50 megapixels (an
# 8000x6000 48-megapixel phone photo fits) stays within a few hundred MB, where a 12000x12000 PNG
# of 17 KB, under Pillow's own bomb limit, would take over 1 GB. 0: no limit but Pillow's.
MAX_PIXELS = 50_000_000


Models = Predictor | LoadedModel | str | Path | list[str | Path]


def as_predictor(models: Models, tta: str = "center") -> Predictor:
    """A Predictor from one: a Predictor, a LoadedModel, or checkpoints / run folders / member
    specs (one, or a list whose members' probabilities are averaged)."""
    if isinstance(models, LoadedModel):
        return model_predictor(models, tta)
    if isinstance(models, str | Path):
        return load_predictor([str(models)], tta=tta)
    if isinstance(models, list | tuple):
        return load_predictor([str(m) for m in models], tta=tta)
    return models


def write_submission(
    models: Models,
    cache_dir: str | Path,
    out_file: str | Path,
    batch_size: int = 500,
    progress: bool = False,
) -> int:
    """Write ``test_K.JPEG<TAB>wnid`` for each test image of a cache; returns the line count.

    models: a Predictor, a LoadedModel, or checkpoint(s) / run folder(s) (see as_predictor).

    Lines follow the cache's order, which is natural file-name order (test_0, test_1, ...,
    test_9, test_10, ...). Test images that prepare skipped (--skip-bad) have no line. The file
    is written to a temporary sibling and renamed, so it is never seen half-written.
    """
    check_writable(out_file)  # a folder there: said before the test split is predicted
    predictor = as_predictor(models)
    cache = load_cache(cache_dir)
    check_classes(predictor.classes, cache.classes, f"the cache {cache.path}")
    test = cache.split("test")
    label = "predict test" if progress else None
    top1 = predict_batches(predictor, test.images, batch_size, label).argmax(dim=1).tolist()
    lines = [
        f"{name}\t{predictor.classes[k]}\n"
        for name, k in zip(submission_names(test.files), top1, strict=True)
    ]
    write_text(Path(out_file), "".join(lines))  # OutputError: disk full, read-only folder
    return len(lines)


def submission_names(files: list[str]) -> list[str]:
    """Each test file named from the folder that holds them all: test_K.JPEG for the official
    test/images/, day1/img_0.png for a test/ folder with subfolders (where base names alone
    could repeat: two lines for two images, one name)."""
    if not files:
        return []
    common = posixpath.commonpath([posixpath.dirname(f) for f in files])
    return [posixpath.relpath(f, common or ".") for f in files]


def check_classes(predictor_classes: list[str], data_classes: list[str], where: str) -> None:
    """ConfigError when the data's class list (wnids, in order) is not the predictor's."""
    difference = class_difference(predictor_classes, data_classes)
    if difference:
        raise ConfigError(
            f"{where}: its class list differs from the model's ({difference}); predict with "
            "models trained on data prepared from the same dataset"
        )


def load_images(
    paths: list[str | Path], max_pixels: int = MAX_PIXELS, side: int = IMAGE_SIZE
) -> tuple[list[Path], np.ndarray, list[tuple[Path, str]]]:
    """Read image files and folders as side x side RGB; returns (files, images, failures).

    paths: files (read whatever their suffix) and folders (searched recursively for files with a
    suffix Pillow knows, e.g. .jpg .png .gif .webp .bmp .tif; hidden files and folders and other
    suffixes are left out; a folder's images in natural name order). images: (N, side, side, 3)
    uint8, one per returned file (side: the model's image side, 64 for Tiny ImageNet's).
    failures: (path, reason) for each path that does not exist, folder without images, and file
    Pillow cannot read or that has more than max_pixels pixels (0: no limit); the other files
    are still read.
    """
    _check_max_pixels(max_pixels)
    files, arrays, failures, seen = [], [], [], set()
    for path in map(Path, paths):
        if path.is_dir():
            found = _folder_images(path, failures)
            if not found:
                failures.append((path, "folder holds no image files"))
        elif path.exists():
            found = [path]
        else:
            failures.append((path, "no such file or folder"))
            continue
        for file in found:
            key = file.resolve()
            if key in seen:  # a file named and also inside a named folder is predicted once
                continue
            seen.add(key)
            try:
                arrays.append(read_image(file, max_pixels, side))
                files.append(file)
            except Exception as exc:  # any one bad file is reported by name; the rest go on
                failures.append((file, _failure_reason(exc)))
    images = np.stack(arrays) if arrays else np.empty((0, side, side, 3), np.uint8)
    return files, images, failures


def _folder_images(folder: Path, failures: list[tuple[Path, str]]) -> list[Path]:
    """Image files under folder, recursively, natural order of their relative paths.

    failures: gets each subfolder that cannot be listed (os.walk would skip it silently).
    """

    def unlistable(exc: OSError) -> None:
        failures.append((Path(exc.filename or folder), f"cannot list folder ({exc.strerror})"))

    found = []
    visited = {os.path.realpath(folder)}
    # Symlinked subfolders are followed (as prepare follows linked class folders), each real
    # folder once: a link back up the tree would loop.
    for root, dirs, names in os.walk(folder, onerror=unlistable, followlinks=True):
        kept = []
        for d in dirs:
            real = os.path.realpath(os.path.join(root, d))
            if not d.startswith(".") and real not in visited:  # .git, .ipynb_checkpoints, ...
                visited.add(real)
                kept.append(d)
        dirs[:] = kept
        for name in names:
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(root, name))
    return sorted(found, key=lambda p: natural_key(p.relative_to(folder).as_posix()))


def read_image(path: Path, max_pixels: int = MAX_PIXELS, side: int = IMAGE_SIZE) -> np.ndarray:
    """(side, side, 3) uint8 RGB from any image Pillow reads (the first frame of an animation).

    ImageTooLargeError, before any decoding, when the header gives more than max_pixels pixels
    (0: no limit of tinycnn's; Pillow still refuses decompression bombs).

    The image is turned upright by its EXIF orientation, made RGB (transparency over white,
    16-bit grayscale scaled to 8 bits) and, when it is not side x side, cut to its centre square
    and resized to side x side (antialiased bicubic): what prepare does to such images
    (decode.fit_square), so a file predicted here and from a cache gets the same pixels.
    """
    if path.is_file() and path.stat().st_size == 0:
        raise EmptyFileError("empty file (0 bytes)")  # not the corrupt file Pillow would say
    with warnings.catch_warnings():
        # Pillow warns about images between its bomb limit and twice it; ours is stricter.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)  # reads the header only
    with image:
        width, height = image.size
        if max_pixels and width * height > max_pixels:
            raise ImageTooLargeError(
                f"image too large: {width}x{height} = {width * height:,} pixels, over the "
                f"limit of {max_pixels:,} (--max-pixels); it was not decoded"
            )
        image.load()  # decode now: a truncated file fails here, inside this file's report
        image = to_rgb(ImageOps.exif_transpose(image))
    return np.asarray(fit_square(image, side), dtype=np.uint8)


def _check_max_pixels(max_pixels: int) -> None:
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 0:
        raise ConfigError(
            f"--max-pixels {max_pixels!r}: expected a whole number of pixels >= 0 "
            f"(0: no limit; default {MAX_PIXELS})"
        )


def _failure_reason(exc: Exception) -> str:
    """One line on why a file could not be read."""
    if isinstance(exc, ImageTooLargeError | EmptyFileError):
        return str(exc)
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image Pillow can read (corrupt, or an unsupported format)"
    if isinstance(exc, Image.DecompressionBombError):
        return f"image too large to decode safely ({exc})"
    if isinstance(exc, PermissionError):
        return "permission denied"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "truncated" in text.lower():
        return f"truncated image ({text})"
    return f"unreadable image ({text})"


@dataclass
class PredictionReport:
    """Top classes per readable file, and why the other files were not predicted."""

    rows: list[dict] = field(default_factory=list)  # {"file", "top": [{"wnid", "name", ...}]}
    failures: list[dict] = field(default_factory=list)  # {"file", "reason"}


def predict_files(
    models: Models,
    paths: list[str | Path],
    top: int = 5,
    batch_size: int = 500,
    max_pixels: int = MAX_PIXELS,
) -> PredictionReport:
    """Returns a PredictionReport: the top classes of each image file or folder's images, and the
    files that could not be predicted (unreadable, too large) with the reason.

    models: a Predictor, a LoadedModel, or checkpoint(s) / run folder(s) (see as_predictor).
    top: classes kept per file, most probable first (at most the number of classes).
    max_pixels: larger images are failures, refused before decoding (0: no limit but Pillow's).
    """
    if top < 1:
        raise ConfigError(f"--top {top}: expected at least 1")
    predictor = as_predictor(models)
    # At the side the model was trained on (a Predictor of one's own: Tiny ImageNet's 64).
    side = getattr(predictor, "image_side", IMAGE_SIZE)
    files, images, failed = load_images(paths, max_pixels, side)
    probs = predict_batches(predictor, images, batch_size)
    values, indices = probs.topk(min(top, len(predictor.classes)), dim=1)
    rows = []
    for file, row_values, row_indices in zip(files, values.tolist(), indices.tolist(), strict=True):
        best = [
            {"wnid": predictor.classes[k], "name": predictor.names[k], "probability": p}
            for p, k in zip(row_values, row_indices, strict=True)
        ]
        rows.append({"file": str(file), "top": best})
    failures = [{"file": str(path), "reason": reason} for path, reason in failed]
    return PredictionReport(rows, failures)


def _class_label(top: dict) -> str:
    """The class as "name (wnid)", or its name alone where that is the id (class-per-folder)."""
    return top["name"] if top["name"] == top["wnid"] else f"{top['name']} ({top['wnid']})"


def format_report(report: PredictionReport) -> str:
    """A table for people: each file, then its top classes as "probability name (wnid)"
    ("probability name" where the name is the id, as with class-per-folder data)."""
    lines = []
    for row in report.rows:
        lines.append(row["file"])
        lines.extend(f"  {t['probability']:6.3f}  {_class_label(t)}" for t in row["top"])
    if report.failures:
        lines.append(f"not predicted ({len(report.failures)}):")
        lines.extend(f"  {f['file']}: {f['reason']}" for f in report.failures)
    lines.append(f"{len(report.rows)} predicted, {len(report.failures)} not predicted")
    return "\n".join(lines)


def report_json(report: PredictionReport) -> str:
    """The report as JSON: {"rows": [...], "failures": [...]}."""
    return json.dumps({"rows": report.rows, "failures": report.failures}, indent=1)


def exit_code(report: PredictionReport) -> int:
    """0: every file predicted; 2: some predicted, some not; 1: none predicted."""
    if not report.rows:
        return 1
    return 2 if report.failures else 0

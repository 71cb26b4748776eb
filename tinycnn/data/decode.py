"""Decode worker: JPEG bytes -> uint8 RGB rows written straight into the cache's .npy files.

Workers write with ``os.pwrite`` at each image's final offset instead of returning pixels to the
parent: nothing crosses a pipe but file names, small sums and each row's sha256 (taken as it is
written: prepare never reads the arrays back to checksum them), and no process holds the 1.2 GB
train array in memory (page-cache pages are not part of any process's RSS).

JPEGs of the expected size go through simplejpeg (libjpeg-turbo with no Python-level marker
parsing): 3.5x Pillow's rate on 64x64 images here, with byte-identical pixels (same library, same
DCT and upsampling settings; checked on the real data). Anything else goes through Pillow.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import os
import re
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tinycnn.data.sources import Source

try:
    import simplejpeg
except ImportError:  # optional accelerator: Pillow decodes everything without it
    simplejpeg = None

IMAGE_SIZE = 64
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")  # a Python object's repr


@dataclass
class Chunk:
    """Work for one task: images of one split with their row index in that split's array."""

    split: str
    target: str  # the split's .npy file
    offset: int  # byte offset of its first row
    rows: list[int]
    files: list[str]
    data: list[bytes] | None = None  # filled by the parent for streaming sources (tar.gz)
    resize: bool = False  # centre-crop and resize images of another size (else: an error)


@dataclass
class ChunkResult:
    split: str
    done: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (row, what went wrong)
    grayscale: list[int] = field(default_factory=list)
    cmyk: list[int] = field(default_factory=list)
    resized: list[int] = field(default_factory=list)
    # (row, width, height) of each image decoded at another size: its boxes are fitted to it
    original_sizes: list[tuple[int, int, int]] = field(default_factory=list)
    wrong_size: tuple[int, str] | None = None  # (row, message) of an image to be --resize'd
    pixel_sum: np.ndarray | None = None  # (64, 64, 3) uint64: sum over the chunk's images
    pixel_sq_sum: np.ndarray | None = None  # (64, 64, 3) uint64: sum of squared values
    # (row, sha256 of the row's bytes as written): the array's checksum (cache.rows_checksum)
    digests: list[tuple[int, bytes]] = field(default_factory=list)


class _Worker:
    """Per-process state: the source (reopened in the worker) and open output files."""

    def __init__(self, source: Source, stats_split: str, size: int) -> None:
        self.source = source
        self.fds: dict[str, int] = {}
        self.stats_split = stats_split
        self.size = size

    def _fd(self, target: str) -> int:
        if target not in self.fds:
            self.fds[target] = os.open(target, os.O_WRONLY)
        return self.fds[target]

    def run(self, chunk: Chunk) -> ChunkResult:
        result = ChunkResult(chunk.split)
        size = self.size
        row_bytes = size * size * 3
        stats = chunk.split == self.stats_split
        batch = np.empty((len(chunk.rows), size, size, 3), np.uint8)
        good = []
        for k, (row, rel) in enumerate(zip(chunk.rows, chunk.files, strict=True)):
            try:
                raw = chunk.data[k] if chunk.data is not None else self.source.read(rel)
                if not _decode_fast(raw, batch[k], row, result, size):
                    batch[k] = np.asarray(self._decode(raw, row, result, chunk.resize))
            except WrongSizeError as exc:
                # Readable, so not a --skip-bad matter: the whole prepare stops on the first one.
                result.wrong_size = (row, str(exc))
                break
            except Exception as exc:  # any decode failure is reported with the file's name
                result.failures.append((row, _reason(exc)))
                continue
            _write_all(self._fd(chunk.target), batch[k], chunk.offset + row * row_bytes)
            result.digests.append((row, hashlib.sha256(batch[k]).digest()))
            good.append(k)
        result.done = len(good)
        if stats and good:
            # Exact integer sums; uint32 holds 65,535 images of 255^2 per pixel, chunks are smaller.
            kept = batch[good] if len(good) < len(batch) else batch
            result.pixel_sum = kept.sum(axis=0, dtype=np.uint32).astype(np.uint64)
            result.pixel_sq_sum = (
                np.square(kept, dtype=np.uint16).sum(axis=0, dtype=np.uint32).astype(np.uint64)
            )
        return result

    def _decode(self, raw: bytes, row: int, result: ChunkResult, resize: bool) -> Image.Image:
        size = self.size
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            if image.size != (size, size):
                if not resize:  # checked before decoding: the first one stops prepare
                    raise WrongSizeError(
                        f"image is {image.size[0]}x{image.size[1]}, not {size}x{size} (pass "
                        f"--resize to centre-crop and resize such images to {size}x{size})"
                    )
                # JPEG: decode at 1/2, 1/4 or 1/8 scale when that still covers size x size.
                result.original_sizes.append((row, *image.size))
                image.draft(image.mode, (size, size))
                result.resized.append(row)
            image.load()  # decode now: a truncated file fails here, not later
            image = ImageOps.exif_transpose(image)  # camera photos stored on their side
        if image.mode != "RGB":
            if image.mode in ("L", "LA", "1", "I", "I;16", "F"):
                result.grayscale.append(row)
            elif image.mode == "CMYK":
                result.cmyk.append(row)
            image = to_rgb(image)
        return fit_square(image, size)


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """image as size x size: its centre square, resized (antialiased bicubic); as it is when
    already that size. What prepare does to images of another size, and predict likewise."""
    if image.size == (size, size):
        return image
    return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)


def _write_all(fd: int, row: np.ndarray, offset: int) -> None:
    """pwrite all of a row at offset: a short write (a full disk, a signal) is continued, and
    one that writes nothing is an error, never a silently short row."""
    view = memoryview(row).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError(f"pwrite wrote {written} of {len(view)} bytes")
        view, offset = view[written:], offset + written


def _decode_fast(raw: bytes, out: np.ndarray, row: int, result: ChunkResult, size: int) -> bool:
    """Decode a size x size colour or grayscale JPEG into ``out``; False: use Pillow instead."""
    if simplejpeg is None or raw[:2] != b"\xff\xd8":
        return False
    height, width, colorspace, _ = simplejpeg.decode_jpeg_header(raw)
    if (height, width) != (size, size) or colorspace not in ("YCbCr", "RGB", "Gray"):
        return False  # CMYK/YCCK and odd sizes take Pillow's path (conversion, resize, errors)
    # strict: a truncated file is an error, as in Pillow, not grey filler.
    simplejpeg.decode_jpeg(raw, colorspace="RGB", buffer=out, strict=True)
    if colorspace == "Gray":
        result.grayscale.append(row)
    return True


def fit_boxes(
    boxes: np.ndarray, original_sizes: list[tuple[int, int, int]], size: int
) -> np.ndarray:
    """Boxes moved onto the cached images: (N, 4) int16 x0, y0, x1, y1 inclusive, -1 unknown.

    boxes: in each original image's pixels. original_sizes: (row, width, height) of the rows
    decoded at another size; they were cropped to their centre square and resized to size x
    size (``_decode``), and their boxes go the same way: each new box covers every cached pixel
    the original box overlaps. A box wholly outside the kept square becomes unknown (-1). The
    other rows' images were size x size already: their boxes stay. (Pillow may decode a large
    JPEG at 1/2, 1/4 or 1/8 scale first, which can move an edge by a pixel.)
    """
    out = boxes.copy()
    known = [(row, width, height) for row, width, height in original_sizes if boxes[row, 0] >= 0]
    if not known:
        return out
    rows, widths, heights = (np.array(v, np.int64) for v in zip(*known, strict=True))
    side = np.minimum(widths, heights).astype(np.float64)
    scale = size / side
    left, top = (widths - side) / 2, (heights - side) / 2  # as ImageOps.fit centres the crop
    x0, y0, x1, y1 = (boxes[rows, k].astype(np.float64) for k in range(4))
    eps = 1e-9  # k / side * size in floating point: keep an exact edge where it is
    new = np.stack(
        [
            np.floor((x0 - left) * scale + eps),
            np.floor((y0 - top) * scale + eps),
            np.ceil((x1 + 1 - left) * scale - eps) - 1,  # pixel x1 ends at x1 + 1
            np.ceil((y1 + 1 - top) * scale - eps) - 1,
        ],
        axis=1,
    )
    outside = (new[:, 2] < 0) | (new[:, 3] < 0) | (new[:, 0] >= size) | (new[:, 1] >= size)
    new = np.clip(new, 0, size - 1)
    new[outside] = -1
    out[rows] = new.astype(out.dtype)
    return out


class WrongSizeError(Exception):
    """A readable image of another size while resizing is off (not a --skip-bad matter)."""


def _reason(exc: Exception) -> str:
    """What went wrong with one image, in words: truncated, corrupt, or the size message."""
    if isinstance(exc, UnidentifiedImageError):  # its text holds the BytesIO's repr only
        return "corrupt or unreadable image (Pillow cannot identify its format)"
    # No "<_io.BytesIO object at 0x7fcb...>": an address says nothing, and varies run to run.
    text = _OBJECT_REPR.sub("the image", str(exc)) or type(exc).__name__
    lowered = text.lower()
    if "truncated" in lowered or "premature end" in lowered:  # Pillow's / libjpeg's wording
        return f"truncated image ({text})"
    return f"corrupt or unreadable image ({text})"


_WORKER: _Worker | None = None
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def init_worker(source: Source, stats_split: str, size: int = IMAGE_SIZE, parent: int = 0) -> None:
    """Process-pool initializer: one _Worker per process, bound to live no longer than parent."""
    global _WORKER
    # The parent handles Ctrl-C (it shuts the pool down); SIGTERM kills a worker at once rather
    # than raising the parent's KeyboardInterrupt handler, inherited through fork, mid-task.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # born with them blocked (decode_pool): a SIGTERM
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # sent meanwhile kills now
    if parent:
        _die_with_parent(parent)
    _WORKER = _Worker(source, stats_split, size)


def _die_with_parent(parent: int) -> None:
    """Exit when the parent process dies, even by kill -9 (which runs none of its cleanup).

    Without this an orphaned worker waits forever on its task queue: it holds the queue's
    write end itself, so it never sees end-of-file.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
                if os.getppid() != parent:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass  # no prctl: fall back to watching

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="tinycnn-parent-watch", daemon=True).start()


def run_chunk(chunk: Chunk) -> ChunkResult:
    """Process-pool task."""
    assert _WORKER is not None, "init_worker was not called"
    return _WORKER.run(chunk)


_WHITE = (255, 255, 255, 255)


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any mode, as prepare and predict read images; the plain convert() would
    saturate 16-bit samples and blacken transparent pixels."""
    if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255):
        # 16-bit samples (PNG, TIFF): keep the high byte instead of clipping everything to 255.
        wide = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent pixels carry arbitrary colours; show them as a viewer would, on white.
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")

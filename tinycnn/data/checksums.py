"""Checksums of a cache's files: sha256 of the small ones, and of each image array's rows.

An image array's checksum is ``rows-sha256:`` and the sha256 of its .npy header followed by each
row's own sha256 (``rows_checksum``): the decode workers hash the rows they write, so prepare never
reads the arrays back; ``array_rows_checksum`` computes the same from the file. Caches from before
record the whole file's sha256 (plain hex) and are checked that way (``file_checksum``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tinycnn.errors import CacheError

ROWS_SHA256 = "rows-sha256:"  # marks an image array's checksum made of its rows' (rows_checksum)


def checksum_files(paths: list[Path], recorded: dict[str, str] | None = None) -> dict[str, str]:
    """{file name: checksum} of the given files, two at a time (largest first): each in the
    scheme of its ``recorded`` checksum (plain sha256 where none is given)."""
    paths = sorted(paths, key=lambda p: -p.stat().st_size)
    schemes = recorded or {}

    def checksum(path: Path) -> str:
        return file_checksum(path, schemes.get(path.name, ""))

    with ThreadPoolExecutor(2) as pool:  # hashlib releases the GIL while hashing
        return dict(zip([p.name for p in paths], pool.map(checksum, paths), strict=True))


def rows_checksum(header: bytes, row_digests: Iterable[bytes]) -> str:
    """An image array's checksum: sha256 over its .npy header, then each row's sha256 digest
    (32 bytes) in row order, marked ``rows-sha256:``."""
    outer = hashlib.sha256(header)
    for digest in row_digests:
        outer.update(digest)
    return ROWS_SHA256 + outer.hexdigest()


def array_checksum_from_rows(
    path: Path, rows: int, digests: dict[int, bytes], skipped: set[int]
) -> str:
    """The checksum of a prepared image array (its skipped rows dropped) from the digests the
    workers took of its rows as they wrote them (row -> sha256), and its header as on disk."""
    if len(digests) + len(skipped) != rows:  # every row is either written and hashed, or skipped
        raise CacheError(
            f"{path}: {rows - len(digests) - len(skipped)} rows neither written nor skipped"
        )
    array = np.load(path, mmap_mode="r")
    header_size = array.offset
    del array
    with open(path, "rb") as f:
        header = f.read(header_size)
    return rows_checksum(header, (digests[row] for row in range(rows) if row not in skipped))


def array_rows_checksum(path: Path) -> str:
    """``rows_checksum`` of an image .npy as it is on disk (a file that is not one, or ends
    inside a row, gets a checksum no array has)."""
    try:
        array = np.load(path, mmap_mode="r")
        header_size, row_size = array.offset, int(np.prod(array.shape[1:])) * array.itemsize
        rows = len(array)
        del array
    except (ValueError, OSError, EOFError):
        return ROWS_SHA256 + "unreadable"
    rows_per_block = max(1, (1 << 22) // max(row_size, 1))
    block = bytearray(rows_per_block * row_size)
    view = memoryview(block)
    digests = []
    with open(path, "rb", buffering=0) as f:
        header = f.read(header_size)
        while n := _read_full(f, view):
            digests.extend(
                hashlib.sha256(view[lo : lo + row_size]).digest()
                for lo in range(0, n - n % row_size, row_size)
            )
            if n % row_size:  # ends inside a row
                return ROWS_SHA256 + "truncated"
    if len(digests) != rows:
        return ROWS_SHA256 + "truncated"
    return rows_checksum(header, digests)


def _read_full(f, view: memoryview) -> int:
    """Fill view from f (a raw file may return fewer bytes than asked: a signal, a network
    file system); the bytes read, fewer only at the end of the file."""
    filled = 0
    while filled < len(view) and (n := f.readinto(view[filled:])):
        filled += n
    return filled


def file_checksum(path: Path, recorded: str) -> str:
    """The checksum of a file in the scheme of the one recorded for it."""
    return array_rows_checksum(path) if recorded.startswith(ROWS_SHA256) else file_sha256(path)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 4 MiB blocks (no whole-file copy in memory)."""
    digest = hashlib.sha256()
    block = bytearray(1 << 22)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()

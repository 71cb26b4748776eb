"""Resumable, verified download of the Tiny ImageNet zip (or any file) with urllib only.

The file grows in ``dest + ".part"``; an interrupted transfer resumes from the part's size with an
HTTP Range request, within one call (``retries``) or in a later call. Only a part that passes the
size and checksum checks is renamed to ``dest``, so ``dest`` is always either absent or verified.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from tinycnn.errors import DownloadError

OFFICIAL_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
OFFICIAL_SIZE = 248_100_043  # bytes
OFFICIAL_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"  # widely published; the site publishes no sha256

CHUNK_BYTES = 1 << 20  # 1 MiB: few syscalls, small memory, frequent progress updates

# Failures worth another attempt: the connection broke, stalled or could not be opened.
# HTTPError (a URLError) is excluded where caught: a 404 will not heal on retry.
_TRANSIENT = (http.client.IncompleteRead, ConnectionError, TimeoutError, urllib.error.URLError)

_CONTENT_RANGE = re.compile(r"bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)")


@dataclass(frozen=True)
class Downloaded:
    """A verified file on disk.

    path: where it is. size: bytes. sha256: hex digest of the whole file.
    resumed_from: bytes already present (in dest or its .part) when the call started.
    """

    path: Path
    size: int
    sha256: str
    resumed_from: int


def archive_path(url: str, folder: str | Path) -> Path:
    """Where a download of ``url`` is kept unless told: in folder, named as the last part of the
    URL's path (no query string or fragment: ``data.zip?download=1`` is ``data.zip``)."""
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])
    return Path(folder) / (name or "download.zip")


def download(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    size: int | None = None,
    progress: bool = True,
    timeout: float = 60.0,
    retries: int = 3,
    backoff_s: float = 0.5,
) -> Downloaded:
    """Download ``url`` to ``dest`` (resuming a ``dest.part``), verify it; returns Downloaded.

    url: http(s):// or file:// URL. dest: final path; parent folders are created.
    sha256, md5: expected hex digests (md5 defaults to OFFICIAL_MD5 for OFFICIAL_URL).
    size: expected bytes (defaults to OFFICIAL_SIZE for OFFICIAL_URL, else the server's total).
    progress: tqdm bar on stderr. timeout: seconds per socket operation.
    retries: extra attempts after a dropped or stalled connection, each resuming the part.
    backoff_s: wait before attempt k is backoff_s * k seconds.
    """
    dest = Path(dest)
    if urllib.parse.urlsplit(url).scheme.lower() not in ("http", "https", "file"):
        raise DownloadError(f"{url}: expected an http://, https:// or file:// URL")
    if dest.is_dir():
        raise DownloadError(f"{dest}: is a folder; give the file to download into")
    part = dest.with_name(dest.name + ".part")
    if url == OFFICIAL_URL:
        size = OFFICIAL_SIZE if size is None else size
        md5 = OFFICIAL_MD5 if md5 is None else md5
    if dest.exists():
        # Never touch the network (or overwrite the user's file) when dest is already there.
        return _verify_existing(dest, size, sha256, md5)
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed_from = part.stat().st_size if part.exists() else 0
    with tqdm(
        total=size,
        initial=resumed_from,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=dest.name,
        file=sys.stderr,
        disable=not progress,
    ) as bar:
        server_total = _fetch_with_retries(url, part, size, timeout, retries, backoff_s, bar)
    expected_size = size if size is not None else server_total
    got_size, got_sha256 = _verify_part(part, expected_size, sha256, md5)
    os.replace(part, dest)
    return Downloaded(dest, got_size, got_sha256, resumed_from)


def _verify_existing(
    dest: Path, size: int | None, sha256: str | None, md5: str | None
) -> Downloaded:
    """Return an existing ``dest`` if it matches every known expectation; raise otherwise."""
    got_size, got_sha256, got_md5 = _digests(dest, want_md5=md5 is not None)
    checks = (("size", size, got_size), ("sha256", sha256, got_sha256), ("md5", md5, got_md5))
    for what, expected, got in checks:
        if expected is not None and str(expected).lower() != str(got).lower():
            raise DownloadError(
                f"{dest} already exists but its {what} is {got}, expected {expected}; "
                "move or delete it to download again"
            )
    return Downloaded(dest, got_size, got_sha256, got_size)


def _fetch_with_retries(
    url: str,
    part: Path,
    size: int | None,
    timeout: float,
    retries: int,
    backoff_s: float,
    bar: tqdm,
) -> int | None:
    """Fill ``part`` from ``url``, resuming after transient failures; return the server's total."""
    failure: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * attempt)
        try:
            return _fetch_once(url, part, size, timeout, bar)
        except _TRANSIENT as err:  # HTTP errors became DownloadError inside: not retried
            failure = err
            if url.lower().startswith("file:"):  # a local file missing or unreadable stays so
                reason = getattr(err, "reason", err)
                raise DownloadError(
                    f"{url}: cannot read it ({getattr(reason, 'strerror', None) or reason})"
                ) from None
    if part.exists():
        kept = f"{part.stat().st_size} bytes kept in {part}, call again to resume"
    else:  # e.g. offline: no connection, so no part file to point at
        kept = "nothing was downloaded; check the URL and the network, then call again"
    raise DownloadError(
        f"{url}: transfer failed after {retries + 1} attempt(s) ({failure!r}); {kept}"
    )


def _fetch_once(url: str, part: Path, size: int | None, timeout: float, bar: tqdm) -> int | None:
    """Append to ``part`` what the server sends from its current size on; return the total size.

    Raises a _TRANSIENT error when the connection ends before the promised body.
    """
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset >= size:
        return None  # nothing left to ask for; verification judges the part
    request = urllib.request.Request(url)
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # Range starts at (or past) the end: the part is complete, or too long; verify it.
            return _parse_content_range(err.headers.get("Content-Range"))[1]
        raise DownloadError(
            f"{url}: HTTP {err.code} {err.reason}; check the URL or try again later"
        ) from err
    with response:
        # file:// answers have no status; they always hold the whole file, like a 200.
        if response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range"))
            if start != offset:
                raise DownloadError(
                    f"{url}: asked for bytes from {offset} but the server sent them from {start}; "
                    f"delete {part} to start over"
                )
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # server ignored Range: start over, truncating the part
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        bar.reset(total=size if size is not None else total)
        bar.update(offset)
        _stream(response, part, mode, bar)
    return total


def _stream(response: http.client.HTTPResponse, part: Path, mode: str, bar: tqdm) -> None:
    """Copy the response body into ``part`` in CHUNK_BYTES pieces; raise if it ends short."""
    length = response.headers.get("Content-Length")
    expected = int(length) if length is not None else None
    received = 0
    with open(part, mode) as out:
        # read1 returns what has arrived (up to 1 MiB) instead of waiting to fill the chunk, so a
        # stall that ends in a timeout loses nothing already received.
        while chunk := response.read1(CHUNK_BYTES):
            out.write(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())  # what is in the part must survive a crash, or resume corrupts it
    # http.client's read1(n) returns b"" on an early close instead of raising; catch it here.
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """Parse 'bytes START-END/TOTAL' (or 'bytes */TOTAL') into (START, TOTAL); None if absent."""
    match = _CONTENT_RANGE.fullmatch(value.strip()) if value else None
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


def _verify_part(
    part: Path, size: int | None, sha256: str | None, md5: str | None
) -> tuple[int, str]:
    """Check the finished ``part``; return (size, sha256). Delete it if it is corrupt."""
    have = part.stat().st_size
    if size is not None and have < size:
        # Short but not wrong: keep it so that the next call resumes.
        raise DownloadError(
            f"{part} has {have} of {size} bytes after the server stopped sending; call again to "
            "resume, or check the expected size"
        )
    if size is not None and have > size:
        part.unlink()
        raise DownloadError(f"{part} has {have} bytes, expected {size}; deleted it, call again")
    _, got_sha256, got_md5 = _digests(part, want_md5=md5 is not None)
    for name, expected, got in (("sha256", sha256, got_sha256), ("md5", md5, got_md5)):
        if expected is not None and expected.lower() != got:
            part.unlink()  # a corrupt part must never be resumed
            raise DownloadError(
                f"{part}: {name} mismatch, expected {expected}, got {got}; deleted it, call again "
                "(or check the expected checksum)"
            )
    return have, got_sha256


def _digests(path: Path, *, want_md5: bool) -> tuple[int, str, str | None]:
    """Stream-hash ``path``; return (size, sha256 hex, md5 hex or None)."""
    sha = hashlib.sha256()
    md = hashlib.md5() if want_md5 else None
    size = 0
    with open(path, "rb") as src:
        while chunk := src.read(CHUNK_BYTES):
            sha.update(chunk)
            if md is not None:
                md.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), md.hexdigest() if md is not None else None

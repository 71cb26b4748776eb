"""Tests for tinycnn.data.fetch against a local HTTP server that misbehaves on demand."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tinycnn.data import fetch
from tinycnn.errors import DownloadError

PAYLOAD = random.Random(0).randbytes(3_000_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()
CUT = 1_000_000  # bytes sent before the server drops the first connection
FAST = {"progress": False, "timeout": 5.0, "backoff_s": 0.0}  # no sleeping between retries


@dataclass
class Served:
    """How the server behaves, and what it saw (one (Range header, body bytes sent) per GET)."""

    url: str = ""
    payload: bytes = PAYLOAD
    cut_first_after: int | None = None  # (a) close the first response early, after this many bytes
    ignore_range: bool = False  # (b) answer every request with 200 and the whole payload
    status: int | None = None  # (c) answer with this error status, e.g. 404
    corrupt: bool = False  # (d) flip one byte of the payload
    stall_s: float = 0.0  # with cut_first_after: hold the cut connection open this long first
    wrong_range_start: bool = False  # 206 from a byte other than the one asked for
    requests: list[tuple[str | None, int]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    served: Served  # set on a per-server subclass

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean

    def do_GET(self) -> None:
        served = self.served
        range_header = self.headers.get("Range")
        if served.status is not None:
            served.requests.append((range_header, 0))
            self.send_error(served.status)
            return
        body = bytearray(served.payload)
        if served.corrupt:
            body[len(body) // 2] ^= 0xFF
        start = 0
        if range_header and not served.ignore_range:
            start = int(range_header.removeprefix("bytes=").removesuffix("-"))
            if start >= len(body):
                served.requests.append((range_header, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            sent_from = start + 1 if served.wrong_range_start else start
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {sent_from}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = bytes(body[start:])
        self.send_header("Content-Length", str(len(chunk)))  # always the full length promised
        self.end_headers()
        if served.cut_first_after is not None and not served.requests:
            chunk = chunk[: served.cut_first_after]  # then the handler returns: socket closes
        served.requests.append((range_header, len(chunk)))
        # The client may drop a response it refuses (a wrong Content-Range): that is the test.
        with contextlib.suppress(ConnectionError):
            self.wfile.write(chunk)
            self.wfile.flush()
            if len(served.requests) == 1:
                time.sleep(served.stall_s)  # the client's socket timeout should fire first


@pytest.fixture
def served() -> Iterator[Served]:
    """A threaded HTTP server on 127.0.0.1 serving PAYLOAD; shut down after the test."""
    # A 10 ms poll interval lets shutdown() return at once instead of after the default 0.5 s.
    state = Served()
    handler = type("Handler", (_Handler,), {"served": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/tiny.zip"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _bytes_sent(served: Served) -> int:
    return sum(sent for _, sent in served.requests)


def test_plain_download_verifies(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "sub" / "tiny.zip"
    got = fetch.download(served.url, dest, sha256=SHA256, **FAST)
    assert got == fetch.Downloaded(dest, len(PAYLOAD), SHA256, 0)
    assert dest.read_bytes() == PAYLOAD
    assert not Path(f"{dest}.part").exists()
    assert served.requests == [(None, len(PAYLOAD))]


def test_progress_bar_goes_to_stderr(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fetch.download(served.url, tmp_path / "tiny.zip", timeout=5.0, progress=True)
    assert "tiny.zip" in capsys.readouterr().err


def test_interrupted_transfer_resumes_within_one_call(served: Served, tmp_path: Path) -> None:
    served.cut_first_after = CUT
    got = fetch.download(served.url, tmp_path / "tiny.zip", sha256=SHA256, retries=1, **FAST)
    assert got.sha256 == SHA256 and got.resumed_from == 0
    assert served.requests == [(None, CUT), (f"bytes={CUT}-", len(PAYLOAD) - CUT)]
    assert _bytes_sent(served) == len(PAYLOAD)


def test_stalled_transfer_times_out_and_resumes(served: Served, tmp_path: Path) -> None:
    served.cut_first_after, served.stall_s = CUT, 1.0
    options = {**FAST, "timeout": 0.2}
    got = fetch.download(served.url, tmp_path / "tiny.zip", sha256=SHA256, **options)
    assert got.sha256 == SHA256
    assert served.requests[1] == (f"bytes={CUT}-", len(PAYLOAD) - CUT)


def test_part_from_failed_call_is_resumed_by_next_call(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    part = Path(f"{dest}.part")
    served.cut_first_after = CUT
    with pytest.raises(DownloadError, match="call again to resume"):
        fetch.download(served.url, dest, sha256=SHA256, retries=0, **FAST)
    assert part.stat().st_size == CUT and not dest.exists()
    first_sent = _bytes_sent(served)

    got = fetch.download(served.url, dest, sha256=SHA256, retries=0, **FAST)
    second_sent = _bytes_sent(served) - first_sent
    assert got.resumed_from == CUT and got.sha256 == SHA256
    assert served.requests[-1] == (f"bytes={CUT}-", len(PAYLOAD) - CUT)
    assert second_sent < len(PAYLOAD)
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    Path(f"{dest}.part").write_bytes(b"stale bytes that must be truncated")
    served.ignore_range = True
    got = fetch.download(served.url, dest, sha256=SHA256, **FAST)
    assert got.sha256 == SHA256 and got.resumed_from == 34
    assert served.requests == [("bytes=34-", len(PAYLOAD))]


def test_complete_part_answered_416_is_verified(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    Path(f"{dest}.part").write_bytes(PAYLOAD)
    got = fetch.download(served.url, dest, sha256=SHA256, **FAST)
    assert got.size == len(PAYLOAD) and got.resumed_from == len(PAYLOAD)
    assert served.requests == [(f"bytes={len(PAYLOAD)}-", 0)]


def test_complete_part_of_known_size_needs_no_request(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    Path(f"{dest}.part").write_bytes(PAYLOAD)
    fetch.download(served.url, dest, size=len(PAYLOAD), md5=MD5, **FAST)
    assert served.requests == [] and dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    ("checks", "corrupt", "message"),
    [
        ({"sha256": "0" * 64}, False, "sha256 mismatch"),
        ({"sha256": SHA256}, True, "sha256 mismatch"),
        ({"md5": "0" * 32}, False, "md5 mismatch"),
        ({"md5": MD5}, True, "md5 mismatch"),
    ],
)
def test_checksum_mismatch_deletes_part(
    served: Served, tmp_path: Path, checks: dict[str, str], corrupt: bool, message: str
) -> None:
    dest = tmp_path / "tiny.zip"
    served.corrupt = corrupt
    with pytest.raises(DownloadError, match=message):
        fetch.download(served.url, dest, **checks, **FAST)
    assert not dest.exists() and not Path(f"{dest}.part").exists()


def test_md5_match_passes(served: Served, tmp_path: Path) -> None:
    got = fetch.download(served.url, tmp_path / "tiny.zip", md5=MD5.upper(), **FAST)
    assert got.sha256 == SHA256


def test_size_shortfall_keeps_part(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    with pytest.raises(DownloadError, match=f"{len(PAYLOAD)} of {len(PAYLOAD) + 10} bytes"):
        fetch.download(served.url, dest, size=len(PAYLOAD) + 10, **FAST)
    assert Path(f"{dest}.part").stat().st_size == len(PAYLOAD) and not dest.exists()


def test_http_404_names_url(served: Served, tmp_path: Path) -> None:
    served.status = 404
    with pytest.raises(DownloadError, match="404") as info:
        fetch.download(served.url, tmp_path / "tiny.zip", **FAST)
    assert served.url in str(info.value)
    assert len(served.requests) == 1  # an HTTP error is not retried


def test_wrong_content_range_start_is_refused(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    Path(f"{dest}.part").write_bytes(PAYLOAD[:CUT])
    served.wrong_range_start = True
    with pytest.raises(DownloadError, match=f"from {CUT} but the server sent them from {CUT + 1}"):
        fetch.download(served.url, dest, **FAST)


def test_connection_refused_fails_after_retries(tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="after 3 attempt") as info:
        fetch.download("http://127.0.0.1:9/x.zip", tmp_path / "x.zip", retries=2, **FAST)
    # Offline, no byte arrived and no .part was made: the message must not point at one.
    assert not (tmp_path / "x.zip.part").exists()
    assert ".part" not in str(info.value) and "nothing was downloaded" in str(info.value)


def test_existing_verified_dest_makes_no_request(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    dest.write_bytes(PAYLOAD)
    got = fetch.download(served.url, dest, sha256=SHA256, md5=MD5, size=len(PAYLOAD), **FAST)
    assert got == fetch.Downloaded(dest, len(PAYLOAD), SHA256, len(PAYLOAD))
    assert served.requests == []


def test_existing_wrong_dest_is_kept_and_reported(served: Served, tmp_path: Path) -> None:
    dest = tmp_path / "tiny.zip"
    dest.write_bytes(b"user data")
    with pytest.raises(DownloadError, match="already exists"):
        fetch.download(served.url, dest, sha256=SHA256, **FAST)
    assert dest.read_bytes() == b"user data" and served.requests == []


def test_official_url_defaults_to_published_size(tmp_path: Path) -> None:
    # dest exists, so the official size is checked without any network access.
    dest = tmp_path / "tiny-imagenet-200.zip"
    dest.write_bytes(b"too short")
    with pytest.raises(DownloadError, match=f"expected {fetch.OFFICIAL_SIZE}"):
        fetch.download(fetch.OFFICIAL_URL, dest, **FAST)


def test_file_url_works_offline(tmp_path: Path) -> None:
    source = tmp_path / "source.zip"
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "out" / "tiny.zip"
    Path(f"{dest}.part").parent.mkdir()
    Path(f"{dest}.part").write_bytes(b"junk")  # file:// ignores Range, so this must be replaced
    got = fetch.download(source.as_uri(), dest, sha256=SHA256, **FAST)
    assert got.size == len(PAYLOAD) and dest.read_bytes() == PAYLOAD


def test_a_file_url_that_cannot_be_read_fails_at_once(tmp_path: Path, monkeypatch) -> None:
    # A missing local file or a folder does not heal: it had been retried with waits.
    waits: list[float] = []
    monkeypatch.setattr(fetch.time, "sleep", waits.append)
    missing = tmp_path / "missing.zip"
    with pytest.raises(DownloadError, match=r"cannot read it \(No such file or directory\)$"):
        fetch.download(missing.as_uri(), tmp_path / "out" / "x.zip", retries=3, backoff_s=1.0)
    with pytest.raises(DownloadError, match="cannot read it"):
        fetch.download(tmp_path.as_uri(), tmp_path / "out" / "x.zip", retries=3, backoff_s=1.0)
    assert waits == []


def test_fetch_command_downloads_resumes_and_prepares(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tinycnn.cli import main
    from tinycnn.data.cache import load_cache
    from tinycnn.data.synthetic import make_synthetic

    archive = make_synthetic(
        tmp_path / "made",
        classes=3,
        train_per_class=5,
        val_per_class=2,
        test_count=3,
        archive="zip",
    )
    served.payload = archive.read_bytes()
    served.cut_first_after = len(served.payload) // 3  # the transfer breaks; fetch resumes
    sha256 = hashlib.sha256(served.payload).hexdigest()
    out = tmp_path / "data" / "cache"
    rc = main(["fetch", "--url", served.url, "--out", str(out), "--sha256", sha256, "-q"])
    assert rc == 0, capsys.readouterr().err
    assert served.requests[1][0] == f"bytes={len(served.payload) // 3}-"
    assert (tmp_path / "data" / "tiny.zip").read_bytes() == served.payload
    assert load_cache(out).manifest["splits"]["train"]["count"] == 15
    assert sha256 in capsys.readouterr().out
    # A wrong checksum is a clear error and leaves no cache.
    served.requests.clear()
    bad = tmp_path / "bad"
    rc = main(
        ["fetch", "--url", served.url, "--out", str(bad / "cache"), "--sha256", "0" * 64, "-q"]
    )
    assert rc == 1 and "sha256" in capsys.readouterr().err
    assert not (bad / "cache").exists() and not (bad / "tiny.zip").exists()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (fetch.OFFICIAL_URL, "/data/tiny-imagenet-200.zip"),
        ("https://example.org/a/b/set.tar.gz", "/data/set.tar.gz"),
        ("https://example.org/a/folder/", "/data/folder"),
        ("file:///tmp/x.zip", "/data/x.zip"),
        ("https://example.org/get/data.zip?download=1#top", "/data/data.zip"),  # not the query
        ("https://example.org/my%20data.zip", "/data/my data.zip"),
        ("", "/data/download.zip"),
    ],
)
def test_archive_path_is_beside_the_cache_named_as_the_url(url: str, expected: str) -> None:
    assert fetch.archive_path(url, "/data") == Path(expected)


@pytest.mark.parametrize(
    ("url", "dest", "message"),
    [
        ("{source}", "out/tiny.zip", "expected an http://, https:// or file:// URL"),  # no scheme
        ("ftp://example.org/x.zip", "out/tiny.zip", "expected an http://, https:// or file://"),
        ("{uri}", "out", "is a folder; give the file to download into"),
    ],
)
def test_a_url_without_a_scheme_or_a_folder_as_the_file_is_one_line(
    tmp_path: Path, capsys, url: str, dest: str, message: str
) -> None:
    from tinycnn.cli import main

    source = tmp_path / "source.zip"
    source.write_bytes(PAYLOAD)
    (tmp_path / "out").mkdir()
    url = url.format(source=source, uri=source.as_uri())
    argv = ["fetch", "--url", url, "--out", str(tmp_path / "cache"), "--archive"]
    assert main([*argv, str(tmp_path / dest), "-q"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinycnn: error: ") and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "source.zip"]

"""Benchmark ``tinycnn prepare``: wall time, images/s, peak memory, against the JPEG-decode limit.

Usage: python bench/prepare_throughput.py [ARCHIVE] [--workers N]
(default ARCHIVE: ../shared/data/tiny-imagenet-200.tar.gz). Prints figures; asserts nothing.

Peak memory is reported two ways: the largest single process (what ``/usr/bin/time -v`` calls
maximum resident set size) and the sum over the whole process tree, sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from tinycnn.cores import usable_cores

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/tiny-imagenet-200.tar.gz"


def _tree_rss_kib(root_pid: int) -> int:
    """Sum of VmRSS over a process and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        pid, ppid = int(entry), int(fields["PPid"])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0])
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


_BLOBS: list[bytes] = []  # the sample, inherited by the forked decoders of _parallel_rate


def _decode_share(share: tuple[int, int]) -> int:
    import simplejpeg

    start, step = share
    for blob in _BLOBS[start::step]:
        simplejpeg.decode_jpeg(blob, colorspace="RGB")
    return len(_BLOBS[start::step])


def _parallel_rate(blobs: list[bytes], processes: int, rounds: int = 5) -> float:
    """simplejpeg's rate with `processes` forked processes each decoding its share of the
    sample from memory, nothing sent between them: the decode limit of the machine's cores."""
    import multiprocessing

    _BLOBS[:] = blobs
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.map(_decode_share, [(i, processes) for i in range(processes)])  # warm
        start = time.perf_counter()
        for _ in range(rounds):
            done = sum(pool.map(_decode_share, [(i, processes) for i in range(processes)]))
        return rounds * done / (time.perf_counter() - start)


def _decode_limit(archive: Path, sample: int = 6000) -> dict[str, float]:
    """Single-core decode rates of Pillow and simplejpeg on real images of the archive, and
    simplejpeg's with one process per core."""
    from PIL import Image

    from tinycnn.data.sources import open_source

    source = open_source(archive)
    names = [n for n in source.names() if n.startswith("train/") and n.endswith(".JPEG")][:sample]
    blobs = [data for _, data in source.stream(names)]
    rates = {}
    start = time.perf_counter()
    for blob in blobs:
        np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
    rates["pillow"] = len(blobs) / (time.perf_counter() - start)
    try:
        import simplejpeg

        start = time.perf_counter()
        for blob in blobs:
            simplejpeg.decode_jpeg(blob, colorspace="RGB")
        rates["simplejpeg"] = len(blobs) / (time.perf_counter() - start)
        rates["simplejpeg_all_cores"] = _parallel_rate(blobs, usable_cores())
    except ImportError:
        pass
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("archive", nargs="?", default=str(DEFAULT))
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    archive = Path(args.archive)
    if not archive.exists():
        sys.exit(f"{archive}: missing (the benchmark needs the real data, see ../shared/README.md)")
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        out = Path(tmp) / "cache"
        cmd = [sys.executable, "-m", "tinycnn", "prepare", str(archive), "--out", str(out), "-q"]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
        start = time.perf_counter()
        process = subprocess.Popen(timed, stderr=subprocess.PIPE, text=True)
        peak = [0]

        def sample() -> None:
            while process.poll() is None:
                peak[0] = max(peak[0], _tree_rss_kib(process.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, err = process.communicate()
        wall = time.perf_counter() - start
        sampler.join()
        if process.returncode != 0:
            sys.exit(f"prepare failed:\n{err}")
        manifest = json.loads((out / "manifest.json").read_text())
        images = sum(s["count"] for s in manifest["splits"].values())
        max_rss = next(
            (
                int(line.split(":")[1])
                for line in err.splitlines()
                if "Maximum resident set size" in line
            ),
            None,
        )
        print(f"archive            {archive}")
        for name, split in manifest["splits"].items():
            print(
                f"{name:<18} {split['count']:>7} images, {split['grayscale']} grayscale, "
                f"{split['cmyk']} cmyk, {len(split['skipped'])} skipped"
            )
        print(f"wall time          {wall:.2f} s (prepare's own: {manifest['seconds']:.2f} s)")
        print(f"throughput         {images / wall:,.0f} images/s on {usable_cores()} cores")
        if max_rss:
            print(f"peak RSS, largest process  {max_rss / 1024:.0f} MiB (/usr/bin/time -v)")
        print(f"peak RSS, process tree     {peak[0] / 1024:.0f} MiB (sampled every 20 ms)")
        rss_before = _tree_rss_kib(os.getpid())
        start = time.perf_counter()
        from tinycnn.data.cache import load_cache

        train = load_cache(out).split("train").images
        print(
            f"open train split   {time.perf_counter() - start:.3f} s, "
            f"{train.nbytes / 2**20:.0f} MiB mapped, RSS +"
            f"{(_tree_rss_kib(os.getpid()) - rss_before) / 1024:.1f} MiB"
        )
    rates = _decode_limit(archive)
    cores = usable_cores()
    limit = rates.pop("simplejpeg_all_cores", None)
    print("decode, one core   " + ", ".join(f"{k} {v:,.0f} images/s" for k, v in rates.items()))
    for name, rate in rates.items():
        print(
            f"prepare / {name} one-core rate x {cores} cores: {images / wall / (rate * cores):.2f}"
        )
    if limit:
        print(
            f"decode limit       simplejpeg, {cores} processes from memory: {limit:,.0f} images/s"
        )
        print(f"prepare / decode limit: {images / wall / limit:.2f}")


if __name__ == "__main__":
    main()

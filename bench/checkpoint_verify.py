"""Benchmark the CRC check that load_checkpoint runs before torch.load, per load.

Usage: python bench/checkpoint_verify.py [--sizes-mb 27 200] [--repeats 7]
Writes synthetic tinycnn checkpoints of about each size into a temporary folder (weights plus
a momentum buffer per weight, as training saves them), then times, on a warm page cache:
torch.load alone, the CRC check alone (checkpoint._verify_entries), and load_checkpoint (both).
Prints the median of --repeats, and the check as a ratio of the plain torch.load; asserts
nothing. A cold cache adds the disk read to both, once: the check reads the file first, so the
load that follows finds it in the page cache.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tinycnn.checkpoint import _verify_entries, load_checkpoint, save_checkpoint

TENSORS = 16  # weights; each also gets a momentum buffer of its size, as SGD saves


def _verify(path: Path) -> None:
    with path.open("rb") as file:
        _verify_entries(path, file)


def make_checkpoint(path: Path, megabytes: float) -> Path:
    """A tinycnn checkpoint of about megabytes MB (1e6 bytes) of float32 tensors."""
    per_tensor = int(megabytes * 1e6 / 4 / (2 * TENSORS))
    generator = torch.Generator().manual_seed(0)
    state = {
        f"layer{i}.weight": torch.randn(per_tensor, generator=generator) for i in range(TENSORS)
    }
    momentum = {i: {"momentum_buffer": t.clone()} for i, t in enumerate(state.values())}
    payload = {
        "model": {"name": "synthetic", "options": {}, "state": state},
        "optimizer": {"state": momentum, "param_groups": [{"params": list(range(TENSORS))}]},
        "iteration": 0,
    }
    return save_checkpoint(path, payload)


def median_seconds(work, repeats: int) -> float:
    work()  # warm: page cache, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs="+", default=[27, 200])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'size':>9} {'torch.load':>11} {'CRC check':>10} {'ratio':>6} {'load_checkpoint':>16}")
    with tempfile.TemporaryDirectory() as folder:
        for megabytes in args.sizes_mb:
            path = make_checkpoint(Path(folder) / f"{megabytes:g}mb.pt", megabytes)
            size = path.stat().st_size / 1e6
            plain = median_seconds(
                lambda p=path: torch.load(p, map_location="cpu", weights_only=True), args.repeats
            )
            check = median_seconds(lambda p=path: _verify(p), args.repeats)
            both = median_seconds(lambda p=path: load_checkpoint(p), args.repeats)
            print(f"{size:7.1f}MB {plain:10.4f}s {check:9.4f}s {check / plain:5.2f}x {both:15.4f}s")
            path.unlink()


if __name__ == "__main__":
    main()

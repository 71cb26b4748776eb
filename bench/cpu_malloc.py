"""The runtime's reuse of freed CPU memory against glibc's default malloc, in training steps.

Usage: python bench/cpu_malloc.py --cache DIR [--sizes 32 48 64] [--iters N] [--rounds N]

glibc gives each allocation of 32 MiB or more fresh kernel pages (faulted in and zeroed at first
touch) and returns them on free; tinycnn's CPU runtime keeps them on the heap instead
(tinycnn.runtime.reuse_freed_memory). The malloc settings are process-wide and stick to memory
already handed out, so each variant runs in its own process: "glibc default" is the same
command with MALLOC_MMAP_MAX_ set to glibc's default (which the runtime respects). The two
alternate, round by round, so that machine noise hits them alike; a round is a fresh process
that times `iters` fastnet-recipe training steps (configs/fast/fastnet-0.5pflop.toml, batch 128,
the fast path) at each size after one untimed warm-up round of steps. Medians are printed with
the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
VARIANTS = {"tinycnn (freed memory reused)": {}, "glibc default": {"MALLOC_MMAP_MAX_": "65536"}}


def _round(cache: str, sizes: list[int], iters: int) -> dict[int, float]:
    """In this process: images/s of the recipe's training steps at each size."""
    sys.path.insert(0, str(HERE))
    from train_throughput import FAST, tinycnn_steps

    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            steps = tinycnn_steps(Path(cache), True, iters, Path(tmp) / str(size), FAST, size)
            next(steps)  # the FLOPs per image
            next(steps)  # warm-up: kernel selection, first allocations
            rates[size] = next(steps)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="a tinycnn prepare folder (full data)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--iters", type=int, default=4, help="timed steps per size per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_round(args.cache, args.sizes, args.iters)))
        return
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    command = [sys.executable, __file__, "--worker", "--cache", args.cache, "--iters"]
    command += [str(args.iters), "--sizes", *map(str, args.sizes)]
    rates: dict[str, dict[int, list[float]]] = {v: {s: [] for s in args.sizes} for v in VARIANTS}
    for _ in range(args.rounds):
        for name, env in VARIANTS.items():
            done = subprocess.run(
                command, env={**base, **env}, capture_output=True, text=True, check=True
            )
            for size, rate in json.loads(done.stdout.strip().splitlines()[-1]).items():
                rates[name][int(size)].append(rate)
    print(f"fastnet recipe training steps, batch 128, {args.rounds} rounds (median images/s)")
    ours, plain = VARIANTS
    for size in args.sizes:
        a, b = float(np.median(rates[ours][size])), float(np.median(rates[plain][size]))
        print(f"{size}x{size}: {ours} {a:7.1f}   {plain} {b:7.1f}   ratio {a / b:.2f}x")


if __name__ == "__main__":
    main()

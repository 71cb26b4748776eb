"""One process against a torchrun job of N processes on this machine: images/s and weights.

Usage: python bench/ddp_throughput.py --cache DIR [--nproc 2] [--epochs 3] [--config TOML]

Both runs train the same config (default: the fastnet recipe at 32x32, batch 128, deterministic
kernels, batch norm over the global batch) from the same seed: one process with every core,
then ``torchrun --nproc-per-node N`` with the cores shared out. Printed: each run's training
images/s (the mean of its epochs, from metrics.jsonl) and the largest difference between their
final weights.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(done.stdout[-2000:] + done.stderr[-4000:])


def _rate(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(r["images_per_second"] for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--config", default=str(ROOT / "configs/fast/fastnet-0.5pflop.toml"))
    args = parser.parse_args()
    import torch

    from tinycnn.checkpoint import load_checkpoint

    common = [
        "train", "--data", args.cache, "--config", args.config,
        "--set", "augment.sizes=[32]", "--set", "augment.size_until=[]",
        "--set", "data.holdout_per_class=0", "--set", "train.max_pflop=0",
        "--set", f"train.epochs={args.epochs}", "--set", "train.deterministic=true",
        "--set", "train.sync_batch_norm=true", "-q",
    ]  # fmt: skip
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        one, many = Path(tmp) / "one", Path(tmp) / "many"
        _train([sys.executable, "-m", "tinycnn", *common, "--out", str(one)], dict(os.environ))
        env = dict(os.environ, OMP_NUM_THREADS=str(max(1, cores // args.nproc)))
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        _train([*launcher, f"--nproc-per-node={args.nproc}", "-m", "tinycnn", *common,
                "--out", str(many)], env)  # fmt: skip
        a = load_checkpoint(one / "checkpoints" / "last.pt")["model"]["state"]
        b = load_checkpoint(many / "checkpoints" / "last.pt")["model"]["state"]
        diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
        print(f"{cores} cores, CPU capability {torch.backends.cpu.get_cpu_capability()}")
        print(f"1 process ({cores} threads): {_rate(one):.1f} images/s")
        print(f"{args.nproc} processes (torchrun, gloo): {_rate(many):.1f} images/s")
        print(f"largest weight difference after {args.epochs} epochs: {diff:.2e}")


if __name__ == "__main__":
    main()

"""Behaviour unchanged? Train a fixed set of short runs and compare them with another tree's.

A refactor of the training engine must not change a single number. This trains runs that cover
its paths (step and one-cycle schedules, warm-up, progressive resizing, a PFLOP budget, EMA,
Mixup/CutMix, snapshots, the step log, a tuning split, a stop and resume) on the mini cache and
writes, per run, the metrics and step-log rows without their timings and a sha256 of every tensor
of every checkpoint. Run it on the old tree and the new one, then compare:

    PYTHONPATH=OLD_TREE python bench/identical_runs.py --data CACHE --out /tmp/before
    PYTHONPATH=NEW_TREE python bench/identical_runs.py --data CACHE --out /tmp/after
    python bench/identical_runs.py --compare /tmp/before /tmp/after

It prints each difference (exit 1) or "identical" with the counts compared. One thread, so that
the two trees run the same kernels in the same order.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
# Keys that hold wall-clock figures: they differ between any two runs.
TIMING = ("seconds", "minutes", "per_s", "elapsed", "time", "throughput", "gflop_s")

# name: (config, overrides, stop_at): stop_at > 0 trains to that iteration, then resumes.
RUNS: dict[str, tuple[str, list[str], int]] = {
    "quick": ("configs/quick.toml", ["train.epochs=2", "train.log_every=5"], 0),
    "quick-resumed": ("configs/quick.toml", ["train.epochs=2", "train.log_every=5"], 23),
    "fastnet": (
        "configs/fast/fastnet-0.5pflop.toml",
        [
            "model.options={width=16}",
            "data.holdout_per_class=10",
            "train.max_pflop=0.0012",
            "train.ema_decay=0.9",
            "train.snapshot_every=10",
            "train.log_every=4",
            "augment.cutmix=1.0",
            "augment.mixup=0.2",
            "train.batch_size=64",
        ],
        0,
    ),
    "paper8": (
        "configs/paper/paper8_l2_5e-4.toml",
        [
            "train.epochs=2",
            "schedule.step_epochs=1",
            "schedule.warmup_epochs=0.5",
            "optim.bias_lr_multiplier=2",
            "optim.clip_grad_norm=5",
            "train.batch_size=100",
            "train.snapshot_every=7",
            "train.log_every=3",
        ],
        0,
    ),
    "cyclic": (
        "configs/fast/fastnet-0.5pflop.toml",
        [
            "model.options={width=16}",
            'schedule.name="cyclic"',
            "schedule.cycles=2",
            "augment.sizes_per_cycle=true",
            "train.max_pflop=0.001",
            "train.batch_size=64",
        ],
        0,
    ),
}


def _tinycnn(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "tinycnn", *args, "-q"], check=True)


def train_all(cache: Path, out: Path, extra: list[str]) -> None:
    """Trains every run of RUNS into out/NAME and writes out/summary.json; extra: more
    overrides for every run (a new option set to its old behaviour)."""
    summary = {}
    for name, (config, overrides, stop_at) in RUNS.items():
        run = out / name
        settings = ["train.threads=1", "train.seed=3", *overrides, *extra]
        sets = [a for o in settings for a in ("--set", o)]
        common = ["--data", str(cache), "--config", str(ROOT / config), *sets]
        if stop_at:
            _tinycnn("train", *common, "--out", str(run), "--stop-at", str(stop_at))
            _tinycnn("train", "--resume", str(run))
        else:
            _tinycnn("train", *common, "--out", str(run))
        summary[name] = _describe(run)
        print(f"{name}: {len(summary[name]['checkpoints'])} checkpoints", flush=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))


def _describe(run: Path) -> dict:
    rows = {}
    for log in ("metrics.jsonl", "steps.jsonl"):
        path = run / log
        lines = path.read_text().splitlines() if path.is_file() else []
        rows[log] = [_untimed(json.loads(line)) for line in lines]
    checkpoints = {}
    for path in sorted((run / "checkpoints").glob("*.pt")):
        state = torch.load(path, map_location="cpu", weights_only=False)
        checkpoints[path.name] = _tensor_digests(state)
    return {"logs": rows, "checkpoints": checkpoints}


def _untimed(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIMING)}


def _tensor_digests(value, prefix: str = "") -> dict[str, str]:
    """sha256 of every tensor in a nested checkpoint, keyed by its path; other leaves as text."""
    if isinstance(value, torch.Tensor):
        data = value.detach().contiguous().cpu().reshape(-1)
        raw = data.view(torch.uint8) if data.dtype != torch.bool else data.to(torch.uint8)
        digest = hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]
        return {prefix: f"{data.dtype} {tuple(value.shape)} {digest}"}
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_tensor_digests(item, f"{prefix}/{key}"))
        return out
    if isinstance(value, list | tuple):
        out = {}
        for i, item in enumerate(value):
            out.update(_tensor_digests(item, f"{prefix}[{i}]"))
        return out
    if any(t in prefix for t in TIMING):
        return {}
    return {prefix: repr(value)}


def compare(before: Path, after: Path) -> int:
    """Prints every difference between two summaries; returns the number found."""
    a = json.loads((before / "summary.json").read_text())
    b = json.loads((after / "summary.json").read_text())
    differences, rows, tensors = 0, 0, 0
    for name in sorted(set(a) | set(b)):
        if name not in a or name not in b:
            print(f"{name}: only in {'after' if name in b else 'before'}")
            differences += 1
            continue
        for log in sorted(set(a[name]["logs"]) | set(b[name]["logs"])):
            old, new = a[name]["logs"].get(log, []), b[name]["logs"].get(log, [])
            if len(old) != len(new):
                print(f"{name}/{log}: {len(old)} rows before, {len(new)} after")
                differences += 1
            for i, (x, y) in enumerate(zip(old, new, strict=False)):
                rows += 1
                if x != y:
                    keys = sorted(k for k in set(x) | set(y) if x.get(k) != y.get(k))
                    print(f"{name}/{log} row {i}: {', '.join(keys)} differ")
                    differences += 1
        old, new = a[name]["checkpoints"], b[name]["checkpoints"]
        for ckpt in sorted(set(old) | set(new)):
            if ckpt not in old or ckpt not in new:
                print(f"{name}/{ckpt}: only {'after' if ckpt in new else 'before'}")
                differences += 1
                continue
            for key in sorted(set(old[ckpt]) | set(new[ckpt])):
                tensors += 1
                if old[ckpt].get(key) != new[ckpt].get(key):
                    print(f"{name}/{ckpt}{key}: {old[ckpt].get(key)} -> {new[ckpt].get(key)}")
                    differences += 1
    if not differences:
        print(f"identical: {len(a)} runs, {rows} log rows, {tensors} checkpoint entries")
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="prepared mini cache")
    parser.add_argument("--out", type=Path, help="folder for the runs and summary.json")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="for every run"
    )
    args = parser.parse_args()
    if args.compare:
        sys.exit(1 if compare(*args.compare) else 0)
    if not (args.data and args.out):
        parser.error("--data and --out (or --compare BEFORE AFTER)")
    train_all(args.data, args.out, args.set)


if __name__ == "__main__":
    main()

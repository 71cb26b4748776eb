"""Training throughput of paper8: tinycnn's fast path against a naive PyTorch baseline, one run.

Usage: python bench/train_throughput.py [--cache DIR] [--archive TAR_GZ] [--iters N]
       [--fast-sizes 32 48 64] [--fast-config TOML] [--skip-naive] [--compile] [--onednn-only]
       [--rounds N]

- naive: the usual tutorial pipeline. JPEG files on disk, a Dataset that opens each image with
  PIL and applies per-image transforms (random 56 crop, flip, to tensor, mean/std), a DataLoader
  with 2 worker processes, the model in fp32 NCHW, torch.optim.SGD.
- tinycnn fp32: tinycnn's own training step (in-memory uint8 batch, batched augmentation, the
  paper's augmentation and optimiser) with bf16 and channels_last switched off.
- tinycnn: the same step on the default fast path (bf16 autocast where measured faster;
  channels_last).
The variants run in alternating rounds so that machine noise hits them alike; the figures are
images/s of whole training steps (data + forward + backward + update), batch 128.
The machine's convolution-kernel rate (a bare 3x3 convolution, 128 -> 128 channels at 56x56,
batch 64, forward, on the fastest path this machine has) is measured in the same rounds; each
path's rate in GFLOP/s (images/s x training FLOPs per image, compute.py) is printed as a
fraction of it. The fastnet recipe (configs/fast/fastnet-0.5pflop.toml, or --fast-config) is timed
at each of its progressive-resizing sizes on the fast path, in the same rounds.
With --onednn-only, also with oneDNN's kernels in place of Conv3x3's nine matmuls on small maps
(forward, input and weight gradients; tinycnn/models/conv.py): the gain of that kernel choice,
in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/tiny-imagenet-200.tar.gz"
BATCH = 128
PAPER8 = ROOT / "configs/paper/paper8_l2_5e-4.toml"
FAST = ROOT / "configs/fast/fastnet-0.5pflop.toml"
KERNEL_SECONDS = 2.0  # shortest timing window of the conv kernel per round


class JpegDataset(torch.utils.data.Dataset):
    """Per-image PIL loading and transforms, as in torchvision-based tutorials."""

    def __init__(self, files: list[Path], labels: list[int], mean: np.ndarray, std: np.ndarray):
        self.files, self.labels, self.mean, self.std = files, labels, mean, std

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        image = Image.open(self.files[i]).convert("RGB")
        x, y = np.random.randint(0, 9, size=2)
        image = image.crop((x, y, x + 56, y + 56))
        if np.random.rand() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        return (pixels - self.mean) / self.std, self.labels[i]


def _extract(archive: Path, folder: Path, count: int) -> tuple[list[Path], list[int]]:
    files, labels, classes = [], [], {}
    with tarfile.open(archive) as tf:
        for member in tf:
            if "/train/" in member.name and member.name.endswith(".JPEG"):
                wnid = member.name.split("/")[2]
                target = folder / Path(member.name).name
                target.write_bytes(tf.extractfile(member).read())
                files.append(target)
                labels.append(classes.setdefault(wnid, len(classes)))
                if len(files) == count:
                    break
    return files, [label % 200 for label in labels]


def naive_steps(files, labels, iters: int):
    """Generator: each next() runs `iters` naive steps and yields images/s."""
    from tinycnn.models import create_model, init_weights

    model = init_weights(create_model("paper8"), "xavier").train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    mean = torch.tensor([0.48, 0.45, 0.40])[:, None, None]
    std = torch.tensor([0.27, 0.26, 0.28])[:, None, None]
    loader = torch.utils.data.DataLoader(
        JpegDataset(files, labels, mean, std),
        batch_size=BATCH,
        shuffle=True,
        num_workers=2,
        drop_last=True,
        persistent_workers=True,
    )
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        for _ in range(iters):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        yield iters * BATCH / (time.perf_counter() - start)


def _wait() -> None:
    """On a GPU, the queued work must end before the clock is read."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def tinycnn_steps(
    cache: Path,
    fast: bool,
    iters: int,
    run_dir: Path,
    config: Path = PAPER8,
    size: int = 0,
    extra: tuple[str, ...] = (),
):
    """Generator: each next() runs `iters` of tinycnn's training steps and yields images/s.

    config: the preset; size: with a progressive-resizing preset, the one input side to time;
    extra: more config overrides (train.compile=true). The device is the default one (a GPU if
    there is one). The first next() yields the FLOPs of one training step per image instead.
    """
    from tinycnn.config import load_config
    from tinycnn.run_plan import plan_run
    from tinycnn.runtime import make_runtime
    from tinycnn.session import load_session
    from tinycnn.steps import train_step

    overrides = [f"data.cache={json.dumps(str(cache))}", 'data.normalization="channel"']
    if size:
        overrides += [f"augment.sizes=[{size}]", "augment.size_until=[]"]
    fixed = ["data.holdout_per_class=0", "train.max_pflop=0", *extra]
    cfg = load_config(config, [*overrides, *fixed])
    runtime = make_runtime(precision="auto" if fast else "fp32", channels_last=fast)
    plan = replace(plan_run(cfg), runtime=runtime)  # the FLOPs counted at the preset's sides
    side = size or plan.eval_size
    flops = plan.flops_by_size[side]
    session = load_session(plan, run_dir)
    order = torch.randperm(len(session.train_labels))
    yield flops
    while True:
        _wait()
        start = time.perf_counter()
        for _ in range(iters):
            lo = (session.iteration * BATCH) % (len(order) - BATCH)
            train_step(session, order[lo : lo + BATCH])
            session.advance(BATCH, session.schedule.input_size_at(session.iteration))
        _wait()
        yield iters * BATCH / (time.perf_counter() - start)


def _onednn_only(steps):
    """The same steps with every Conv3x3 on oneDNN's kernels (models/conv.py)."""
    import tinycnn.models.conv as conv

    rules = conv.uses_tap_conv, conv.uses_tap_gradient
    while True:
        conv.uses_tap_conv = conv.uses_tap_gradient = lambda *shape: False
        try:
            rate = next(steps)
        finally:
            conv.uses_tap_conv, conv.uses_tap_gradient = rules
        yield rate


def conv_kernel_rates(iters: int):
    """GFLOP/s of a bare 3x3 conv forward on the fast path (bf16 + channels_last where fast)."""
    from tinycnn.runtime import make_runtime

    runtime = make_runtime(channels_last=True, threads=torch.get_num_threads())
    conv = runtime.prepare_model(torch.nn.Conv2d(128, 128, 3, padding=1, bias=False))
    x = torch.randn(64, 128, 56, 56, device=runtime.device)
    x = x.to(memory_format=torch.channels_last)
    flops = 2 * 128 * 9 * 128 * 56 * 56 * 64
    while True:
        # Grad mode is thread state: enter and leave it within each round, never across a yield.
        with torch.no_grad(), runtime.autocast():
            conv(x)
            _wait()
            start, done = time.perf_counter(), 0
            # At least `iters` calls and 2 seconds: a window as long as the variants' rounds
            # (a burst of a few calls is the one most flattered by turbo clocks).
            while done < iters or time.perf_counter() - start < KERNEL_SECONDS:
                conv(x)
                done += 1
                if done >= iters:
                    _wait()
            rate = done * flops / (time.perf_counter() - start) / 1e9
        yield rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="prepared full cache (default: prepare one)")
    parser.add_argument("--archive", default=str(ARCHIVE))
    parser.add_argument("--iters", type=int, default=6, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--fast-sizes",
        type=int,
        nargs="*",
        default=[32, 48, 64],
        help="input sides at which to time the fastnet recipe (configs/fast); none: skip it",
    )
    parser.add_argument("--fast-config", default=str(FAST), help="the fastnet preset to time")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the PIL baseline")
    parser.add_argument("--compile", action="store_true", help="also time train.compile = true")
    parser.add_argument(
        "--onednn-only",
        action="store_true",
        help="also time the fastnet sizes with oneDNN's kernels instead of Conv3x3's matmuls",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = Path(args.cache) if args.cache else None
        if cache is None:
            from tinycnn.data.prepare import prepare

            cache = prepare(args.archive, tmp / "cache", progress=False).path
        (tmp / "jpeg").mkdir()
        files, labels = [], []
        if not args.skip_naive:
            files, labels = _extract(Path(args.archive), tmp / "jpeg", 4 * BATCH * args.iters)
        naive = "naive (PIL DataLoader, fp32 NCHW)"
        variants = {
            "conv kernel": conv_kernel_rates(args.iters),
            naive: naive_steps(files, labels, args.iters),
            "tinycnn, fp32 NCHW": tinycnn_steps(cache, False, args.iters, tmp / "r1"),
            "tinycnn, fast path": tinycnn_steps(cache, True, args.iters, tmp / "r2"),
        }
        if args.skip_naive:
            del variants[naive]
        gflop = {name: 0.0 for name in variants}
        for name in ("tinycnn, fp32 NCHW", "tinycnn, fast path"):
            gflop[name] = next(variants[name]) / 1e9
        gflop[naive] = gflop["tinycnn, fast path"]  # paper8 too
        fast_config = Path(args.fast_config)
        for size in args.fast_sizes:
            name = f"fastnet recipe at {size}x{size}, fast path"
            variants[name] = tinycnn_steps(
                cache, True, args.iters, tmp / f"f{size}", fast_config, size
            )
            gflop[name] = next(variants[name]) / 1e9
            if args.onednn_only:
                plain = f"fastnet recipe at {size}x{size}, oneDNN only"
                steps = tinycnn_steps(cache, True, args.iters, tmp / f"o{size}", fast_config, size)
                variants[plain] = _onednn_only(steps)
                gflop[plain] = gflop[name]
                next(variants[plain])
        if args.compile:
            for label, config, size in (("paper8", PAPER8, 0), ("fastnet at 64", FAST, 64)):
                name = f"{label}, fast path, torch.compile"
                variants[name] = tinycnn_steps(
                    cache, True, args.iters, tmp / f"c{size}", config, size, ("train.compile=true",)
                )
                gflop[name] = next(variants[name]) / 1e9
        for steps in variants.values():
            next(steps)  # warm-up round: worker start, kernel selection, first allocations
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, steps in variants.items():
                rates[name].append(next(steps))
    kernel = float(np.median(rates.pop("conv kernel")))
    base = float(np.median(rates.get(naive, rates["tinycnn, fp32 NCHW"])))
    where = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        f"paper8 (and fastnet) training, batch {BATCH}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.iters} steps (median); {where}; speed-ups are over "
        + ("the naive pipeline" if naive in rates else "tinycnn fp32 NCHW")
    )
    print(f"conv kernel (3x3, 128 ch, 56x56, fast path): {kernel:.0f} GFLOP/s")
    for name, values in rates.items():
        rate = float(np.median(values))
        g = gflop[name]
        print(
            f"{name:<40} {rate:7.1f} images/s   {rate / base:5.2f}x base    "
            f"{g:.2f} GFLOP/image  {rate * g:6.1f} GFLOP/s = {rate * g / kernel:4.0%} of the "
            "conv kernel"
        )


if __name__ == "__main__":
    main()

"""Where a whole CPU training step's time goes, by kind of operation (torch.profiler).

Usage: python bench/step_profile.py --cache DIR [--config PRESET] [--sizes 32 48 64] [--iters 4]

Runs tinycnn's own training step (bench/train_throughput.py's, on the fast path: bf16 where the
CPU is measured faster with it, channels_last) for the preset (default: the fastnet recipe,
configs/fast/fastnet-0.5pflop.toml) at each input side, profiles `--iters` steps after a warm-up
round, and sums each operator's own time into kinds: the convolutions (forward, oneDNN's
backward, and the matmuls of Conv3x3's weight gradients and the fc layer) and the rest (batch
norm, activations, pooling, copies, element-wise arithmetic of residuals, gradients and the
optimiser; "other" lists its largest operators). The rest is what no faster convolution kernel
can remove: with bench/conv_layers.py's rate of the convolutions alone, it tells how close to
the conv-kernel rate (bench/train_throughput.py) a whole step can come on this machine.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from train_throughput import FAST, tinycnn_steps

CONVOLUTION = {
    "conv forward": ("mkldnn_convolution", "cudnn_convolution", "_slow_conv2d_forward"),
    "conv backward (oneDNN)": ("convolution_backward", "_slow_conv2d_backward"),
    "matmul (Conv3x3 weight gradients, fc)": ("aten::mm", "aten::bmm", "aten::addmm"),
}
REST = {
    "batch norm": ("batch_norm",),
    "activations": ("relu", "clamp_min", "threshold_backward", "prelu"),
    "pooling": ("pool",),
    "copies, cat, fill": ("copy_", "aten::cat", "aten::stack", "fill_", "zero_"),
    "element-wise (residuals, gradients, optimiser)": (
        "add",
        "mul",
        "div",
        "sub",
        "lerp",
        "foreach",
    ),
}


def kind_of(op: str) -> str:
    for kind, keys in (CONVOLUTION | REST).items():
        if any(key in op for key in keys):
            return kind
    return "other"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="prepared full cache")
    parser.add_argument("--config", default=str(FAST), help="preset (default: the fastnet recipe)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 48, 64])
    parser.add_argument("--iters", type=int, default=4, help="steps profiled per size")
    args = parser.parse_args()
    cpu = f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        raise SystemExit("step_profile.py sums CPU time: on a GPU, use torch.profiler's CUDA times")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            steps = tinycnn_steps(
                Path(args.cache), True, args.iters, Path(tmp) / f"r{size}", Path(args.config), size
            )
            next(steps)  # FLOPs per image
            next(steps)  # warm-up round: kernel selection, first allocations
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                rate = next(steps)
            seconds: collections.Counter[str] = collections.Counter()
            other: collections.Counter[str] = collections.Counter()
            for event in prof.key_averages():
                ms = event.self_cpu_time_total / args.iters / 1e3
                seconds[kind_of(event.key)] += ms
                if kind_of(event.key) == "other":
                    other[event.key] += ms
            step = sum(seconds.values())
            conv = sum(seconds[kind] for kind in CONVOLUTION)
            print(
                f"{Path(args.config).stem} at {size}x{size}: {step:.0f} ms a step (profiled, "
                f"{rate:.1f} images/s), {torch.get_num_threads()} threads, {cpu}"
            )
            for kind, ms in seconds.most_common():
                print(f"  {kind:<48} {ms:8.1f} ms {ms / step:6.1%}")
            print(f"  {'convolutions together':<48} {conv:8.1f} ms {conv / step:6.1%}")
            print(f"  {'the rest':<48} {step - conv:8.1f} ms {(step - conv) / step:6.1%}")
            print("  other: " + ", ".join(f"{k} {v:.1f}" for k, v in other.most_common(5)))


if __name__ == "__main__":
    main()

"""Where a whole CPU training step's time goes, by kind of operation (torch.profiler).

Usage: python bench/step_profile.py --cache DIR [--config PRESET] [--sizes 32 48 64] [--iters 4]
       [--ops N]
(--sizes: the preset's progressive-resizing sizes by default, else its own input)

Runs tinycnn's own training step (bench/train_throughput.py's, on the fast path: bf16 where the
CPU is measured faster with it, channels_last) for the preset (default: the fastnet recipe,
configs/fast/fastnet-0.5pflop.toml) at each input side, profiles `--iters` steps after a warm-up
round, and sums each operator's own time into kinds: the convolutions (forward, oneDNN's
backward, and the matmuls of Conv3x3's weight gradients and the fc layer) and the rest (batch
norm, activations, pooling, copies, element-wise arithmetic of the augmentation, residuals,
gradients and optimiser, the framework's own events; "other operators" lists the largest of
those left; operators are matched by their exact aten names). The rest is what no faster
convolution kernel can remove: with bench/conv_layers.py's rate of the convolutions alone, it
tells how close to the conv-kernel rate (bench/train_throughput.py) a whole step can come here.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from train_throughput import FAST, tinycnn_steps

from tinycnn.config import load_config

TAP_MATMULS = "matmul (Conv3x3 weight gradients, fc)"
OVERHEAD = "framework (autograd nodes, optimiser and Python ranges)"
OTHER = "other operators"
# Operators by their aten names (exact); torch's own events (autograd nodes, the optimiser's
# and Python functions' ranges: names without "aten::") are framework overhead, except the
# backward of Conv3x3's weight-gradient path.
CONVOLUTION = {
    "conv forward": {"convolution", "_convolution", "conv2d", "mkldnn_convolution",
                     "cudnn_convolution", "_slow_conv2d_forward"},
    "conv backward (oneDNN)": {"convolution_backward", "_slow_conv2d_backward"},
    TAP_MATMULS: {"mm", "bmm", "addmm", "matmul", "linear"},
}  # fmt: skip
REST = {
    "batch norm": {"batch_norm", "_batch_norm_impl_index", "native_batch_norm",
                   "native_batch_norm_backward", "_native_batch_norm_legit",
                   "_native_batch_norm_legit_functional"},
    "activations": {"relu", "relu_", "clamp_min", "clamp_min_", "threshold_backward", "prelu",
                    "_prelu_kernel", "_prelu_kernel_backward"},
    "pooling": {"max_pool2d", "max_pool2d_with_indices", "max_pool2d_with_indices_backward",
                "adaptive_max_pool2d", "adaptive_max_pool2d_backward", "adaptive_avg_pool2d",
                "_adaptive_avg_pool2d", "_adaptive_avg_pool2d_backward", "avg_pool2d",
                "avg_pool2d_backward", "mean"},
    # Conv3x3's weight gradient gathers each tap's rows with copies (and stacks the nine).
    "copies, cat, fill": {"copy_", "cat", "stack", "fill_", "zero_", "zeros", "zeros_like",
                          "clone", "contiguous", "to", "_to_copy"},
    "element-wise (augmentation, residuals, gradients, optimiser)": {
        "add", "add_", "mul", "mul_", "div", "div_", "sub", "sub_", "rsub", "lerp_", "neg",
        "addcmul_", "addcdiv_", "sqrt", "where", "clamp", "clamp_", "floor", "round",
    },
}  # fmt: skip


def kind_of(event: str) -> str:
    if not event.startswith("aten::"):
        return TAP_MATMULS if event == "_TapConvBackward" else OVERHEAD
    op = event.removeprefix("aten::")
    for kind, ops in (CONVOLUTION | REST).items():
        if op in ops or (op.startswith("_foreach_") and kind.startswith("element-wise")):
            return kind
    return OTHER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="prepared full cache")
    parser.add_argument("--config", default=str(FAST), help="preset (default: the fastnet recipe)")
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        help="input sides (default: the preset's progressive-resizing sizes, else its own input)",
    )
    parser.add_argument("--iters", type=int, default=4, help="steps profiled per size")
    parser.add_argument(
        "--ops",
        type=int,
        default=0,
        help="also list the N costliest operators outside the convolutions, by input shapes",
    )
    args = parser.parse_args()
    cpu = f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if torch.cuda.is_available():
        raise SystemExit("step_profile.py sums CPU time: on a GPU, use torch.profiler's CUDA times")
    sizes = args.sizes or load_config(args.config).augment.sizes or [0]  # 0: the preset's input
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            steps = tinycnn_steps(
                Path(args.cache), True, args.iters, Path(tmp) / f"r{size}", Path(args.config), size
            )
            next(steps)  # FLOPs per image
            next(steps)  # warm-up round: kernel selection, first allocations
            with profile(activities=[ProfilerActivity.CPU], record_shapes=args.ops > 0) as prof:
                rate = next(steps)
            seconds: collections.Counter[str] = collections.Counter()
            other: collections.Counter[str] = collections.Counter()
            for event in prof.key_averages():
                ms = event.self_cpu_time_total / args.iters / 1e3
                kind = kind_of(event.key)
                seconds[kind] += ms
                if kind == OTHER:
                    other[event.key] += ms
            step = sum(seconds.values())
            conv = sum(seconds[kind] for kind in CONVOLUTION)
            print(
                f"{Path(args.config).stem} at {size or 'its input'}: {step:.0f} ms a step "
                f"(profiled, {rate:.1f} images/s), {torch.get_num_threads()} threads, {cpu}"
            )
            for kind, ms in seconds.most_common():
                print(f"  {kind:<60} {ms:8.1f} ms {ms / step:6.1%}")
            print(f"  {'convolutions together':<60} {conv:8.1f} ms {conv / step:6.1%}")
            print(f"  {'the rest':<60} {step - conv:8.1f} ms {(step - conv) / step:6.1%}")
            print(f"  {OTHER}: " + ", ".join(f"{k} {v:.1f}" for k, v in other.most_common(5)))
            if args.ops:
                _print_costliest(prof, args.iters, args.ops)


def _print_costliest(prof, iters: int, count: int) -> None:
    """The operators outside the convolutions that cost most a step, with their input shapes
    and calls a step (what to fuse or avoid first)."""
    rows = []
    for event in prof.key_averages(group_by_input_shape=True):
        if kind_of(event.key) in CONVOLUTION:
            continue
        ms = event.self_cpu_time_total / iters / 1e3
        rows.append((ms, event.key, event.count // iters, str(event.input_shapes)[:80]))
    print(f"  the {count} costliest operators outside the convolutions (ms a step, calls):")
    for ms, key, calls, shapes in sorted(rows, reverse=True)[:count]:
        print(f"    {ms:7.2f} ms  x{calls:<4} {key:<40} {shapes}")


if __name__ == "__main__":
    main()

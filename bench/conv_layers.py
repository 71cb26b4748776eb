"""Where a model's training step spends its convolution time: each conv layer's three kernels.

Usage: python bench/conv_layers.py [--model fastnet] [--width W] [--size 64] [--batch 128]
       [--iters 3] [--compare-taps]

For every Conv2d of the model at the given input side, times on this machine's fast path
(bf16 where the CPU has fast bf16, else fp32; channels_last) the forward convolution, the
gradient with respect to its input (skipped for the first layer, whose input needs none) and the
gradient with respect to its weights, each alone, with the kernels training takes: Conv3x3's
nine matmuls where its rules select them (tinycnn/models/conv.py; marked), oneDNN's otherwise.
Prints GFLOP/s per kernel ("matmuls": all three kernels). The last lines add the layers up: the
rate of the convolutions of one whole training step, and what fraction of the bare forward kernel
rate (bench/train_throughput.py's "conv kernel": 3x3, 128 channels, 56x56, batch 64) that is. A
training step also has batch norm, activations, pooling, the data pipeline and the optimiser, so
this fraction bounds what a whole step can reach.

The kernels taken are the machine's timed choices (models/kernel_choice.py: timed here on first
use and kept under TINYCNN_CACHE), or the static rules of models/conv.py for larger maps.
With --compare-taps, each stride-1 3x3 layer's kernels are timed both ways, oneDNN's and the
matmuls, whatever was chosen, and the last lines say how much slower than the better of the two
the kernels taken are (train.autotune's target: at most 5% on every layer).
"""

from __future__ import annotations

import argparse
import time

import torch

from tinycnn.models import create_model
from tinycnn.models.conv import (
    Conv3x3,
    tap_convolution,
    tap_input_gradient,
    tap_weight_gradient,
)
from tinycnn.runtime import make_runtime

# The label's mark by (matmul forward, matmul input gradient, matmul weight gradient).
PASS_MARKS = ("fwd", "dinput", "wgrad")


def _seconds(fn, iters: int) -> float:
    fn()  # warm-up: kernel selection, allocations
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def conv_inputs(
    model: torch.nn.Module, size: int, batch: int
) -> list[tuple[torch.nn.Conv2d, tuple]]:
    """Each Conv2d with the shape of its input for a (batch, 3, size, size) image batch."""
    found: list[tuple[torch.nn.Conv2d, tuple]] = []
    hooks = [
        m.register_forward_hook(lambda m, args, out: found.append((m, tuple(args[0].shape))))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(batch, 3, size, size))
    for hook in hooks:
        hook.remove()
    return found


def tap_paths(
    conv: torch.nn.Conv2d, shape: tuple, dtype: torch.dtype, first: bool
) -> tuple[bool, bool, bool]:
    """Whether training (bf16 by autocast where dtype is bf16) computes this layer's (forward,
    input gradient, weight gradient) as Conv3x3's nine matmuls: as the machine's timed choices
    say (models/kernel_choice.py; timed here if not yet known), else by the static rules."""
    if not isinstance(conv, Conv3x3):
        return False, False, False
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        return conv.train().tap_paths(torch.empty(shape, requires_grad=not first))


def _mark(paths: tuple[bool, bool, bool]) -> str:
    taken = [name for name, taps in zip(PASS_MARKS, paths, strict=True) if taps]
    return f" (matmul {'+'.join(taken)})" if taken else ""


def kernel_seconds(conv: torch.nn.Conv2d, shape: tuple, dtype: torch.dtype, iters: int,
                   first: bool) -> tuple[dict, int]:  # fmt: skip
    """Seconds of each kernel, {(kind, "onednn" | "taps"): s} for kind in forward, data,
    weight (taps only where the layer can take them; no data gradient for the first layer),
    and the FLOPs of one forward."""
    cl = torch.channels_last
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=cl)
    w = conv.weight.detach().to(dtype).contiguous(memory_format=cl)
    args = (conv.stride, conv.padding, conv.dilation)
    y = torch.nn.functional.conv2d(x, w, None, *args, conv.groups)
    grad = torch.randn_like(y).contiguous(memory_format=cl)
    flops = 2 * y.numel() * w[0].numel()  # multiply-adds of the forward, x2

    def backward(mask: list[bool]):
        return lambda: torch.ops.aten.convolution_backward(
            grad, x, w, None, *args, False, [0, 0], conv.groups, mask
        )

    kernels = {
        ("forward", "onednn"): lambda: torch.nn.functional.conv2d(x, w, None, *args, conv.groups),
        ("data", "onednn"): backward([True, False, False]),
        ("weight", "onednn"): backward([False, True, False]),
    }
    if isinstance(conv, Conv3x3) and conv.stride == (1, 1):
        kernels[("forward", "taps")] = lambda: tap_convolution(x, w)
        kernels[("data", "taps")] = lambda: tap_input_gradient(grad, w)
        kernels[("weight", "taps")] = lambda: tap_weight_gradient(x, grad)
    return {
        key: _seconds(fn, iters) for key, fn in kernels.items() if not first or key[0] != "data"
    }, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--width", type=int, default=None, help="the model's width, if it has one")
    parser.add_argument("--size", type=int, default=64, help="input side (fastnet: 32, 48, 64)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--compare-taps", action="store_true", help="time both kernels each")
    args = parser.parse_args()
    runtime = make_runtime(device="cpu", channels_last=True)
    dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float32
    options = {} if args.width is None else {"width": args.width}
    model = create_model(args.model, num_classes=200, **options)
    layers = conv_inputs(model, args.size, args.batch)
    print(
        f"{args.model}{'' if args.width is None else f' width {args.width}'} at "
        f"{args.size}x{args.size}, batch {args.batch}, {dtype}, channels_last, "
        f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; GFLOP/s per kernel"
        + ("; oneDNN / matmuls" if args.compare_taps else "")
    )
    print(
        f"{'layer (in -> out channels at input side)':<40} "
        f"{'forward':>8} {'d input':>8} {'d weight':>9}"
    )
    total_seconds = total_flops = forward_seconds = forward_flops = 0.0
    worst = (1.0, "", None, None)
    for index, (conv, shape) in enumerate(layers):
        first = index == 0
        seconds, flops = kernel_seconds(conv, shape, dtype, args.iters, first)
        paths = tap_paths(conv, shape, dtype, first)
        taken = {
            kind: seconds.get((kind, "taps" if taps else "onednn"), 0.0)
            for kind, taps in zip(("forward", "data", "weight"), paths, strict=True)
        }
        for kind, chosen in taken.items():  # the chosen kernel against the better of the two
            both = [seconds.get((kind, k)) for k in ("onednn", "taps")]
            if chosen and all(both):
                worst = max(worst, (chosen / min(both), kind, conv, shape), key=lambda w: w[0])
        label = f"{conv.in_channels:>4} -> {conv.out_channels:<4} at {shape[-1]:>2}x{shape[-1]:<2}"
        label += " stride 2" if conv.stride[0] == 2 else ""
        label += _mark(paths)
        if args.compare_taps:
            cells = [
                f"{_rate(flops, seconds.get((kind, 'onednn'))):>6}/"
                f"{_rate(flops, seconds.get((kind, 'taps'))):<6}"
                for kind in ("forward", "data", "weight")
            ]
            print(f"{label:<40} " + " ".join(cells))
        else:
            print(f"{label:<40} " + " ".join(f"{_rate(flops, s):>8}" for s in taken.values()))
        total_seconds += sum(taken.values())
        total_flops += flops * (2 if first else 3)
        forward_seconds += taken["forward"]
        forward_flops += flops
    if args.compare_taps and worst[2] is not None:
        ratio, kind, conv, shape = worst
        print(
            f"the kernels taken are at most {ratio - 1:.1%} slower than the better of the two "
            f"(worst: {kind} of {conv.in_channels} -> {conv.out_channels} at {shape[-1]}x"
            f"{shape[-1]})"
        )
    kernel = _kernel_rate(dtype, args.iters)
    step = total_flops / total_seconds / 1e9
    print(f"forward convolutions alone: {forward_flops / forward_seconds / 1e9:.1f} GFLOP/s")
    print(
        f"all convolutions of a training step: {step:.1f} GFLOP/s = {step / kernel:.0%} of the "
        f"forward conv kernel ({kernel:.1f} GFLOP/s, measured in this run)"
    )


def _rate(flops: int, seconds: float | None) -> str:
    return "-" if not seconds else f"{flops / seconds / 1e9:.1f}"


def _kernel_rate(dtype: torch.dtype, iters: int) -> float:
    """bench/train_throughput.py's reference kernel: 3x3, 128 -> 128 channels, 56x56, batch 64."""
    cl = torch.channels_last
    x = torch.randn(64, 128, 56, 56, dtype=dtype).contiguous(memory_format=cl)
    w = torch.randn(128, 128, 3, 3, dtype=dtype).contiguous(memory_format=cl)
    flops = 2 * 64 * 128 * 56 * 56 * 128 * 9
    torch.nn.functional.conv2d(x, w, None, 1, 1)  # warm-up
    start, done = time.perf_counter(), 0
    while done < iters or time.perf_counter() - start < 2.0:  # as train_throughput.py: >= 2 s
        torch.nn.functional.conv2d(x, w, None, 1, 1)
        done += 1
    return done * flops / (time.perf_counter() - start) / 1e9


if __name__ == "__main__":
    main()

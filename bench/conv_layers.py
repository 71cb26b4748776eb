"""Where a model's training step spends its convolution time: each conv layer's three kernels.

Usage: python bench/conv_layers.py [--model fastnet] [--size 64] [--batch 128] [--iters 3]

For every Conv2d of the model at the given input side, times on this machine's fast path
(bf16 where the CPU has fast bf16, else fp32; channels_last) the forward convolution, the
gradient with respect to its input (skipped for the first layer, whose input needs none) and the
gradient with respect to its weights (Conv3x3's nine matmuls where training takes them, marked),
each alone, and prints GFLOP/s per kernel. The last lines add the layers up: the rate of the
convolutions of one whole training step, and what fraction of the bare forward kernel rate
(bench/train_throughput.py's "conv kernel": 3x3, 128 channels, 56x56, batch 64) that is. A
training step also has batch norm, activations, pooling, the data pipeline and the optimiser,
so this fraction bounds what a whole step can reach.
"""

from __future__ import annotations

import argparse
import time

import torch

from tinycnn.models import create_model
from tinycnn.models.conv import Conv3x3, tap_weight_gradient
from tinycnn.runtime import make_runtime


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


def takes_taps(conv: torch.nn.Conv2d, shape: tuple, dtype: torch.dtype) -> bool:
    """Whether training computes this layer's weight gradient as Conv3x3's nine matmuls."""
    probe = torch.empty(shape, dtype=dtype)
    return isinstance(conv, Conv3x3) and conv.train().takes_tap_path(probe)


def layer_rates(conv: torch.nn.Conv2d, shape: tuple, dtype: torch.dtype, iters: int, first: bool):
    """(forward, input-gradient, weight-gradient) seconds and the FLOPs of one such kernel.

    The weight gradient is the kernel training uses: Conv3x3's matmuls where it takes them.
    """
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

    forward = _seconds(lambda: torch.nn.functional.conv2d(x, w, None, *args, conv.groups), iters)
    data = 0.0 if first else _seconds(backward([True, False, False]), iters)
    if takes_taps(conv, shape, dtype):
        weight = _seconds(lambda: tap_weight_gradient(x, grad), iters)
    else:
        weight = _seconds(backward([False, True, False]), iters)
    return forward, data, weight, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fastnet")
    parser.add_argument("--size", type=int, default=64, help="input side (fastnet: 32, 48, 64)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    runtime = make_runtime(device="cpu", channels_last=True)
    dtype = torch.bfloat16 if runtime.precision == "bf16" else torch.float32
    model = create_model(args.model, num_classes=200)
    layers = conv_inputs(model, args.size, args.batch)
    print(
        f"{args.model} at {args.size}x{args.size}, batch {args.batch}, {dtype}, channels_last, "
        f"{torch.get_num_threads()} threads, CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; GFLOP/s per kernel"
    )
    print(
        f"{'layer (in -> out channels at input side)':<40} "
        f"{'forward':>8} {'d input':>8} {'d weight':>9}"
    )
    total_seconds = total_flops = forward_seconds = forward_flops = 0.0
    for index, (conv, shape) in enumerate(layers):
        first = index == 0
        forward, data, weight, flops = layer_rates(conv, shape, dtype, args.iters, first)
        rates = [flops / s / 1e9 if s else float("nan") for s in (forward, data, weight)]
        label = f"{conv.in_channels:>4} -> {conv.out_channels:<4} at {shape[-1]:>2}x{shape[-1]:<2}"
        label += " stride 2" if conv.stride[0] == 2 else ""
        label += " (matmul wgrad)" if takes_taps(conv, shape, dtype) else ""
        print(f"{label:<40} {rates[0]:8.1f} {rates[1]:8.1f} {rates[2]:9.1f}")
        total_seconds += forward + data + weight
        total_flops += flops * (2 if first else 3)
        forward_seconds += forward
        forward_flops += flops
    kernel = _kernel_rate(dtype, args.iters)
    step = total_flops / total_seconds / 1e9
    print(f"forward convolutions alone: {forward_flops / forward_seconds / 1e9:.1f} GFLOP/s")
    print(
        f"all convolutions of a training step: {step:.1f} GFLOP/s = {step / kernel:.0%} of the "
        f"forward conv kernel ({kernel:.1f} GFLOP/s, measured in this run)"
    )


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

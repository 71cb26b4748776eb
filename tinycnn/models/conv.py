"""A 3x3 convolution that runs as nine matrix products where oneDNN's kernels are slow.

On CPUs, oneDNN's kernels are slow where the maps are small and the channels many: the last
stages of fastnet and the ResNets (384 to 1024 channels at 2x2 to 8x8). Measured on 2-core AMD
EPYCs (batch 128, channels_last, nominal FLOPs; `bench/conv_layers.py --compare-taps` prints
these rates for a model's layers, oneDNN's against the matmuls'):

- float32, Zen 3 with AVX2: weight gradient 512 -> 512 at 2x2 ~35 GFLOP/s against ~245 as nine
  matmuls, 4x4 ~70 against ~209, 256 -> 512 at 8x8 ~95 against ~158; with few channels or larger
  maps oneDNN wins (64 -> 128 at 16x16: 127 against 88). Forward and input gradient: 1024 ->
  1024 at 2x2 ~31 against ~180 (5-6x), at 3x3 ~60 against ~180, at 4x4 ~102 against ~170; 768
  at 2x2 ~55 against ~250; 512 -> 1024 at 4x4 ~86 against ~140; 512 at 2x2 ~145 against ~260;
  while 256 -> 512 at 4x4 (0.85-0.91x) and every layer at 8x8 or more (0.4-0.98x) stay faster
  on oneDNN.
- bfloat16, Zen 4 with AVX512-BF16: weight gradient 768 at 2x2 ~89 against ~545, 1024 at 2x2
  ~73 against ~644, 512 -> 1024 at 4x4 ~107 against ~404, 384 -> 768 at 4x4 ~217 against ~315,
  512 -> 1024 at 8x8 ~246 against ~371; but 256 -> 512 at 8x8 0.80x and every layer with 256
  channels or fewer 0.44-0.72x. Forward and input gradient: 2x2 maps with 512 to 1024 channels
  1.8-3.9x, 1024 at 4x4 1.34-1.41x; 768 at 4x4 (0.85-1.04x), 512 -> 1024 at 4x4 (0.91-1.17x)
  and all larger maps stay on oneDNN.

A 3x3, stride-1, padding-1 convolution is a sum over its nine taps. For the tap at offset (dy, dx)
the output at position p takes the input at p + (dy, dx) times that tap's (cout, cin) weights,
where p + (dy, dx) lies inside the map; outside it lies the padding, whose zeros contribute
nothing, so those positions are simply left out (on a 2x2 map 20 of the 36 nominal products a
position; the counted FLOPs stay the nominal convolution's). With one row per (image, position),
channels last:

- forward: out[p] += x[p + d] W_d^T;
- input gradient: grad_x[p + d] += grad_out[p] W_d;
- weight gradient: grad_w[:, :, 1 + dy, 1 + dx] = G^T X over the positions that overlap,

each a matmul over batch x positions rows: the same sums as the convolution's, in another order.
In bfloat16 each tap's product is rounded once, like the convolution's result, and the nine are
added in float32 before the one final rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinycnn.models.kernel_choice import (
    MAX_TIMED_POSITIONS,
    TIMED_BATCH,
    KernelChoices,
    machine_file,
    shape_key,
)
from tinycnn.models.kernel_choice import measure_pass as _measure_pass

# Where the nine matmuls are the faster kernels, by the dtype they run in: (narrowest channel
# count, most positions per map) pairs, either of which selects the layer. Measured on the two
# 2-core machines above, batch 128; with many cores the matmuls' rows (batch x positions) may
# be too few to keep them busy, and AMX or other CPUs may rank the kernels otherwise: check
# there with bench/conv_layers.py --compare-taps.
TAP_GRADIENT = {torch.float32: ((128, 16), (256, 64)), torch.bfloat16: ((384, 16), (512, 64))}
TAP_CONV = {torch.float32: ((512, 36),), torch.bfloat16: ((512, 4), (1024, 16))}

# Taps as (dy, dx), the centre first: it covers every position, so it starts the sum.
TAPS = [(0, 0)] + [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def uses_tap_gradient(
    c_in: int, c_out: int, height: int, width: int, dtype: torch.dtype = torch.float32
) -> bool:
    """Whether a 3x3 conv with these channels on a height x width map, computing in dtype,
    takes the matmul weight gradient."""
    return _selected(TAP_GRADIENT, c_in, c_out, height * width, dtype)


def uses_tap_conv(
    c_in: int, c_out: int, height: int, width: int, dtype: torch.dtype = torch.float32
) -> bool:
    """Whether such a conv takes the matmul forward and input gradient."""
    return _selected(TAP_CONV, c_in, c_out, height * width, dtype)


def _selected(rules: dict, c_in: int, c_out: int, positions: int, dtype: torch.dtype) -> bool:
    pairs = rules[torch.bfloat16 if dtype == torch.bfloat16 else torch.float32]
    return any(min(c_in, c_out) >= channels and positions <= most for channels, most in pairs)


def tap_convolution(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """F.conv2d(x, weight, bias, 1, 1) for a 3x3 weight, as nine matmuls; channels_last out."""
    out = _sum_of_taps(x, weight, transpose=False)
    return out if bias is None else out + bias.view(1, -1, 1, 1)


def tap_input_gradient(grad_out: Tensor, weight: Tensor) -> Tensor:
    """The gradient with respect to x of a 3x3 stride-1 padding-1 conv, as nine matmuls."""
    return _sum_of_taps(grad_out, weight, transpose=True)


def _sum_of_taps(source: Tensor, weight: Tensor, transpose: bool) -> Tensor:
    """Forward (source x: out[p] += x[p + d] W_d^T) or input gradient (source grad_out:
    grad_x[p + d] += grad_out[p] W_d), one matmul a tap; (B, C, H, W), channels_last."""
    batch, c_source, height, width = source.shape
    c_result = weight.shape[1] if transpose else weight.shape[0]
    rows = source.permute(0, 2, 3, 1)  # a view if channels_last
    result = None
    for dy, dx in TAPS:
        (out_r, in_r), (out_c, in_c) = _overlap(dy, height), _overlap(dx, width)
        read, write = (out_r, out_c), (in_r, in_c)
        if not transpose:
            read, write = write, read
        tap = weight[:, :, 1 + dy, 1 + dx]  # (cout, cin)
        part = rows[:, read[0], read[1], :]
        product = part.reshape(-1, c_source) @ (tap if transpose else tap.t())
        product = product.view(batch, part.shape[1], part.shape[2], c_result)
        if result is None:  # the centre tap: every position; bf16 products add up in fp32
            result = product.float() if product.dtype == torch.bfloat16 else product
        else:
            result[:, write[0], write[1], :] += product
    return result.to(source.dtype).permute(0, 3, 1, 2)


def tap_weight_gradient(x: Tensor, grad_out: Tensor) -> Tensor:
    """grad_w (cout, cin, 3, 3) of a 3x3 stride-1 padding-1 conv, as nine matmuls.

    x: (B, cin, H, W) input; grad_out: (B, cout, H, W). The result is channels_last (the
    layout the model's weights have on the fast path) and in x's dtype. One sum per tap, so
    not differentiable again (no double backward through Conv3x3's training path).
    """
    c_in, height, width = x.shape[1:]
    c_out = grad_out.shape[1]
    x_hwc, g_hwc = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)  # views if channels_last
    taps = []
    for dy in (-1, 0, 1):
        out_rows, in_rows = _overlap(dy, height)
        for dx in (-1, 0, 1):
            out_cols, in_cols = _overlap(dx, width)
            g = g_hwc[:, out_rows, out_cols, :].reshape(-1, c_out)
            inputs = x_hwc[:, in_rows, in_cols, :].reshape(-1, c_in)
            taps.append(g.t() @ inputs)  # (c_out, c_in); no out= view: torch.compile traces it
    return torch.stack(taps, 1).view(c_out, 3, 3, c_in).permute(0, 3, 1, 2)


def _overlap(offset: int, side: int) -> tuple[slice, slice]:
    """Output positions p whose input p + offset lies in [0, side), and those inputs."""
    outputs = slice(max(0, -offset), side - max(0, offset))
    return outputs, slice(max(0, offset), side + min(0, offset))


class _TapConv(torch.autograd.Function):
    """A 3x3 conv whose forward (taps_forward), input gradient (taps_input) and weight gradient
    (taps_grad) are the nine matmuls, each where it is the faster."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, taps_forward: bool,
                taps_input: bool, taps_grad: bool) -> Tensor:  # fmt: skip
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        ctx.taps_input, ctx.taps_grad = taps_input, taps_grad
        if taps_forward:
            return tap_convolution(x, weight, bias)
        return F.conv2d(x, weight, bias, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward: a clear error if asked
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0] and ctx.taps_input:
            grad_x = tap_input_gradient(grad_out, weight)
        elif ctx.needs_input_grad[0]:
            grad_x = _onednn(grad_out, x, weight, 0)
        if ctx.needs_input_grad[1] and ctx.taps_grad:
            grad_w = tap_weight_gradient(x, grad_out)
        elif ctx.needs_input_grad[1]:
            grad_w = _onednn(grad_out, x, weight, 1)
        grad_b = grad_out.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None, None


def _onednn(grad_out: Tensor, x: Tensor, weight: Tensor, which: int) -> Tensor:
    """oneDNN's gradient of a 3x3 stride-1 padding-1 conv: of its input (0) or weights (1)."""
    mask = [which == 0, which == 1, False]
    args = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)
    return torch.ops.aten.convolution_backward(grad_out, x, weight, None, *args)[which]


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(c_in, c_out, 3, stride, padding=1): the same parameters, state dict and
    results; on the CPU in float32 or bfloat16 (bf16 autocast included), on small maps with many
    channels, its forward and gradients are nine matmuls each (``tap_paths``). Exports and
    traces get the plain convolution.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(c_in, c_out, 3, stride=stride, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        paths = self.tap_paths(x)
        if not any(paths):
            return super().forward(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled("cpu"):  # autocast's casts, done here: differentiable
            x, weight = x.to(torch.bfloat16), weight.to(torch.bfloat16)
            bias = None if bias is None else bias.to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            return _TapConv.apply(x, weight, bias, *paths)

    def tap_paths(self, x: Tensor) -> tuple[bool, bool, bool]:
        """Whether this call on x computes (its forward, its input gradient, its weight
        gradient) as the nine matmuls: as timed on this machine (CHOICES) where autotuning is
        on and the map is small, else by the static rules."""
        dtype = self._compute_dtype(x)
        if self.stride != (1, 1) or x.device.type != "cpu" or dtype is None or _tracing():
            return False, False, False
        c_in, c_out, (height, width) = self.in_channels, self.out_channels, x.shape[-2:]
        shape = (c_in, c_out, height, width, dtype)
        grad = torch.is_grad_enabled()
        needed = {"forward": True, "input_grad": grad and x.requires_grad}
        needed["weight_grad"] = grad and self.weight.requires_grad
        conv_rule = uses_tap_conv(*shape)  # the forward and input gradient share their rule
        rules = {"forward": conv_rule, "input_grad": conv_rule}
        rules["weight_grad"] = uses_tap_gradient(*shape)
        chosen = None
        if dtype in TIMED_DTYPES and height * width <= MAX_TIMED_POSITIONS:
            passes = tuple(name for name, need in needed.items() if need)
            layout = {"channels_last": x.is_contiguous(memory_format=torch.channels_last)}
            key = shape_key(*shape, **layout)

            def measure(name: str) -> tuple[float, float]:
                return _measure_pass(name, *shape, TIMED_BATCH, _KERNELS, **layout)

            if torch.compiler.is_compiling():  # a traced graph takes what is known: no timing
                chosen = CHOICES.known(key)  # nor file reads in the trace
            else:
                chosen = CHOICES.choose(key, passes, measure)
        chosen = chosen or {}
        return tuple(need and chosen.get(name, rules[name]) for name, need in needed.items())

    def _compute_dtype(self, x: Tensor) -> torch.dtype | None:
        """The dtype the convolution computes in, or None where the matmuls don't apply."""
        if torch.is_autocast_enabled("cpu"):
            cast = torch.get_autocast_dtype("cpu") == torch.bfloat16
            floats = {x.dtype, self.weight.dtype} <= {torch.float32, torch.bfloat16}
            return torch.bfloat16 if cast and floats else None
        supported = (torch.float32, torch.float64, torch.bfloat16)
        return x.dtype if x.dtype in supported and self.weight.dtype == x.dtype else None


# The dtypes whose kernels are timed; others (float64: tests' exact references) keep the rules.
TIMED_DTYPES = (torch.float32, torch.bfloat16)

# This machine's choices (models/kernel_choice.py); a run sets whether it times (train.autotune).
CHOICES = KernelChoices(machine_file())

# Each pass's kernels, oneDNN's and the matmuls', as f(x, weight, grad_out) for the timing.
_KERNELS = {
    "forward": (lambda x, w, g: F.conv2d(x, w, None, 1, 1), lambda x, w, g: tap_convolution(x, w)),
    "input_grad": (lambda x, w, g: _onednn(g, x, w, 0), lambda x, w, g: tap_input_gradient(g, w)),
    "weight_grad": (
        lambda x, w, g: _onednn(g, x, w, 1),
        lambda x, w, g: tap_weight_gradient(x, g),
    ),
}


def _tracing() -> bool:
    """An export or a TorchScript trace: those keep the one convolution operator."""
    return torch.jit.is_tracing() or torch.compiler.is_exporting()

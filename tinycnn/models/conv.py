"""A 3x3 convolution whose weight gradient on small feature maps is nine matrix products.

On CPUs in float32, oneDNN's weight-gradient kernel is slow where the maps are small and the
channels many: the last stages of fastnet and the ResNets (512 channels at 2x2 to 8x8). Measured
on a 2-core AMD EPYC with AVX2 (batch 128, channels_last, nominal FLOPs): 512 -> 512 at 2x2 runs at
~35 GFLOP/s there against ~245 as nine matmuls, 4x4 ~70 against ~209, 256 -> 512 at 8x8 ~95
against ~158, while with few channels or larger maps oneDNN wins (64 -> 128 at 16x16: 127
against 88). ``bench/conv_layers.py`` prints these rates for a model's layers.

The weight gradient of a 3x3, stride-1, padding-1 convolution, tap by tap: for the tap at offset
(dy, dx), grad_w[:, :, 1 + dy, 1 + dx] = G^T X, where G holds the output gradients at the
positions whose input (y + dy, x + dx) lies inside the map and X those inputs, one row per
(image, position): a (cout, N) x (N, cin) product with N = batch x positions. Padding
contributes zeros, so the positions outside are simply left out: the same sum as the
convolution's, in another order. Forward and input gradient stay oneDNN's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Where the nine matmuls are the faster weight gradient: positions per map up to SMALL_MAP with
# both channel counts at least 128, or up to MEDIUM_MAP with both >= 256. Measured on the 2-core
# AVX2 machine above (batch 128); with many cores the matmuls' rows (batch x positions) may be too
# few to keep them busy: check there with bench/conv_layers.py.
SMALL_MAP, MEDIUM_MAP = 16, 64


def uses_tap_gradient(c_in: int, c_out: int, height: int, width: int) -> bool:
    """Whether a 3x3 conv with these channels on a height x width map takes the matmul path."""
    narrow = min(c_in, c_out)
    positions = height * width
    return (narrow >= 128 and positions <= SMALL_MAP) or (narrow >= 256 and positions <= MEDIUM_MAP)


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
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, 1)

    @staticmethod
    @torch.autograd.function.once_differentiable  # no double backward: a clear error if asked
    def backward(ctx, grad_out: Tensor):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, False, False],
            )[0]  # fmt: skip
        grad_w = tap_weight_gradient(x, grad_out) if ctx.needs_input_grad[1] else None
        grad_b = grad_out.sum((0, 2, 3)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class Conv3x3(nn.Conv2d):
    """nn.Conv2d(c_in, c_out, 3, stride, padding=1): the same parameters, state dict and
    results; in CPU float32 training on small maps its weight gradient is ``tap_weight_gradient``.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, bias: bool = False) -> None:
        super().__init__(c_in, c_out, 3, stride=stride, padding=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.takes_tap_path(x):
            return _TapConv.apply(x, self.weight, self.bias)
        return super().forward(x)

    def takes_tap_path(self, x: Tensor) -> bool:
        """Whether this call on x computes its weight gradient as the nine matmuls."""
        return (
            self.training
            and self.stride == (1, 1)
            and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64)
            and self.weight.dtype == x.dtype
            and not torch.is_autocast_enabled("cpu")  # bf16 machines keep oneDNN's kernels
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and uses_tap_gradient(self.in_channels, self.out_channels, *x.shape[-2:])
        )

"""fastnet: a residual CNN designed for accuracy per training FLOP on 64x64 images and small CPUs.

The layout follows the ResNet-9 that holds the DAWNBench CIFAR-10 records (Page 2018; Myrtle.ai),
moved to Tiny ImageNet's 64x64 images:

- a stride-2 3x3 stem, so that no layer runs at the full input resolution (the stem is ~1% of the
  FLOPs; every later layer sees half the side, a quarter of the positions);
- three stages, each one 3x3 conv (batch norm, ReLU) then a 2x2 max-pool, doubling the channels
  (``width``, 2x, 4x, 8x with the stem at ``width``); ``residual`` says after which stages a
  residual block of two 3x3 convs follows (ResNet-9: after the first and the last);
- global max- and average-pooling concatenated, one fc layer scaled by ``head_scale`` (Page's 1/8:
  a cooler softmax at the start, which lets the net take a high learning rate).

Why this shape suits the CPUs tinycnn runs on: almost all FLOPs are 3x3 convolutions with 128 to
512 channels at 32x32 or below (at a 64 input), where oneDNN's kernels run at their best rate;
there are few batch-norm/ReLU passes per FLOP (those are memory-bound and not counted as FLOPs),
and the channel counts are multiples of 16 for the AVX2/AVX-512/AMX blocking. The last stage's
maps are small (2x2 to 4x4), where oneDNN's kernels are slow (its weight gradient most, in fp32
and bf16): its 3x3 convs are ``Conv3x3`` (models/conv.py), which computes them there as nine
matmuls each. The measured share of
the machine's conv-kernel rate is printed by bench/train_throughput.py (--fast-sizes), and per
layer and kernel by bench/conv_layers.py.
At 64x64 one training step costs ~2.3 GFLOP per image, about half of paper8's 4.4 at 56x56; at
32x32, a quarter of that, which is what progressive resizing (augment.sizes) spends early on.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinycnn.errors import ConfigError
from tinycnn.models.conv import Conv3x3
from tinycnn.models.registry import register_model
from tinycnn.models.resnet import make_activation


def _conv_bn(c_in: int, c_out: int, activation: str, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        Conv3x3(c_in, c_out, stride),  # nn.Conv2d with a faster weight gradient on small maps
        nn.BatchNorm2d(c_out),
        make_activation(activation, c_out),
    )


class Residual(nn.Module):
    """x + conv-bn-relu(conv-bn-relu(x)), the last batch norm's scale starting at zero."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(channels, channels, activation), _conv_bn(channels, channels, activation)
        )
        nn.init.zeros_(self.body[1][1].weight)  # the block starts as the identity

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class FastNet(nn.Module):
    """Stride-2 stem, three conv-pool stages (some with a residual block), max+avg pool, fc."""

    def __init__(
        self,
        num_classes: int,
        width: int,
        residual: list[int],
        head_scale: float,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ConfigError(f"width {width!r}: expected a positive whole number")
        if not all(isinstance(s, int) and 1 <= s <= 3 for s in residual):
            raise ConfigError(f"residual {residual!r}: expected stage numbers among 1, 2, 3")
        if not head_scale > 0:
            raise ConfigError(f"head_scale {head_scale!r}: expected a positive number")
        layers: list[nn.Module] = [_conv_bn(3, width, activation, stride=2)]
        c_in = width
        for stage in (1, 2, 3):
            c_out = width * 2**stage
            layers += [_conv_bn(c_in, c_out, activation), nn.MaxPool2d(2)]
            if stage in residual:
                layers.append(Residual(c_out, activation))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.max_pool, self.avg_pool = nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(2 * c_in, num_classes)
        self.head_scale = head_scale

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < 16:
            raise ConfigError(
                f"image size {tuple(x.shape[-2:])} is too small for fastnet: the stem and three "
                "pools halve it four times; use inputs of 16x16 or more"
            )
        x = self.features(x)
        pooled = torch.cat([self.max_pool(x).flatten(1), self.avg_pool(x).flatten(1)], dim=1)
        return self.classifier(pooled) * self.head_scale


@register_model(
    "fastnet",
    default_input=64,
    description="ResNet-9-style net for accuracy per FLOP: stride-2 stem, 64-512 channels",
)
def fastnet(
    num_classes: int = 200,
    *,
    width: int = 64,
    residual: tuple[int, ...] = (1, 3),
    head_scale: float = 0.125,
    activation: str = "relu",
) -> FastNet:
    """fastnet with ``width`` stem channels (stages 2x, 4x, 8x) and residual blocks after the
    stages listed in ``residual``; ``activation``: relu or prelu (a learned slope a channel)."""
    return FastNet(num_classes, width, list(residual), head_scale, activation)

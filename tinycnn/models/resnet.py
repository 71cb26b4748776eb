"""ResNet-18 for 64x64 images, plain (He et al. 2016) and pre-activation (He et al., ECCV 2016).

Adapted to small images as on CIFAR: a 3x3 stride-1 stem and no stem max-pool, so a 56x56 crop
keeps 56x56 maps in the first stage (then 28, 14, 7) instead of ImageNet's 14x14 after the stem.
Options common to the registry: ``activation`` ("relu" or "prelu", one learned slope per
channel) and ``width`` (channels of the first stage; the others are 2x, 4x, 8x).
"""

from __future__ import annotations

from torch import Tensor, nn

from tinycnn.errors import ConfigError
from tinycnn.models.conv import Conv3x3
from tinycnn.models.registry import register_model

STAGES = (2, 2, 2, 2)  # blocks per stage: ResNet-18


def make_activation(kind: str, channels: int) -> nn.Module:
    if kind == "relu":
        return nn.ReLU(inplace=True)
    if kind == "prelu":
        return nn.PReLU(channels)
    raise ConfigError(f"activation {kind!r}: expected relu or prelu")


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return Conv3x3(c_in, c_out, stride)


def _shortcut(c_in: int, c_out: int, stride: int) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    projection = nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
    return nn.Sequential(projection, nn.BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    """conv-bn-act-conv-bn, plus the shortcut, then act."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.act1 = make_activation(activation, c_out)
        self.conv2, self.bn2 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = _shortcut(c_in, c_out, stride)
        self.act2 = make_activation(activation, c_out)

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(out)) + self.shortcut(x))


class PreActBlock(nn.Module):
    """bn-act-conv-bn-act-conv, plus the shortcut (taken after the first bn-act if it projects)."""

    def __init__(self, c_in: int, c_out: int, stride: int, activation: str) -> None:
        super().__init__()
        self.bn1, self.act1 = nn.BatchNorm2d(c_in), make_activation(activation, c_in)
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn2, self.act2 = nn.BatchNorm2d(c_out), make_activation(activation, c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.projects = stride != 1 or c_in != c_out
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False) if self.projects else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        pre = self.act1(self.bn1(x))
        skip = self.shortcut(pre) if self.projects else x
        return self.conv2(self.act2(self.bn2(self.conv1(pre)))) + skip


class ResNet(nn.Module):
    """3x3 stem, four stages of blocks (strides 1, 2, 2, 2), global average pool, one fc."""

    def __init__(
        self, num_classes: int, block: type[nn.Module], width: int, activation: str
    ) -> None:
        super().__init__()
        if not isinstance(width, int) or width < 1:
            raise ConfigError(f"width {width!r}: expected a positive whole number")
        self.preact = block is PreActBlock
        stem = [_conv3x3(3, width)]
        if not self.preact:  # a pre-activation net normalises at the start of each block
            stem += [nn.BatchNorm2d(width), make_activation(activation, width)]
        self.stem = nn.Sequential(*stem)
        layers, c_in = [], width
        for index, blocks in enumerate(STAGES):
            c_out = width * 2**index
            for k in range(blocks):
                stride = 2 if index > 0 and k == 0 else 1
                layers.append(block(c_in, c_out, stride, activation))
                c_in = c_out
        self.stages = nn.Sequential(*layers)
        # A pre-activation net ends its last block without bn-act: add them before pooling.
        head = [nn.BatchNorm2d(c_in), make_activation(activation, c_in)] if self.preact else []
        self.head = nn.Sequential(*head, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c_in, num_classes)
        self._zero_init_last_bn()

    def _zero_init_last_bn(self) -> None:
        # Each residual branch starts as the identity (Goyal et al. 2017): easier early training.
        for module in self.stages:
            if isinstance(module, BasicBlock):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.head(self.stages(self.stem(x))))


@register_model(
    "resnet18",
    default_input=56,
    description="ResNet-18 for 64x64 images: 3x3 stem, no stem max-pool, 64-512 channels",
)
def resnet18(num_classes: int = 200, *, width: int = 64, activation: str = "relu") -> ResNet:
    """ResNet-18 adapted to Tiny ImageNet; 11,271,432 parameters with 200 classes."""
    return ResNet(num_classes, BasicBlock, width, activation)


@register_model(
    "preact_resnet18",
    default_input=56,
    description="pre-activation ResNet-18 for 64x64 images (bn-relu-conv blocks)",
)
def preact_resnet18(num_classes: int = 200, *, width: int = 64, activation: str = "relu") -> ResNet:
    """Pre-activation ResNet-18 adapted to Tiny ImageNet, as resnet18 otherwise."""
    return ResNet(num_classes, PreActBlock, width, activation)

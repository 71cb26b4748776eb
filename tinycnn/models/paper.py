"""The paper's plain CNNs: stacked 3x3 conv layers, a few max-pools, a fully connected head.

Reading of the text: the paper says its 2x2 max-pools have stride 1, but with stride 1 nothing
shrinks and the first fc layer could not have the size the paper implies; we read stride 2, so a
56x56 crop goes 56 -> 28 -> 14 -> 7 through the three pools of ``paper8`` and the first fc layer
takes 128*7*7 = 6272 inputs.

The paper names a "shallow model" and a "5 layer CNN" without their shapes (section 4.1 mentions
3-layer and 5-layer models with 32 filters); ``shallow`` and ``cnn5`` below are our reading,
counted in weight layers (conv + fc). Models keep PyTorch's default initialisation; training
applies the paper's scheme with ``tinycnn.models.init_weights``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from tinycnn.errors import ConfigError
from tinycnn.models.conv import Conv3x3
from tinycnn.models.registry import register_model

ACTIVATIONS = ("relu", "prelu")


def _positive_ints(option: str, values: Sequence[int], *, allow_empty: bool) -> list[int]:
    """``values`` as a list, or a ConfigError quoting it when it is not a list of ints >= 1."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise ConfigError(f"{option} {values!r} must be a list of positive integers")
    if not values and not allow_empty:
        raise ConfigError(f"{option} {values!r} must not be empty")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{option} {list(values)!r} must hold positive integers, not {value!r}"
            )
    return list(values)


def _check_scalar_options(
    num_classes: int,
    dropout: float,
    activation: str,
    batch_norm: bool,
    input_size: int,
    in_channels: int,
) -> None:
    """Raise a ConfigError quoting the first impossible scalar option."""
    for option, value in (
        ("num_classes", num_classes),
        ("input_size", input_size),
        ("in_channels", in_channels),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{option} {value!r} must be a positive integer")
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ConfigError(f"dropout {dropout!r} must be a probability in [0, 1)")
    if activation not in ACTIVATIONS:
        raise ConfigError(f"activation {activation!r} is not one of {', '.join(ACTIVATIONS)}")
    if not isinstance(batch_norm, bool):
        raise ConfigError(f"batch_norm {batch_norm!r} must be true or false")


def _pooled_size(input_size: int, pools: int) -> int:
    """Side of the feature map after ``pools`` 2x2/2 max-pools, or a ConfigError if not exact."""
    factor = 2**pools
    if input_size < factor:
        raise ConfigError(
            f"input_size {input_size} is too small: {pools} max-pools shrink it "
            f"below 1 pixel; use at least {factor}"
        )
    if input_size % factor:
        # Pooling would silently drop the last rows and columns of the image.
        raise ConfigError(
            f"input_size {input_size} must be divisible by {factor} "
            f"(2 per max-pool, {pools} max-pools)"
        )
    return input_size // factor


def _activation(kind: str, channels: int) -> nn.Module:
    # PReLU learns one negative slope per channel (the paper's future work).
    return nn.ReLU(inplace=True) if kind == "relu" else nn.PReLU(channels)


class PaperCNN(nn.Module):
    """[conv3x3 - (BN) - act - (maxpool 2x2/2)]xK - flatten - [fc - (BN) - act - dropout]xM - fc.

    Input (N, in_channels, input_size, input_size) float, any device or dtype; output logits
    (N, num_classes). ``forward_head(..., pre_logits=True)`` gives the (N, num_features) codes of
    the last hidden layer, which the t-SNE analysis embeds.
    """

    def __init__(
        self,
        num_classes: int = 200,
        *,
        conv_channels: Sequence[int],
        pool_after: Sequence[int],
        fc_widths: Sequence[int],
        dropout: float = 0.5,
        activation: str = "relu",
        batch_norm: bool = False,
        input_size: int = 56,
        in_channels: int = 3,
    ) -> None:
        """Build the layers; every option is checked first and a ConfigError quotes a bad one.

        Args:
            num_classes: width of the output layer.
            conv_channels: filters of each 3x3, stride 1, padding 1 conv layer, in order.
            pool_after: 0-based indices of the conv layers followed by a 2x2 max-pool, stride 2.
            fc_widths: widths of the hidden fc layers (the output layer is not listed).
            dropout: probability of zeroing a hidden fc activation; conv layers get none.
            activation: "relu", or "prelu" for a learned slope per channel.
            batch_norm: batch norm after each conv and hidden fc layer, before the activation.
            input_size: side of the square input; fixes the first fc layer's input width.
            in_channels: channels of the input image.
        """
        super().__init__()
        _check_scalar_options(num_classes, dropout, activation, batch_norm, input_size, in_channels)
        conv_channels = _positive_ints("conv_channels", conv_channels, allow_empty=False)
        fc_widths = _positive_ints("fc_widths", fc_widths, allow_empty=True)
        pools = _check_pool_after(pool_after, conv_channels)
        side = _pooled_size(input_size, len(pools))
        self.input_size = input_size

        features: list[nn.Module] = []
        width = in_channels
        for index, channels in enumerate(conv_channels):
            # BN's shift makes the conv bias redundant.
            # nn.Conv2d(width, channels, 3, padding=1): its two kernels timed on small maps
            features.append(Conv3x3(width, channels, bias=not batch_norm))
            if batch_norm:
                features.append(nn.BatchNorm2d(channels))
            features.append(_activation(activation, channels))
            if index in pools:
                features.append(nn.MaxPool2d(2, stride=2))
            width = channels
        self.features = nn.Sequential(*features)

        hidden: list[nn.Module] = [nn.Flatten()]
        width = conv_channels[-1] * side * side
        for fc_width in fc_widths:
            hidden.append(nn.Linear(width, fc_width, bias=not batch_norm))
            if batch_norm:
                hidden.append(nn.BatchNorm1d(fc_width))
            hidden += [_activation(activation, fc_width), nn.Dropout(dropout)]
            width = fc_width
        self.hidden = nn.Sequential(*hidden)
        self.num_features = width
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Conv feature maps (N, C, side, side) of images (N, in_channels, size, size)."""
        size = images.shape[-2:]
        if tuple(size) != (self.input_size, self.input_size):
            raise ConfigError(
                f"image size {tuple(size)} does not match input_size "
                f"{self.input_size}; crop the images or rebuild the model"
            )
        return self.features(images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (N, num_classes), or if ``pre_logits`` the last hidden codes (N, num_features)."""
        codes = self.hidden(features)
        return codes if pre_logits else self.classifier(codes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) of images (N, in_channels, input_size, input_size)."""
        return self.forward_head(self.forward_features(images))


def _check_pool_after(pool_after: Sequence[int], conv_channels: list[int]) -> set[int]:
    """The set of pooled conv indices, or a ConfigError quoting one out of range or repeated."""
    if isinstance(pool_after, str | bytes) or not isinstance(pool_after, Sequence):
        raise ConfigError(f"pool_after {pool_after!r} must be a list of conv layer indices")
    last = len(conv_channels) - 1
    for index in pool_after:
        if isinstance(index, bool) or not isinstance(index, int):
            raise ConfigError(f"pool_after index {index!r} is not a conv layer index 0..{last}")
        if not 0 <= index <= last:
            # Most often conv_channels was changed alone and pool_after kept the model's
            # default, which counts the layers of the default channel list.
            raise ConfigError(
                f"pool_after {list(pool_after)!r} pools after conv layer {index}, but "
                f"conv_channels {conv_channels!r} has {last + 1} conv layers (0..{last}): "
                "pool_after counts positions in conv_channels, so a new channel list needs "
                f"its own pool_after, with indices 0..{last}"
            )
    if len(set(pool_after)) != len(pool_after):
        raise ConfigError(f"pool_after {list(pool_after)!r} repeats an index")
    return set(pool_after)


# The paper's models are PaperCNN with their own defaults: a partial's signature is PaperCNN's
# with these defaults, so the registry lists, checks and fills in their options as for any factory.

# [[conv-relu]x2 - pool]x2 - conv-relu-pool - fc 400 - fc 400 - fc; 3,343,720 parameters.
paper8 = partial(
    PaperCNN,
    conv_channels=(128, 128, 128, 128, 128),
    pool_after=(1, 3, 4),
    fc_widths=(400, 400),
    dropout=0.5,
)
register_model(
    "paper8",
    default_input=56,
    description="the paper's final 8-layer CNN: 5 conv x128, 3 pools, fc 400-400",
)(paper8)

# [conv-relu-pool]x3 - fc 400 - fc: 5 weight layers, 32 filters; 727,192 parameters. Three pools
# as in paper8 (56 -> 7), so the fc 400 takes 32*7*7 = 1568 inputs. No dropout by default: the
# paper lists dropout only for the 8-layer model.
cnn5 = partial(
    PaperCNN, conv_channels=(32, 32, 32), pool_after=(0, 1, 2), fc_widths=(400,), dropout=0.0
)
register_model(
    "cnn5",
    default_input=56,
    description="our reading of the paper's 5 layer CNN: 3 conv x32, fc 400",
)(cnn5)

# [conv-relu-pool]x2 - fc: 3 weight layers, 32 filters; 1,264,744 parameters. The output layer
# reads the 32*14*14 = 6272 pooled features directly, so dropout (fc layers only) has nothing to
# act on unless fc_widths adds hidden layers.
shallow = partial(PaperCNN, conv_channels=(32, 32), pool_after=(0, 1), fc_widths=(), dropout=0.0)
register_model(
    "shallow",
    default_input=56,
    description="our reading of the paper's shallow model: 2 conv x32, no hidden fc",
)(shallow)

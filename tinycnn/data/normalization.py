"""How pixels are centred after augmentation: per channel, by Caffe's mean image, or not at all.

A ``Normalization`` holds the statistics a run was trained with (from its cache), and a checkpoint
carries them, so that evaluation, prediction and export centre pixels exactly as training did.
data/augment.py applies it to training and evaluation views (its docstring says why the result is
exact); export.py builds it into the exported graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from tinycnn.errors import ConfigError

CHANNELS = 3  # RGB, the last axis of the uint8 dataset
OUTPUT_DTYPE = torch.float32  # what the model consumes; uint8 -> float happens once, in augment
NORMALIZATION_KINDS = ("none", "channel", "mean_image")


@dataclass(frozen=True, eq=False)
class Normalization:
    """How pixels are centred after augmentation (see the module docstring).

    kind: "none"; "channel" with channel_mean, channel_std (3 values each, 0-255 scale); or
    "mean_image" with mean_image (H, W, 3), 0-255 scale (the cache's mean_image.npy). Values are
    stored as float32 tensors; ``channel`` and ``from_mean_image`` are the short spellings.
    scale: a factor applied after the centring, as Caffe's ``transform_param { scale }``
    (1/255 puts 0-255 pixels on a 0-1 scale); 1 leaves the values as they are.
    """

    kind: str = "none"
    mean_image: Tensor | np.ndarray | None = None
    channel_mean: Tensor | Sequence[float] | None = None
    channel_std: Tensor | Sequence[float] | None = None
    scale: float = 1.0

    @classmethod
    def channel(
        cls, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, scale: float = 1.0
    ) -> Normalization:
        """(x - mean) / std per RGB channel; mean, std: 3 values on the 0-255 scale."""
        return cls("channel", channel_mean=mean, channel_std=std, scale=scale)

    @classmethod
    def from_mean_image(cls, mean_image: np.ndarray | Tensor, scale: float = 1.0) -> Normalization:
        """x - mean_image at each pixel's source position (Caffe); mean_image: (H, W, 3) 0-255."""
        return cls("mean_image", mean_image=mean_image, scale=scale)

    def __post_init__(self) -> None:
        if self.kind not in NORMALIZATION_KINDS:
            raise ConfigError(
                f"Normalization.kind must be one of {NORMALIZATION_KINDS}, got {self.kind!r}"
            )
        scale = self.scale
        if (
            isinstance(scale, bool)
            or not isinstance(scale, int | float)
            or not 0 < scale < math.inf
        ):
            raise ConfigError(f"Normalization.scale must be a finite number > 0, got {scale!r}")
        object.__setattr__(self, "scale", float(scale))
        needed = {"channel": ("channel_mean", "channel_std"), "mean_image": ("mean_image",)}
        for name in needed.get(self.kind, ()):
            value = getattr(self, name)
            if value is None:
                raise ConfigError(f"Normalization kind {self.kind!r} needs {name}, got None")
            try:
                if isinstance(value, np.ndarray):  # a copy: the cache's arrays are read-only maps
                    value = np.array(value, dtype=np.float32)
                value = torch.as_tensor(value, dtype=OUTPUT_DTYPE)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ConfigError(f"Normalization.{name} must be numbers, got {value!r}") from error
            object.__setattr__(self, name, value)
        if self.kind == "channel":
            self._check_channel_values()
        if self.kind == "mean_image" and (
            self.mean_image.dim() != 3 or self.mean_image.shape[-1] != CHANNELS
        ):
            shape = tuple(self.mean_image.shape)
            raise ConfigError(f"Normalization.mean_image must have shape (H, W, 3), got {shape}")

    def _check_channel_values(self) -> None:
        for name in ("channel_mean", "channel_std"):
            value = getattr(self, name)
            if value.shape != (CHANNELS,) or not bool(torch.isfinite(value).all()):
                raise ConfigError(
                    f"Normalization.{name} must be 3 finite numbers, got {value.tolist()}"
                )
        if not bool((self.channel_std > 0).all()):
            raise ConfigError(
                f"Normalization.channel_std must be > 0, got {self.channel_std.tolist()}"
            )

    def to(self, device: torch.device | str) -> Normalization:
        """A copy with its tensors on ``device``: do this once, not per batch."""
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device)
        return Normalization(**moved)

    def _check_fits(self, height: int, width: int) -> None:
        """Raise ConfigError unless a mean image matches images of ``height`` x ``width``."""
        if self.kind == "mean_image" and tuple(self.mean_image.shape[:2]) != (height, width):
            raise ConfigError(
                f"Normalization.mean_image is {tuple(self.mean_image.shape[:2])} pixels, "
                f"but the images are {(height, width)}"
            )

    def _apply_(self, rows: Tensor, select: Callable[[Tensor], Tensor]) -> None:
        """Normalise image rows in place.

        rows: (..., w * 3) float32, RGB-interleaved pixels of image rows.
        select: maps the (H, W, 3) mean image to the pixels' source positions, shaped as rows.
        """
        if self.kind == "channel":
            # Repeat the 3 channel values along the row: a long inner dimension vectorises.
            pixels_per_row = rows.shape[-1] // CHANNELS
            mean = self.channel_mean.to(rows.device).repeat(pixels_per_row)
            std = self.channel_std.to(rows.device).repeat(pixels_per_row)
            rows.sub_(mean).div_(std)
        elif self.kind == "mean_image":
            rows.sub_(select(self.mean_image.to(rows.device)))
        if self.scale != 1.0:
            rows.mul_(self.scale)

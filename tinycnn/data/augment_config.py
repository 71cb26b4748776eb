"""What training augmentation does (AugmentConfig): its settings and their checks, the default
crop, and the progressive-resizing schedule (which input side the model sees at each iteration).

augment.py applies it to batches; this module holds no tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from tinycnn.errors import ConfigError


@dataclass
class AugmentConfig:
    """Random training augmentation; the defaults are the paper's 56x56 crops and mirrors."""

    # Square random crop side in pixels; 0 = the image size (shifted within the padding).
    # None (unset): default_crop of the images' side, the paper's 56 on 64x64 images; train
    # lowers it to a side the model takes (crops.fit_crop) and writes that into the run's config.
    crop: int | None = None
    flip: bool = True  # horizontal mirror with probability 1/2
    tint: float = 0.0  # per-image, per-channel additive constant ~ U[-tint, tint], 0-255 scale
    contrast: float = 0.0  # per-image multiplier ~ U[1 - contrast, 1 + contrast]
    noise_std: float = 0.0  # Gaussian pixel noise std, 0-255 scale (the paper used 1)
    pad: int = 0  # reflect padding in pixels before cropping (CIFAR-style translations)
    mixup: float = 0.0  # Mixup's Beta(alpha, alpha); 0 = off (data/mixing.py)
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0 = off; both on: one per batch
    # Progressive resizing: the crop is resized to these model input sides, smallest first; the
    # last is also the evaluation size. size_until: the fraction of the run's iterations at which
    # each size but the last ends. Empty: the model sees the crop as it is.
    sizes: list[int] = field(default_factory=list)
    size_until: list[float] = field(default_factory=list)
    # With a cyclic schedule (schedule.name = "cyclic"): the sizes run again within each cycle,
    # size_until then being fractions of the cycle, so every cycle's snapshot ends at the last
    # size. False: one pass over the whole run.
    sizes_per_cycle: bool = False

    def validate(self, image_size: tuple[int, int] | None = None) -> None:
        """Raise ConfigError for impossible values; also check against ``image_size`` (H, W)."""
        for name in ("crop", "pad"):
            value = getattr(self, name)
            if name == "crop" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"augment.{name} must be an integer >= 0, got {value!r}")
        for name in ("flip", "sizes_per_cycle"):
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                raise ConfigError(f"augment.{name} must be true or false, got {value!r}")
        for name in ("tint", "contrast", "noise_std", "mixup", "cutmix"):
            value = getattr(self, name)
            real = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not real or not math.isfinite(value) or value < 0:
                raise ConfigError(f"augment.{name} must be a number >= 0, got {value!r}")
        if self.contrast >= 1:
            # A factor of 0 or less would blank or invert the image.
            raise ConfigError(f"augment.contrast must be < 1, got {self.contrast!r}")
        self._validate_sizes()
        if image_size is not None:
            self._validate_size(*image_size)

    def _validate_sizes(self) -> None:
        sizes, until = list(self.sizes), list(self.size_until)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            raise ConfigError(f"augment.sizes must be whole numbers > 0, got {sizes!r}")
        if len(until) != max(len(sizes) - 1, 0):
            raise ConfigError(
                f"augment.size_until = {until!r}: give one fraction for each size but the "
                f"last ({max(len(sizes) - 1, 0)} for sizes = {sizes!r})"
            )
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in until)
        if not numbers or not all(a < b for a, b in zip([0, *until], [*until, 1], strict=True)):
            raise ConfigError(
                f"augment.size_until = {until!r}: fractions must rise strictly within (0, 1)"
            )

    def _validate_size(self, height: int, width: int) -> None:
        side = min(height, width)
        if self.pad >= side:
            # Reflection cannot reach further than the image is wide.
            raise ConfigError(f"augment.pad must be < image side {side}, got {self.pad!r}")
        if self.crop is not None and self.crop > side:
            # Evaluation's views come from the unpadded image: pad only shifts the crop.
            raise ConfigError(
                f"augment.crop must be <= the image side {side} (pad only shifts the "
                f"crop), got {self.crop!r}"
            )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the augmented images for inputs of ``height`` x ``width`` pixels."""
        crop = default_crop(min(height, width)) if self.crop is None else self.crop
        return (crop, crop) if crop else (height, width)


def default_crop(side: int) -> int:
    """The crop side of an unset AugmentConfig.crop: 7/8 of the image side, rounded down, as
    the paper's 56x56 crops of 64x64 images."""
    return max(1, side * 7 // 8)

"""Batched augmentation of uint8 image batches on their device: crop, flip, contrast, tint, noise.

Input is a batch sliced from the in-memory dataset, ``(B, H, W, 3)`` uint8 HWC (as in the cache).
Output is float32 ``(B, 3, h, w)`` in channels_last memory format (a free permute of the HWC work
buffer), on the 0-255 scale unless a ``Normalization`` is given. Nothing loops over samples:
crop, flip and reflect padding are two gathers (rows, then columns) with per-sample index vectors
(a flip is a reversed column index, padding a reflected one, so both cost nothing), and the rest
are whole-batch elementwise ops.

Randomness comes only from the caller's ``torch.Generator``, which must live on the batch's device
(``torch.Generator(device=images.device)``): the random numbers are drawn there, so a CUDA batch
never waits on the host, and a seed fixes the result (bit-identical on one device and torch build).
``augment_batch`` is ``sample_params`` then ``apply_augment``; call the two yourself to see or
reuse the per-sample choices.

Normalisation (a ``Normalization``, data/normalization.py), and why it is exact: pixels are
centred after the 0-255 clamp, the same way for training and evaluation views.
``Normalization.channel`` subtracts a per-channel mean and divides by a per-channel std, which
commutes with cropping. ``Normalization.from_mean_image`` follows Caffe, which subtracts the full
mean image *before* cropping (and mirrors afterwards): here the mean image is gathered with the
very indices used for the pixels (crop offset, reflect padding, mirror), so the result equals
"subtract the mean image from the full image, then pad, crop and flip" exactly, at the cost of
one small gather instead of a full-size subtraction.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from tinycnn.data.normalization import CHANNELS, OUTPUT_DTYPE, Normalization
from tinycnn.errors import ConfigError

PIXEL_MAX = 255.0  # uint8 scale: augmented pixels are clamped to [0, PIXEL_MAX]

# A view of an image: (top row, left column, mirrored), in unpadded pixel coordinates.
View = tuple[int, int, bool]


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
                raise ConfigError(f"AugmentConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("flip", "sizes_per_cycle"):
            if not isinstance(getattr(self, name), bool):
                value = getattr(self, name)
                raise ConfigError(f"AugmentConfig.{name} must be true or false, got {value!r}")
        for name in ("tint", "contrast", "noise_std", "mixup", "cutmix"):
            value = getattr(self, name)
            real = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not real or not math.isfinite(value) or value < 0:
                raise ConfigError(f"AugmentConfig.{name} must be a number >= 0, got {value!r}")
        if self.contrast >= 1:
            # A factor of 0 or less would blank or invert the image.
            raise ConfigError(f"AugmentConfig.contrast must be < 1, got {self.contrast!r}")
        self._validate_sizes()
        if image_size is not None:
            self._validate_size(*image_size)

    def _validate_sizes(self) -> None:
        sizes, until = list(self.sizes), list(self.size_until)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
            raise ConfigError(f"AugmentConfig.sizes must be whole numbers > 0, got {sizes!r}")
        if len(until) != max(len(sizes) - 1, 0):
            raise ConfigError(
                f"AugmentConfig.size_until = {until!r}: give one fraction for each size but the "
                f"last ({max(len(sizes) - 1, 0)} for sizes = {sizes!r})"
            )
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in until)
        if not numbers or not all(a < b for a, b in zip([0, *until], [*until, 1], strict=True)):
            raise ConfigError(
                f"AugmentConfig.size_until = {until!r}: fractions must rise strictly within (0, 1)"
            )

    def input_size_at(
        self, iteration: int, total: int, ends: list[int] | None = None
    ) -> int | None:
        """The model input side for this iteration (0-based) of ``total``; None: the crop's own.

        Size k is used from iteration round(size_until[k-1] * total) on; with ``ends`` (see
        phases), from that fraction of each span on.
        """
        if not self.sizes:
            return None
        done = 0
        for steps, size in self.phases(total, ends):
            done += steps
            if iteration < done:
                return size
        return self.sizes[-1]

    def phases(self, total: int, ends: list[int] | None = None) -> list[tuple[int, int]]:
        """(iterations, input side) of each progressive-resizing phase of a ``total``-iteration
        run, in order (one phase of the crop's side, 0 here, when sizes is empty).

        ``ends``: the iterations at which the sizes start again, the last being ``total`` (a
        cyclic schedule's cycle ends); default: one pass over the whole run.
        """
        if not self.sizes:
            return [(total, 0)]
        result, start = [], 0
        for end in ends or [total]:
            span = end - start
            bounds = [0, *(round(u * span) for u in self.size_until), span]
            pairs = zip(bounds[:-1], bounds[1:], self.sizes, strict=True)
            result += [(stop - begin, size) for begin, stop, size in pairs]
            start = end
        return result

    def _validate_size(self, height: int, width: int) -> None:
        side = min(height, width)
        if self.pad >= side:
            # Reflection cannot reach further than the image is wide.
            raise ConfigError(f"AugmentConfig.pad must be < image side {side}, got {self.pad!r}")
        if self.crop is not None and self.crop > side + 2 * self.pad:
            raise ConfigError(
                f"AugmentConfig.crop must be <= image side + 2 * pad = {side + 2 * self.pad}, "
                f"got {self.crop!r}"
            )

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the augmented images for inputs of ``height`` x ``width`` pixels."""
        crop = default_crop(min(height, width)) if self.crop is None else self.crop
        return (crop, crop) if crop else (height, width)


def default_crop(side: int) -> int:
    """The crop side of an unset AugmentConfig.crop: 7/8 of the image side, rounded down, as
    the paper's 56x56 crops of 64x64 images."""
    return max(1, side * 7 // 8)


@dataclass(frozen=True, eq=False)
class AugmentParams:
    """The per-sample random choices for one batch, on the generator's device.

    offset_y, offset_x: (B,) int64, top-left corner of the crop in padded coordinates.
    flipped: (B,) bool, horizontal mirror.
    contrast: (B,) float32 multiplier, or None when contrast is off.
    tint: (B, 3) float32 per-channel addend (0-255 scale), or None when tint is off.
    """

    offset_y: Tensor
    offset_x: Tensor
    flipped: Tensor
    contrast: Tensor | None
    tint: Tensor | None


def _check_images(images_u8: Tensor) -> tuple[int, int, int]:
    """(B, H, W) of a uint8 (B, H, W, 3) batch, or ConfigError."""
    if not isinstance(images_u8, Tensor) or images_u8.dtype != torch.uint8:
        kind = images_u8.dtype if isinstance(images_u8, Tensor) else type(images_u8).__name__
        raise ConfigError(f"images must be a uint8 tensor, got {kind}")
    if images_u8.dim() != 4 or images_u8.shape[-1] != CHANNELS:
        raise ConfigError(f"images must have shape (B, H, W, 3), got {tuple(images_u8.shape)}")
    batch, height, width, _ = images_u8.shape
    return batch, height, width


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    """ConfigError unless ``generator`` draws on ``device`` (an unindexed device matches any)."""
    gen_device = generator.device
    same_index = (
        gen_device.index is None or device.index is None or gen_device.index == device.index
    )
    if gen_device.type != device.type or not same_index:
        raise ConfigError(
            f"generator is on {gen_device} but the images are on {device}: "
            f"use torch.Generator(device={str(device)!r})"
        )


def _source_index(
    offset: Tensor, length: int, size: int, pad: int, reverse: Tensor | None
) -> Tensor:
    """(B, length) source positions of a crop along one axis, reflect padding folded in.

    offset: (B,) crop start in padded coordinates; reverse: (B,) bool, read the crop backwards.
    """
    steps = torch.arange(length, device=offset.device)
    if reverse is not None:
        steps = torch.where(reverse[:, None], length - 1 - steps, steps)
    position = offset[:, None] - pad + steps
    if pad:
        # Reflection without the edge pixel (torch's "reflect"), valid for -size < p < 2 size - 1.
        last = size - 1
        position = last - (last - position.abs()).abs()
    return position


def _gather_crops(source_rows: Tensor, row_ids: Tensor, cols: Tensor) -> Tensor:
    """Crops as image rows: source_rows (R, W * 3), row_ids (B, h), cols (B, w) -> (B, h, w * 3).

    Two small-index gathers (whole rows, then columns within the picked rows) instead of one
    (B, h, w) pixel index: about 1.5x faster on CPU and no per-pixel int64 index in memory.
    """
    batch, crop_h = row_ids.shape
    picked = source_rows.index_select(0, row_ids.reshape(-1)).view(batch, crop_h, -1)
    channel = torch.arange(CHANNELS, device=cols.device)
    col_ids = (cols[:, :, None] * CHANNELS + channel).view(batch, 1, -1)  # (B, 1, w * 3)
    return picked.gather(2, col_ids.expand(-1, crop_h, -1))


def sample_params(
    cfg: AugmentConfig, batch: int, height: int, width: int, generator: torch.Generator
) -> AugmentParams:
    """Draw one batch's random choices from ``generator``, on its device.

    batch, height, width: shape of the uint8 batch that ``apply_augment`` will receive.
    """
    cfg.validate((height, width))
    return _sample_params(cfg, batch, height, width, generator)


def _sample_params(
    cfg: AugmentConfig, batch: int, height: int, width: int, generator: torch.Generator
) -> AugmentParams:
    """sample_params for a cfg already validated for images of height x width."""
    crop_h, crop_w = cfg.output_size(height, width)
    device = generator.device
    draw = dict(generator=generator, device=device)
    offset_y = torch.randint(0, height + 2 * cfg.pad - crop_h + 1, (batch,), **draw)
    offset_x = torch.randint(0, width + 2 * cfg.pad - crop_w + 1, (batch,), **draw)
    if cfg.flip:
        flipped = torch.rand(batch, **draw) < 0.5
    else:
        flipped = torch.zeros(batch, dtype=torch.bool, device=device)
    contrast = tint = None
    if cfg.contrast > 0:
        contrast = 1 + cfg.contrast * (2 * torch.rand(batch, dtype=OUTPUT_DTYPE, **draw) - 1)
    if cfg.tint > 0:
        tint = cfg.tint * (2 * torch.rand(batch, CHANNELS, dtype=OUTPUT_DTYPE, **draw) - 1)
    return AugmentParams(offset_y, offset_x, flipped, contrast, tint)


def _photometric(
    rows_u8: Tensor, params: AugmentParams, cfg: AugmentConfig, generator: torch.Generator
) -> Tensor:
    """contrast * x + tint + noise, clamped, as float32; rows_u8: (B, h, w * 3) uint8.

    One image row per tensor row keeps the per-image broadcasts on a long contiguous inner
    dimension, which vectorises (an inner dimension of 3 channels runs several times slower).
    """
    contrast = None if params.contrast is None else params.contrast[:, None, None]
    if cfg.noise_std > 0:
        # Draw the noise straight into the output buffer and accumulate onto it: one pass fewer.
        x = torch.empty(rows_u8.shape, dtype=OUTPUT_DTYPE, device=rows_u8.device)
        x.normal_(0.0, cfg.noise_std, generator=generator)
        if contrast is None:
            x.add_(rows_u8)
        else:
            x.addcmul_(rows_u8, contrast)
    else:
        x = rows_u8.to(OUTPUT_DTYPE)
        if contrast is not None:
            x.mul_(contrast)
    if params.tint is not None:
        pixels_per_row = rows_u8.shape[-1] // CHANNELS
        x.add_(params.tint.repeat(1, pixels_per_row)[:, None, :])  # (B, 1, w * 3)
    return x.clamp_(0, PIXEL_MAX)


def apply_augment(
    images_u8: Tensor,
    params: AugmentParams,
    cfg: AugmentConfig,
    generator: torch.Generator,
    norm: Normalization | None = None,
) -> Tensor:
    """Crop, flip, contrast, tint, add noise (drawn from ``generator``), clamp, normalise.

    images_u8: (B, H, W, 3) uint8; params: from ``sample_params`` for this shape and cfg.
    Returns (B, 3, h, w) float32 channels_last on the images' device, h, w = cfg.output_size.
    """
    batch, height, width = _check_images(images_u8)
    cfg.validate((height, width))
    _check_generator(generator, images_u8.device)
    if params.offset_y.shape != (batch,):
        raise ConfigError(f"params are for {params.offset_y.shape[0]} images, got {batch}")
    return _apply_augment(images_u8, params, cfg, generator, norm)


def _apply_augment(
    images_u8: Tensor,
    params: AugmentParams,
    cfg: AugmentConfig,
    generator: torch.Generator,
    norm: Normalization | None,
) -> Tensor:
    """apply_augment for checked images, generator and params, and a cfg valid for the images."""
    batch, height, width, _ = images_u8.shape
    device = images_u8.device
    crop_h, crop_w = cfg.output_size(height, width)
    rows = _source_index(params.offset_y, crop_h, height, cfg.pad, None)  # (B, h)
    cols = _source_index(params.offset_x, crop_w, width, cfg.pad, params.flipped)  # (B, w)
    image_rows = rows + torch.arange(batch, device=device)[:, None] * height  # rows in the batch
    crops = _gather_crops(images_u8.reshape(batch * height, -1), image_rows, cols)
    x = _photometric(crops, params, cfg, generator)  # (B, h, w * 3) float32
    if norm is not None:
        norm._check_fits(height, width)
        # The mean image is read at exactly the pixels' source positions: Caffe's semantics.
        norm._apply_(x, lambda mean: _gather_crops(mean.reshape(height, -1), rows, cols))
    # HWC rows -> (B, 3, h, w) as a channels_last view, no copy.
    return x.view(batch, crop_h, crop_w, CHANNELS).permute(0, 3, 1, 2)


def augment_batch(
    images_u8: Tensor,
    cfg: AugmentConfig,
    generator: torch.Generator,
    norm: Normalization | None = None,
    *,
    checked: bool = False,
) -> Tensor:
    """One random training view per image: ``sample_params`` then ``apply_augment``.

    images_u8: (B, H, W, 3) uint8 on any device; generator: seeded, on that same device.
    checked: cfg was validated for images of this size already (``cfg.validate((H, W))``, as
      training does once, when it loads the run), so it is not checked again for every batch.
    Returns (B, 3, h, w) float32 channels_last, 0-255 scale unless ``norm`` is given.
    """
    batch, height, width = _check_images(images_u8)
    _check_generator(generator, images_u8.device)
    if not checked:
        cfg.validate((height, width))
    params = _sample_params(cfg, batch, height, width, generator)
    return _apply_augment(images_u8, params, cfg, generator, norm)


def _fixed_views(
    images_u8: Tensor, views: Sequence[View], size: int, norm: Normalization | None
) -> Tensor:
    """The same views of every image: (B, H, W, 3) uint8 -> (B, V, 3, size, size) float32.

    The result's flatten(0, 1) is a channels_last (B * V, 3, size, size) view, no copy.
    """
    _, height, width = _check_images(images_u8)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= min(height, width):
        side = min(height, width)
        raise ConfigError(f"view size must be an integer in [1, {side}], got {size!r}")

    def select(source: Tensor) -> Tensor:  # (..., H, W, 3) -> (..., V, size, size, 3)
        crops = [source[..., y : y + size, x : x + size, :] for y, x, _ in views]
        crops = [c.flip(-2) if view[2] else c for c, view in zip(crops, views, strict=True)]
        return torch.stack(crops, dim=-4)

    x = select(images_u8).to(OUTPUT_DTYPE)  # (B, V, size, size, 3)
    if norm is not None:
        norm._check_fits(height, width)
        norm._apply_(x.flatten(-2), lambda mean: select(mean).flatten(-2))
    return x.permute(0, 1, 4, 2, 3)


def _centre(height: int, width: int, size: int) -> tuple[int, int]:
    # Floor division, as Caffe's test-phase crop: (64 - 56) // 2 = 4 pixels from the top left.
    return (height - size) // 2, (width - size) // 2


def resize_matrix(n_in: int, n_out: int, device: torch.device | str = "cpu") -> Tensor:
    """(n_in, n_out) float32 weights of antialiased bilinear resampling along one axis.

    Column k holds the weights of output pixel k: exactly what ``F.interpolate(mode="bilinear",
    antialias=True)`` computes, written as a matrix so that resizing is two matrix products:
    the same numbers in training, evaluation and an exported graph (any runtime has MatMul).
    A fresh tensor each call; ``resize_views`` reuses its own (one per size, per device).
    """
    return _resize_matrix(n_in, n_out, str(device)).clone()


@functools.lru_cache(maxsize=64)
def _resize_matrix(n_in: int, n_out: int, device: str) -> Tensor:
    eye = torch.eye(n_in, dtype=OUTPUT_DTYPE, device=device)[None, None]
    weights = F.interpolate(
        eye, size=(n_in, n_out), mode="bilinear", antialias=True, align_corners=False
    )
    return weights[0, 0]


def resize_views(x: Tensor, size: int) -> Tensor:
    """(B, 3, h, w) float images -> (B, 3, size, size), antialiased bilinear, channels_last.

    Progressive resizing's training views and the matching evaluation views (see
    ``AugmentConfig.sizes``); a no-op when the images already have that size.
    """
    height, width = x.shape[-2:]
    if (height, width) == (size, size):
        return x
    rows = _resize_matrix(height, size, str(x.device))  # (h, size), made once per size
    cols = _resize_matrix(width, size, str(x.device))  # (w, size)
    out = rows.T @ (x.float() @ cols)  # (B, 3, size, size)
    return out.contiguous(memory_format=torch.channels_last)


def center_crop(images_u8: Tensor, size: int, norm: Normalization | None = None) -> Tensor:
    """The evaluation view: (B, H, W, 3) uint8 -> (B, 3, size, size) float32 channels_last."""
    _, height, width = _check_images(images_u8)
    top, left = _centre(height, width, size)
    return _fixed_views(images_u8, [(top, left, False)], size, norm)[:, 0]


def ten_crop(images_u8: Tensor, size: int, norm: Normalization | None = None) -> Tensor:
    """Caffe's oversampling: (B, H, W, 3) uint8 -> (B, 10, 3, size, size) float32.

    View order: top-left, top-right, bottom-left, bottom-right, centre, then the horizontal
    mirrors of those five in the same order (views 5-9).
    """
    _, height, width = _check_images(images_u8)
    bottom, right = height - size, width - size
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), _centre(height, width, size)]
    views = [(y, x, mirrored) for mirrored in (False, True) for y, x in corners]
    return _fixed_views(images_u8, views, size, norm)


def flip_views(images_u8: Tensor, size: int, norm: Normalization | None = None) -> Tensor:
    """Centre crop and its mirror: (B, H, W, 3) uint8 -> (B, 2, 3, size, size) float32."""
    _, height, width = _check_images(images_u8)
    top, left = _centre(height, width, size)
    return _fixed_views(images_u8, [(top, left, False), (top, left, True)], size, norm)

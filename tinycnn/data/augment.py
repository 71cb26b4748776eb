"""Batched augmentation of uint8 image batches on their device: crop, flip, contrast, tint, noise.

Input is a batch sliced from the in-memory dataset, ``(B, H, W, 3)`` uint8 HWC (as in the cache).
Output is float32 ``(B, 3, h, w)`` in channels_last memory format (a free permute of the HWC work
buffer), on the 0-255 scale unless a ``Normalization`` is given. Nothing loops over samples:
crop, flip and reflect padding are two gathers (rows, then columns) with per-sample index vectors
(a flip is a reversed column index, padding a reflected one, so both cost nothing), and the rest
are whole-batch elementwise ops. What to draw and apply is an ``AugmentConfig`` (augment_config.py).

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
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tinycnn.data.augment_config import AugmentConfig
from tinycnn.data.normalization import CHANNELS, OUTPUT_DTYPE, Normalization
from tinycnn.errors import ConfigError

PIXEL_MAX = 255.0  # uint8 scale: augmented pixels are clamped to [0, PIXEL_MAX]

# A view of an image: (top row, left column, mirrored), in unpadded pixel coordinates.
View = tuple[int, int, bool]


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

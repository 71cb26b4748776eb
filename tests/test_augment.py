"""data/augment.py and its settings (data/augment_config.py): geometry, photometric ranges,
determinism, views, normalising, resizing; AugmentConfig's checks."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from tinycnn.data.augment import (
    AugmentConfig,
    AugmentParams,
    apply_augment,
    augment_batch,
    center_crop,
    flip_views,
    resize_matrix,
    sample_params,
    ten_crop,
)
from tinycnn.data.normalization import Normalization
from tinycnn.errors import ConfigError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GEOMETRY_ONLY = dict(tint=0.0, contrast=0.0, noise_std=0.0)
ALL_ON = AugmentConfig(crop=56, flip=True, tint=20.0, contrast=0.2, noise_std=1.0, pad=4)


def _images(batch: int, height: int, width: int, seed: int = 0, device: str = "cpu") -> Tensor:
    """Random uint8 (B, H, W, 3) images: distinct enough that a wrong pixel shows."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=gen)
    return images.to(device)


def _constant_images(batch: int, value: float, side: int = 8) -> Tensor:
    return torch.full((batch, side, side, 3), value, dtype=torch.uint8)


def _gen(seed: int = 0, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _reference_views(source: Tensor, params: AugmentParams, cfg: AugmentConfig) -> Tensor:
    """Pad, crop and flip each image with plain torch ops, one at a time: (B, 3, h, w) float."""
    x = source.permute(0, 3, 1, 2).to(torch.float32)
    if cfg.pad:
        x = F.pad(x, (cfg.pad,) * 4, mode="reflect")
    crop_h, crop_w = cfg.output_size(source.shape[1], source.shape[2])
    views = []
    for i in range(source.shape[0]):
        top, left = int(params.offset_y[i]), int(params.offset_x[i])
        view = x[i, :, top : top + crop_h, left : left + crop_w]
        views.append(view.flip(-1) if params.flipped[i] else view)
    return torch.stack(views)


def _geometry(cfg: AugmentConfig) -> AugmentConfig:
    return dataclasses.replace(cfg, **GEOMETRY_ONLY)


# (height, width, crop, pad): no crop, full-size crop, square, non-square, padded, the paper's.
GEOMETRIES = [(8, 8, 0, 0), (8, 8, 8, 0), (8, 8, 5, 0), (7, 9, 4, 0), (8, 8, 6, 2), (8, 8, 0, 3)]
GEOMETRIES += [(64, 64, 56, 0), (32, 32, 32, 4)]


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize(("height", "width", "crop", "pad"), GEOMETRIES)
def test_crop_and_flip_are_exact_slices(
    height: int, width: int, crop: int, pad: int, flip: bool
) -> None:
    cfg = AugmentConfig(crop=crop, flip=flip, pad=pad)
    images = _images(16, height, width)
    params = sample_params(cfg, 16, height, width, _gen(1))
    out = apply_augment(images, params, cfg, _gen(2))
    assert torch.equal(out, _reference_views(images, params, cfg))
    if not flip:
        assert not params.flipped.any()


def test_augment_batch_is_sample_then_apply() -> None:
    images = _images(32, 64, 64)
    params = sample_params(ALL_ON, 32, 64, 64, gen := _gen(5))
    expected = apply_augment(images, params, ALL_ON, gen)
    assert torch.equal(augment_batch(images, ALL_ON, _gen(5)), expected)


def test_augment_batch_output_is_some_slice_brute_force() -> None:
    """Without looking at the parameters: every output is one of the possible crops or mirrors."""
    images = _images(20, 6, 6)
    out = augment_batch(images, AugmentConfig(crop=4, flip=True), _gen(3))
    x = images.permute(0, 3, 1, 2).float()
    crops = [x[:, :, top : top + 4, left : left + 4] for top in range(3) for left in range(3)]
    candidates = torch.stack(crops + [c.flip(-1) for c in crops], dim=1)  # (B, 18, 3, 4, 4)
    matches = (candidates == out[:, None]).flatten(2).all(2)  # (B, 18)
    assert bool(matches.any(1).all())


@pytest.mark.parametrize(("side", "crop", "pad"), [(64, 56, 0), (8, 5, 0), (32, 32, 4), (8, 0, 2)])
def test_every_offset_is_reachable(side: int, crop: int, pad: int) -> None:
    cfg = AugmentConfig(crop=crop, pad=pad)
    params = sample_params(cfg, 4000, side, side, _gen(0))
    largest = side + 2 * pad - cfg.output_size(side, side)[0]
    for offsets in (params.offset_y, params.offset_x):
        assert int(offsets.min()) == 0 and int(offsets.max()) == largest
        assert len(offsets.unique()) == largest + 1


def test_flip_is_identity_or_mirror_about_half_the_time() -> None:
    images = _images(2000, 4, 4)
    out = augment_batch(images, AugmentConfig(crop=0, flip=True), _gen(0))
    source = images.permute(0, 3, 1, 2).float()
    same = (out == source).flatten(1).all(1)
    mirrored = (out == source.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0.45 < mirrored.float().mean().item() < 0.55


def test_tint_is_a_per_image_per_channel_constant_in_range() -> None:
    value, tint = 128, 20.0
    cfg = AugmentConfig(crop=0, flip=False, tint=tint)
    out = augment_batch(_constant_images(2000, value), cfg, _gen(0))
    added = out - value  # (B, 3, h, w)
    per_channel = added[:, :, :1, :1]
    assert torch.equal(added, per_channel.expand_as(added))  # constant over each image and channel
    assert float(added.abs().max()) <= tint
    assert float(added.abs().max()) > 0.9 * tint  # the range is used, not shrunk
    assert abs(float(per_channel.mean())) < 1.0  # U[-20, 20]: std of the mean of 6000 is 0.15
    assert float(per_channel[:, 0].std()) > 5  # the channels get independent draws ...
    assert float((per_channel[:, 0] - per_channel[:, 1]).abs().mean()) > 5  # ... per image


def test_contrast_multiplies_each_image_by_one_constant() -> None:
    contrast = 0.2
    # Values 1..200 keep clear of a division by 0 and of the clamp at 255 (200 * 1.2 = 240).
    images = (_images(1000, 6, 6) % 200 + 1).to(torch.uint8)
    out = augment_batch(images, AugmentConfig(crop=0, flip=False, contrast=contrast), _gen(0))
    ratio = out / images.permute(0, 3, 1, 2).float()
    per_image = ratio[:, :1, :1, :1]
    torch.testing.assert_close(ratio, per_image.expand_as(ratio))
    assert 1 - contrast <= float(per_image.min()) and float(per_image.max()) <= 1 + contrast
    assert abs(float(per_image.mean()) - 1) < 0.01


def test_noise_has_the_configured_std_and_zero_mean() -> None:
    value = 128
    out = augment_batch(_constant_images(512, value), AugmentConfig(crop=0, noise_std=1.0), _gen(0))
    noise = out - value
    assert abs(float(noise.std()) - 1.0) < 0.05
    assert abs(float(noise.mean())) < 0.02  # 98k samples: std of the mean is 0.003
    assert float(noise[0].std()) > 0.5  # per pixel, not per image


def test_contrast_then_tint_then_clamp_order() -> None:
    cfg = AugmentConfig(crop=0, flip=False, tint=30.0, contrast=0.5)
    images = torch.cat([_constant_images(200, 100), _constant_images(200, 250)])
    params = sample_params(cfg, 400, 8, 8, _gen(0))
    out = apply_augment(images, params, cfg, _gen(0))
    pixel_value = images[:, 0, 0, :].float()  # (B, 3)
    expected = (pixel_value * params.contrast[:, None] + params.tint).clamp(0, 255)
    torch.testing.assert_close(out[:, :, 0, 0], expected)
    assert float(out.max()) == 255.0  # 250 * 1.5 clamps


def test_same_seed_same_output_other_seed_other_output() -> None:
    images = _images(16, 64, 64)
    first = augment_batch(images, ALL_ON, _gen(7))
    assert torch.equal(first, augment_batch(images, ALL_ON, _gen(7)))
    assert not torch.equal(first, augment_batch(images, ALL_ON, _gen(8)))


def test_generator_advances_between_batches() -> None:
    images, gen = _images(16, 64, 64), _gen(7)
    assert not torch.equal(augment_batch(images, ALL_ON, gen), augment_batch(images, ALL_ON, gen))


@pytest.mark.parametrize(("side", "size", "start"), [(64, 56, 4), (9, 4, 2), (8, 8, 0), (8, 1, 3)])
def test_center_crop_is_the_central_slice(side: int, size: int, start: int) -> None:
    images = _images(5, side, side)
    expected = images[:, start : start + size, start : start + size].permute(0, 3, 1, 2).float()
    assert torch.equal(center_crop(images, size), expected)


def test_ten_crop_order_is_caffes_oversampling() -> None:
    images, size = _images(3, 11, 9), 5
    x = images.permute(0, 3, 1, 2).float()
    # Corners TL, TR, BL, BR, then the centre ((11 - 5) // 2, (9 - 5) // 2) = (3, 2).
    corners = [(0, 0), (0, 4), (6, 0), (6, 4), (3, 2)]
    crops = [x[:, :, top : top + size, left : left + size] for top, left in corners]
    expected = torch.stack(crops + [c.flip(-1) for c in crops], dim=1)
    assert torch.equal(ten_crop(images, size), expected)


def test_flip_views_are_centre_and_its_mirror() -> None:
    images = _images(3, 64, 64)
    views = flip_views(images, 56)
    assert torch.equal(views[:, 0], center_crop(images, 56))
    assert torch.equal(views[:, 1], center_crop(images, 56).flip(-1))


def _channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    pixels = images.reshape(-1, 3).double()
    return pixels.mean(0), pixels.std(0, correction=0)


@pytest.mark.parametrize(
    "view",
    [
        lambda images, norm: center_crop(images, 8, norm),
        lambda images, norm: ten_crop(images, 8, norm),
        lambda images, norm: augment_batch(images, AugmentConfig(crop=0), _gen(0), norm),
    ],
    ids=["center_crop", "ten_crop", "augment_batch"],
)
def test_channel_normalization_gives_zero_mean_unit_std(view: Callable) -> None:
    gen = torch.Generator().manual_seed(0)
    scale, shift = torch.tensor([10.0, 30.0, 50.0]), torch.tensor([60.0, 120.0, 180.0])
    images = (torch.randn(64, 8, 8, 3, generator=gen) * scale + shift).clamp(0, 255).round()
    images = images.to(torch.uint8)
    mean, std = _channel_stats(images)
    out = view(images, Normalization.channel(mean.tolist(), std.tolist()))
    per_channel = out.transpose(-3, 0).reshape(3, -1).double()  # channels first, then the rest
    torch.testing.assert_close(
        per_channel.mean(1), torch.zeros(3, dtype=torch.double), atol=1e-4, rtol=0
    )
    torch.testing.assert_close(per_channel.std(1, correction=0), torch.ones(3, dtype=torch.double))


@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(crop=5, flip=True),
        AugmentConfig(crop=6, flip=True, pad=2),
        AugmentConfig(crop=5, flip=True, tint=10.0, contrast=0.3, noise_std=2.0, pad=1),
    ],
)
def test_mean_image_is_subtracted_where_each_pixel_came_from(cfg: AugmentConfig) -> None:
    """Caffe: subtract the full mean image first, then (pad,) crop and mirror."""
    images = _images(40, 8, 8)
    mean_image = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(1)) * 255
    params = sample_params(cfg, 40, 8, 8, _gen(0))
    raw = apply_augment(images, params, cfg, _gen(3))
    normalised = apply_augment(
        images, params, cfg, _gen(3), Normalization.from_mean_image(mean_image)
    )
    mean_views = _reference_views(mean_image.expand(40, 8, 8, 3), params, cfg)
    torch.testing.assert_close(normalised, raw - mean_views, atol=1e-4, rtol=0)
    if cfg == _geometry(cfg):  # no photometric change: exactly Caffe's (image - mean) then crop
        caffe = _reference_views(images.float() - mean_image, params, cfg)
        torch.testing.assert_close(normalised, caffe, atol=1e-4, rtol=0)


@pytest.mark.parametrize("view", [center_crop, ten_crop, flip_views])
def test_mean_image_views_match_the_image_views(view: Callable) -> None:
    images = _images(4, 10, 10)
    mean_image = torch.rand(10, 10, 3, generator=torch.Generator().manual_seed(1)) * 255
    normalised = view(images, 6, Normalization.from_mean_image(mean_image))
    expected = view(images, 6) - _slice_views(view, mean_image, 6)
    torch.testing.assert_close(normalised, expected, atol=1e-4, rtol=0)


def _slice_views(view: Callable, mean_image: Tensor, size: int) -> Tensor:
    """Independent reference: the documented slices of ``mean_image`` for each view function."""
    x = mean_image.permute(2, 0, 1)[None]
    height, width = mean_image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    centre = x[:, :, top : top + size, left : left + size]
    if view is center_crop:
        return centre
    if view is flip_views:
        return torch.stack([centre, centre.flip(-1)], dim=1)
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
    crops = [x[:, :, t : t + size, lft : lft + size] for t, lft in corners] + [centre]
    return torch.stack(crops + [c.flip(-1) for c in crops], dim=1)


def test_normalization_spellings_agree() -> None:
    images = _images(4, 8, 8)
    mean, std = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]
    short = center_crop(images, 6, Normalization.channel(mean, std))
    long = center_crop(images, 6, Normalization("channel", channel_mean=mean, channel_std=std))
    assert torch.equal(short, long)
    assert torch.equal(center_crop(images, 6, Normalization()), center_crop(images, 6))
    read_only = np.full((8, 8, 3), 100.0, dtype=np.float32)
    read_only.flags.writeable = False  # as the cache's memory-mapped mean_image.npy
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from_array = Normalization.from_mean_image(read_only).to("cpu")
    assert torch.equal(center_crop(images, 6, from_array), center_crop(images, 6) - 100)


def test_scale_multiplies_after_the_centring() -> None:
    """Caffe's transform_param: (pixel - mean) * scale, the mean taken on the 0-255 scale."""
    images = _images(3, 8, 8)
    rng = np.random.default_rng(0)
    mean_image = rng.uniform(0, 255, size=(8, 8, 3)).astype(np.float32)
    pixels = images.numpy().astype(np.float64)
    # Hand computation in float64: centre 6x6 crop (offset 1) of image - mean, then / 255.
    expected = (pixels - mean_image)[:, 1:7, 1:7, :].transpose(0, 3, 1, 2) / 255
    scaled = center_crop(images, 6, Normalization.from_mean_image(mean_image, scale=1 / 255))
    np.testing.assert_allclose(scaled.numpy(), expected, rtol=1e-6, atol=1e-6)
    mean, std = [100.0, 110.0, 120.0], [50.0, 60.0, 70.0]
    channel = center_crop(images, 6, Normalization.channel(mean, std, scale=2.0))
    centred = (pixels[:, 1:7, 1:7, :] - mean) / std * 2
    np.testing.assert_allclose(channel.numpy(), centred.transpose(0, 3, 1, 2), rtol=1e-6)
    only = center_crop(images, 6, Normalization(scale=0.5))
    np.testing.assert_allclose(only.numpy(), pixels[:, 1:7, 1:7, :].transpose(0, 3, 1, 2) / 2)
    # Training views take the same path: the same crop with and without a scale differ by it.
    cfg = AugmentConfig(crop=6, flip=True, noise_std=1.0)
    plain = augment_batch(images, cfg, _gen(), Normalization.from_mean_image(mean_image))
    halved = augment_batch(images, cfg, _gen(), Normalization.from_mean_image(mean_image, 0.5))
    torch.testing.assert_close(halved, plain * 0.5)


@pytest.mark.parametrize("scale", [0, -1.0, float("nan"), float("inf"), True, "0.5"])
def test_scale_must_be_a_positive_number(scale) -> None:
    with pytest.raises(ConfigError, match=f"scale.*{re.escape(repr(scale))}"):
        Normalization(scale=scale)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"crop": -1}, "crop"),
        ({"crop": 5.5}, "crop"),
        ({"crop": True}, "crop"),
        ({"pad": -2}, "pad"),
        ({"flip": 1}, "flip"),
        ({"tint": -1.0}, "tint"),
        ({"tint": float("nan")}, "tint"),
        ({"tint": "10"}, "tint"),
        ({"contrast": 1.0}, "contrast"),
        ({"contrast": -0.1}, "contrast"),
        ({"noise_std": float("inf")}, "noise_std"),
        ({"noise_std": -1}, "noise_std"),
    ],
)
def test_bad_config_names_the_field_and_value(changes: dict, field: str) -> None:
    cfg = AugmentConfig(**changes)
    with pytest.raises(ConfigError, match=rf"augment\.{field}\b") as caught:
        cfg.validate()
    assert repr(changes[field]) in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        (AugmentConfig(crop=65), "crop"),
        (AugmentConfig(crop=73, pad=4), "crop"),
        (AugmentConfig(crop=0, pad=64), "pad"),
    ],
)
def test_config_too_big_for_the_images(cfg: AugmentConfig, field: str) -> None:
    cfg.validate()  # fine in itself
    with pytest.raises(ConfigError, match=rf"augment\.{field}"):
        augment_batch(_images(2, 64, 64), cfg, _gen())


@pytest.mark.parametrize("entry", ["augment_batch", "sample_params", "apply_augment"])
def test_each_entry_point_refuses_an_invalid_config(entry: str) -> None:
    # Built in Python, so no load_config checked it: the function it is passed to does.
    bad, good, images = AugmentConfig(crop=4, tint=-1.0), AugmentConfig(crop=4), _images(2, 8, 8)
    calls = {
        "augment_batch": lambda: augment_batch(images, bad, _gen()),
        "sample_params": lambda: sample_params(bad, 2, 8, 8, _gen()),
        "apply_augment": lambda: apply_augment(
            images, sample_params(good, 2, 8, 8, _gen()), bad, _gen()
        ),
    }
    with pytest.raises(ConfigError, match=r"augment\.tint must be a number >= 0, got -1.0"):
        calls[entry]()


def test_the_largest_crop_is_the_image_padding_only_shifts_it() -> None:
    out = augment_batch(_images(2, 64, 64), AugmentConfig(crop=64, pad=4), _gen())
    assert out.shape == (2, 3, 64, 64)
    # Larger crops of the padded image would train, but evaluation's views come from the
    # unpadded image: such a run died at its first evaluation, nothing saved.
    with pytest.raises(ConfigError, match=r"crop must be <= the image side 64 .*got 65"):
        augment_batch(_images(2, 64, 64), AugmentConfig(crop=65, pad=4), _gen())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Normalization("zscore"), "kind"),
        (lambda: Normalization("channel"), "channel_mean"),
        (lambda: Normalization.channel([1.0, 2.0], [1.0, 1.0, 1.0]), "channel_mean"),
        (lambda: Normalization.channel([1.0, 2.0, 3.0], [1.0, 0.0, 1.0]), "channel_std"),
        (lambda: Normalization.channel("grey", [1.0, 1.0, 1.0]), "channel_mean.*'grey'"),
        (lambda: Normalization.from_mean_image(torch.zeros(64, 64)), "mean_image"),
        (lambda: center_crop(_images(2, 8, 8), 9), "view size"),
        (lambda: center_crop(_images(2, 8, 8), 0), "view size"),
        (lambda: center_crop(_images(2, 8, 8).float(), 4), "uint8"),
        (lambda: center_crop(_images(2, 8, 8)[..., :2], 4), "shape"),
        (
            lambda: center_crop(
                _images(2, 8, 8), 4, Normalization.from_mean_image(torch.zeros(9, 9, 3))
            ),
            "mean_image",
        ),
        (
            lambda: apply_augment(
                _images(3, 8, 8),
                sample_params(AugmentConfig(crop=4), 2, 8, 8, _gen()),
                AugmentConfig(crop=4),
                _gen(),
            ),
            "params",
        ),
        (
            lambda: augment_batch(
                torch.empty(2, 8, 8, 3, dtype=torch.uint8, device="meta"), ALL_ON, _gen()
            ),
            "generator is on cpu but the images are on meta",
        ),
    ],
)
def test_bad_arguments_raise_config_error(make: Callable, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("run", "shape"),
    [
        (lambda x, g: augment_batch(x, ALL_ON, g), (6, 3, 56, 56)),
        (lambda x, g: augment_batch(x, AugmentConfig(crop=0, flip=False), g), (6, 3, 64, 64)),
        (lambda x, g: center_crop(x, 56), (6, 3, 56, 56)),
        (lambda x, g: ten_crop(x, 56).flatten(0, 1), (60, 3, 56, 56)),
        (lambda x, g: flip_views(x, 48).flatten(0, 1), (12, 3, 48, 48)),
    ],
    ids=["augment", "augment_full", "center_crop", "ten_crop", "flip_views"],
)
def test_output_dtype_layout_device_shape(device: str, run: Callable, shape: tuple) -> None:
    images = _images(6, 64, 64, device=device)
    out = run(images, _gen(0, device))
    assert out.shape == shape
    assert out.dtype == torch.float32
    assert out.device.type == device
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert float(out.min()) >= 0 and float(out.max()) <= 255


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_geometry_and_rejects_a_cpu_generator() -> None:
    cfg = AugmentConfig(crop=56, flip=True, pad=4)
    images = _images(32, 64, 64)
    params = sample_params(cfg, 32, 64, 64, _gen(0, "cuda"))
    on_gpu = apply_augment(images.cuda(), params, cfg, _gen(0, "cuda"))
    fields = [getattr(params, f.name) for f in dataclasses.fields(params)]
    cpu_params = AugmentParams(*(None if t is None else t.cpu() for t in fields))
    assert torch.equal(on_gpu.cpu(), _reference_views(images, cpu_params, cfg))
    with pytest.raises(ConfigError, match="generator"):
        augment_batch(images.cuda(), cfg, _gen(0, "cpu"))


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (2, 8, 8, 3), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def test_channel_normalisation_by_hand() -> None:
    images = _image()
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    got = center_crop(images, 6, Normalization.channel(mean, std))  # (2, 3, 6, 6)
    crop = images[:, 1:7, 1:7, :].float()
    expected = ((crop - torch.tensor(mean)) / torch.tensor(std)).permute(0, 3, 1, 2)
    assert torch.allclose(got, expected)


def test_mean_image_is_subtracted_before_cropping_and_mirroring() -> None:
    images = _image(1)
    mean_image = torch.rand(8, 8, 3, generator=torch.Generator().manual_seed(2)) * 255
    got = ten_crop(images, 6, Normalization.from_mean_image(mean_image.numpy()))  # (2, 10, ...)
    centred = images.float() - mean_image  # the full image first (Caffe), then crop and mirror
    corners = [(0, 0), (0, 2), (2, 0), (2, 2), (1, 1)]
    for v, (mirrored, (y, x)) in enumerate((m, c) for m in (False, True) for c in corners):
        view = centred[:, y : y + 6, x : x + 6, :]
        view = view.flip(2) if mirrored else view
        assert torch.allclose(got[:, v], view.permute(0, 3, 1, 2), atol=1e-4), v


def test_sizes_per_cycle_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"augment\.sizes_per_cycle must be true or false"):
        AugmentConfig(sizes=[32, 64], size_until=[0.5], sizes_per_cycle=1).validate()


@pytest.mark.parametrize(
    ("sizes", "until", "message"),
    [
        ([32, 48], [], "one fraction for each size but the last (1 for"),
        ([32, 48], [0.5, 0.7], "one fraction for each size but the last (1 for"),
        ([32, 48, 64], [0.7, 0.4], "rise strictly"),
        ([32, 48], [0.0], "rise strictly"),
        ([32, 48], [1.0], "rise strictly"),
        ([32, 0], [0.5], "whole numbers > 0"),
        ([32, 48.0], [0.5], "whole numbers > 0"),
    ],
)
def test_impossible_size_schedules_are_named(sizes, until, message) -> None:
    with pytest.raises(ConfigError, match=r"augment\.size") as error:
        AugmentConfig(sizes=sizes, size_until=until).validate()
    assert message in str(error.value)


def test_resize_weights_by_hand() -> None:
    # Halving with antialiased bilinear: a triangle filter two input pixels wide on each side of
    # the output pixel's centre (2k + 0.5): weights 1/8, 3/8, 3/8, 1/8 inside; at the border
    # the triangle is cut and renormalised: 0.75, 0.75, 0.25 over 1.75.
    weights = resize_matrix(8, 4)
    assert weights.shape == (8, 4)
    expected = torch.zeros(8, 4)
    expected[0:3, 0] = torch.tensor([3, 3, 1]) / 7
    expected[1:5, 1] = torch.tensor([1, 3, 3, 1]) / 8
    expected[3:7, 2] = torch.tensor([1, 3, 3, 1]) / 8
    expected[5:8, 3] = torch.tensor([1, 3, 3]) / 7
    torch.testing.assert_close(weights, expected)
    assert torch.equal(resize_matrix(6, 6), torch.eye(6))


@pytest.mark.parametrize("side", [24, 32, 48, 80])
def test_resized_views_are_torchs_antialiased_bilinear(side: int) -> None:
    from tinycnn.data.augment import resize_views

    x = torch.randn(3, 3, 56, 56).contiguous(memory_format=torch.channels_last)
    expected = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
    actual = resize_views(x, side)
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert actual.is_contiguous(memory_format=torch.channels_last)

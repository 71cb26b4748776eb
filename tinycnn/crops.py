"""The training crop of a run: augment.crop fitted to the cache's image side and to the model.

A model with a fixed input size (paper8, cnn5, shallow: their fc layer is sized for it, and
their max-pools need a side divisible by 2 per pool) takes only some crops; a cache prepared at
another size (``tinycnn prepare --size 32``) takes no crop larger than its images. An unset crop
becomes 7/8 of the image side (the paper's 56 on 64x64 images), lowered to the nearest side the
model takes; a set one that does not fit is one ConfigError naming augment.crop, the images and
the crops that fit.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from tinycnn.config import RunConfig
from tinycnn.data.augment_config import default_crop
from tinycnn.errors import ConfigError, CropError
from tinycnn.models import create_model, model_options


def fit_crop(cfg: RunConfig, image_side: int, num_classes: int) -> RunConfig:
    """cfg with augment.crop resolved for square images of ``image_side`` pixels.

    Unset (None): default_crop(image_side) or the nearest smaller side the model takes (else
    the nearest larger one that fits the images). Set: checked; a ConfigError when the images
    or the model cannot take it.
    """
    # A crop is at most the image: augment.pad only shifts it. Evaluation, prediction and export
    # take their views from the unpadded image, so a larger crop could train but never evaluate.
    crop, limit = cfg.augment.crop, image_side
    if crop is None:
        target = min(default_crop(image_side), limit)
        order = [*range(target, 0, -1), *range(target + 1, limit + 1)]
        fitted = next((c for c in order if _model_takes(cfg, c, num_classes)), None)
        if fitted is None:
            _build(cfg, target, num_classes)  # the model's own error: it takes no side here
            fitted = target
        return replace(cfg, augment=replace(cfg.augment, crop=fitted))
    side = crop or image_side  # 0: the whole image
    if crop <= limit and _model_takes(cfg, side, num_classes):
        return cfg
    fits = [c for c in range(1, limit + 1) if _model_takes(cfg, c, num_classes)]
    if not fits:
        _build(cfg, side, num_classes)  # not about the size: the model's own error
    if crop > limit:
        why = f"a crop is at most the image side, {limit} (augment.pad only shifts it)"
    else:
        why = f"model {cfg.model.name!r} does not take {side}x{side} inputs: {_why_not(cfg, side)}"
    unset = replace(cfg, augment=replace(cfg.augment, crop=None))
    fitted = fit_crop(unset, image_side, num_classes).augment.crop
    raise CropError(
        image_side,
        why,
        f"augment.crop = {crop} does not fit this cache's {image_side}x{image_side} images: "
        f"{why}. Crops that fit the images and the model: {_spans(fits)}. Set one (e.g. --set "
        f"augment.crop={fitted}), or remove augment.crop from the config: unset, it is 7/8 of "
        f"the image side lowered to a side the model takes ({fitted} here)",
        fitted,
    )


def _model_takes(cfg: RunConfig, side: int, num_classes: int) -> bool:
    """Whether the configured model takes side x side inputs (built on the meta device)."""
    if "input_size" not in model_options(cfg.model.name):
        return True  # global pooling: any side
    if "input_size" in cfg.model.options:  # fixed by the config, not by the crop
        return cfg.model.options["input_size"] == side
    try:
        _build(cfg, side, num_classes)
    except ConfigError:
        return False
    return True


def _build(cfg: RunConfig, side: int, num_classes: int) -> None:
    options = dict(cfg.model.options)
    if "input_size" in model_options(cfg.model.name):
        options.setdefault("input_size", side)
    with torch.device("meta"):  # checks the options without allocating anything
        create_model(cfg.model.name, num_classes=num_classes, **options)


def _why_not(cfg: RunConfig, side: int) -> str:
    if "input_size" in cfg.model.options:
        return f"model.input_size = {cfg.model.options['input_size']}"
    try:
        _build(cfg, side, num_classes=2)
    except ConfigError as exc:
        return str(exc)
    return "it is built for another size"


def _spans(values: list[int]) -> str:
    """[8, 16, 24, 32] -> "8, 16, 24, 32"; [1, 2, ..., 72] -> "1-72"."""
    spans: list[list[int]] = []
    for v in values:
        if spans and v == spans[-1][-1] + 1:
            spans[-1].append(v)
        else:
            spans.append([v])
    return ", ".join(f"{s[0]}-{s[-1]}" if len(s) > 2 else ", ".join(map(str, s)) for s in spans)

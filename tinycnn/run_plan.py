"""Everything a run checks and works out before it touches its folder: one RunPlan.

plan_run opens and verifies the cache, draws the tuning split, fits the crop, builds the model
on the meta device (its options checked, its FLOPs counted at each input side), loads and checks
the --init-from checkpoint and picks the runtime. load_session (session.py) builds the run from
the plan without doing any of it again; a failed check leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tinycnn import distributed
from tinycnn.checkpoint import check_classes, check_state, load_checkpoint
from tinycnn.compute import training_flops_per_image
from tinycnn.config import RunConfig
from tinycnn.crops import fit_crop
from tinycnn.data.cache import Cache, load_cache, verify_cache
from tinycnn.data.normalization import Normalization
from tinycnn.data.splits import holdout_split
from tinycnn.errors import ConfigError
from tinycnn.models import create_model, init_weights, model_options, scale_classifier
from tinycnn.runtime import Runtime, make_runtime


@dataclass(frozen=True)
class RunPlan:
    """A checked run, ready to build: what load_session consumes.

    cfg: the config with its crop fitted to the cache (the number config.toml holds).
    train_rows, tune_rows: rows of the cache's train split to train on / to hold out.
    eval_size: the model's input side without resizing (the crop's, else the image's).
    flops_by_size: one training step's FLOPs per image at each input side the run uses.
    init: the --init-from checkpoint (loaded and checked against cache and model), or None.
    """

    cfg: RunConfig
    cache: Cache
    train_rows: np.ndarray
    tune_rows: np.ndarray
    eval_size: int
    flops_by_size: dict[int, float]
    runtime: Runtime
    init: dict | None = None

    def with_runtime(self, runtime: Runtime) -> RunPlan:
        return replace(self, runtime=runtime)


def plan_run(cfg: RunConfig, init_from: str | Path | None = None) -> RunPlan:
    """Check the data, model, device, held-out split and init checkpoint of cfg's run."""
    if not cfg.data.cache:
        raise ConfigError("data.cache is not set: pass --data CACHE (a tinycnn prepare folder)")
    cache = load_cache(cfg.data.cache)
    verify_cache(cache, splits=("train", "val"))  # never train on damaged data (~1 s per GB)
    distributed.check_batch(cfg.train.batch_size, distributed.from_env())
    train_rows, tune_rows = training_rows(cfg, cache)
    image_side = cache.image_size
    cfg = fit_crop(cfg, image_side, cache.num_classes)  # unset: 7/8 of the side
    # Checked once here, for these images (before the run folder is made): every training
    # step then augments without a check.
    cfg.augment.validate((image_side, image_side))
    size = cfg.augment.crop or image_side
    with torch.device("meta"):  # checks the model options without allocating anything
        model = build_model(cfg, cache.num_classes, size, initialise=False)
    if cfg.augment.sizes and "input_size" in model_options(cfg.model.name):
        raise ConfigError(
            f"augment.sizes = {cfg.augment.sizes}: model {cfg.model.name!r} takes one fixed "
            "input size (its fc layer is sized for it); progressive resizing needs a model that "
            "pools globally (fastnet, resnet18, preact_resnet18)"
        )
    init = None
    if init_from is not None:
        init = load_checkpoint(init_from)
        check_classes(init["classes"], cache.classes, init_from, str(cache.path))
        check_state(model, init["model"]["state"], str(init_from))
    if cfg.train.tensorboard:
        tensorboard_writer_class()
    t = cfg.train
    runtime = make_runtime(t.device, t.precision, t.channels_last, t.threads, t.deterministic)
    sides = sorted({size, *cfg.augment.sizes})
    flops = {side: training_flops_per_image(model, side) for side in sides}
    return RunPlan(cfg, cache, train_rows, tune_rows, size, flops, runtime, init)


def build_model(
    cfg: RunConfig, num_classes: int, input_size: int, initialise: bool = True
) -> nn.Module:
    """The configured model, initialised; input_size follows the crop unless set explicitly."""
    options = dict(cfg.model.options)
    if "input_size" in model_options(cfg.model.name) and "input_size" not in options:
        options["input_size"] = input_size
    model = create_model(cfg.model.name, num_classes=num_classes, **options)
    if initialise and cfg.model.init != "default":
        torch.manual_seed(cfg.train.seed)
        init_weights(model, cfg.model.init)
    if initialise and cfg.model.classifier_init_scale != 1:
        scale_classifier(model, cfg.model.classifier_init_scale)
    return model


def training_rows(cfg: RunConfig, cache: Cache) -> tuple[np.ndarray, np.ndarray]:
    """(rows to train on, rows of the tuning split) of the cache's train split.

    The tuning split is drawn first, from every training image, so excluding images never moves
    it; excluded images (data.exclude) then leave the training rows only.
    """
    train = cache.split("train")
    train_rows, tune_rows = holdout_split(
        train.labels, cfg.data.holdout_per_class, cfg.data.holdout_seed
    )
    if cfg.data.exclude:
        dropped = excluded_rows(Path(cfg.data.exclude), train.files)
        train_rows = np.setdiff1d(train_rows, dropped)
        if not len(train_rows):
            raise ConfigError(f"data.exclude = {cfg.data.exclude}: leaves no image to train on")
    return train_rows, tune_rows


def excluded_rows(path: Path, files: list[str]) -> np.ndarray:
    """Rows of the training files named in path (one file name a line, # comments allowed)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data.exclude = {path}: cannot read it ({exc})") from None
    row_of = {name: row for row, name in enumerate(files)}
    rows = []
    for lineno, line in enumerate(lines, 1):
        name = line.split("#", 1)[0].strip()
        if not name:
            continue
        if name not in row_of:
            raise ConfigError(
                f"{path} line {lineno}: {name!r} is not a training image of this cache "
                f"(expected names as in its train_files.txt, e.g. {files[0]!r})"
            )
        rows.append(row_of[name])
    return np.unique(np.asarray(rows, dtype=np.int64))


def normalization_of(cfg: RunConfig, cache: Cache) -> Normalization | None:
    """The input normalisation cfg.data asks for, from the cache's statistics."""
    scale = cfg.data.scale
    if cfg.data.normalization == "mean_image":
        return Normalization.from_mean_image(cache.mean_image, scale)
    if cfg.data.normalization == "channel":
        return Normalization.channel(cache.channel_mean, cache.channel_std, scale)
    return None if scale == 1.0 else Normalization("none", scale=scale)


def tensorboard_writer_class():
    """torch's SummaryWriter; a ConfigError naming the missing package when it is absent."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError(
            "train.tensorboard = true needs the tensorboard package (pip install tensorboard)"
        ) from None
    return SummaryWriter

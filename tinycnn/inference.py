"""The inference layer: batched logits over in-memory uint8 images with test-time views, and a
trained model loaded from one checkpoint (weights, normalisation, crop size, class names).
Training's evaluations, evaluation, ensembles, prediction and export all run through here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from tinycnn import distributed
from tinycnn.checkpoint import (
    check_classes,
    model_from_checkpoint,
    normalization_from_payload,
    read_checkpoint,
)
from tinycnn.choices import TTA_VIEWS
from tinycnn.data.augment import center_crop, flip_views, resize_views, ten_crop
from tinycnn.data.normalization import Normalization
from tinycnn.errors import ConfigError, TinycnnError
from tinycnn.models.conv import CHOICES
from tinycnn.models.kernel_choice import STATIC_RULES, SavedChoices
from tinycnn.runtime import Runtime, make_runtime, with_precision


def check_tta(tta: str) -> None:
    """ConfigError unless ``tta`` names test-time views: "center", "flip" or "10crop"."""
    if tta not in TTA_VIEWS:
        raise ConfigError(f"--tta {tta!r}: expected one of {', '.join(TTA_VIEWS)}")


@torch.inference_mode()
def predict_logits(
    model: nn.Module,
    images_u8: Tensor,
    runtime: Runtime,
    *,
    size: int,
    norm: Normalization | None,
    batch_size: int = 500,
    tta: str = "center",
    progress: str | None = None,
    resize: int | None = None,
) -> Tensor:
    """Class logits (N, C) float32 on the CPU; with TTA, the mean of the views' softmax as logits.

    images_u8: (N, 64, 64, 3) uint8 (CPU or device); size: the crop the model was trained on.
    resize: the side each view is resized to for the model (progressive resizing), or None.
    progress: a label for a progress bar over the images (None: no bar).
    """
    was_training = model.training
    model.eval()
    norm = norm.to(runtime.device) if norm is not None else None
    # Under torchrun each process takes a contiguous share; the logits are gathered in order.
    d, count = distributed.current(), len(images_u8)
    images_u8 = images_u8[distributed.share(count, d)]
    outputs = []
    bar = tqdm(
        total=len(images_u8),
        desc=progress,
        unit="img",
        disable=progress is None or not d.main,
        leave=False,
        dynamic_ncols=True,
    )
    for lo in range(0, len(images_u8), batch_size):
        batch = images_u8[lo : lo + batch_size].to(runtime.device, non_blocking=True)
        views = _views(batch, size, norm, tta)  # (B * V, 3, size, size)
        if resize is not None:
            views = resize_views(views, resize)
        with runtime.autocast():
            logits = model(views).float()
        if tta != "center":
            # Average probabilities over views (Caffe's oversampling), returned as log-probs.
            probs = logits.softmax(dim=1).view(len(batch), TTA_VIEWS[tta], -1).mean(dim=1)
            logits = probs.clamp_min(1e-12).log()
        outputs.append(logits)
        bar.update(len(batch))
    bar.close()
    model.train(was_training)
    if d.active:
        local = torch.cat(outputs) if outputs else torch.empty(0, _classes(model))
        return distributed.gather_rows(local.to(runtime.device), count, d).cpu()
    return torch.cat(outputs).cpu() if outputs else torch.empty(0)


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module,
    images_u8: Tensor,
    runtime: Runtime,
    *,
    size: int,
    norm: Normalization | None,
    resize: int | None = None,
    batch_size: int = 128,
    split_over_ranks: bool = False,
) -> None:
    """Set every batch-norm layer's running mean and variance to their average over the
    images' centre views, batch by batch (the cumulative average of
    torch.optim.swa_utils.update_bn): the statistics of the model's own weights, for weights
    that were never trained as they are (an EMA, an average).

    Batches of ``batch_size`` images, the remainder joined to the last (batch norm refuses a
    batch of one image). Only the batch-norm layers compute in training mode (dropout stays
    off); the model is left in eval mode, its momenta as they were, whatever happens. Every
    process of a torchrun job calls it alike: the batches are dealt out to the ranks, each runs
    its own whole, and the ranks' averages are pooled (weighted by their batches); with
    ``split_over_ranks`` (batch norm over the global batch) each runs its share of each.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(images_u8) < 2:
        return
    momenta = [m.momentum for m in norms]
    norm = norm.to(runtime.device) if norm is not None else None
    d = distributed.current()
    stops = list(range(batch_size, len(images_u8) + 1, batch_size)) or [len(images_u8)]
    stops[-1] = len(images_u8)
    batches = list(zip([0, *stops[:-1]], stops, strict=True))
    deal = d.active and not split_over_ranks
    if deal and any(isinstance(m, _GLOBAL_NORMS) for m in norms):
        raise ValueError("a global batch norm takes split_over_ranks: every rank in every batch")
    if deal:  # batch norm per process: whole batches, round-robin
        batches = batches[d.rank :: d.world]
    try:
        model.eval()
        for module in norms:
            module.reset_running_stats()
            module.momentum = None  # a cumulative average over the batches
            module.train()
        for lo, hi in batches:
            batch = images_u8[lo:hi]
            if split_over_ranks and d.active:
                batch = batch[distributed.share(len(batch), d)]
            views = center_crop(batch.to(runtime.device, non_blocking=True), size, norm)
            if resize is not None:
                views = resize_views(views, resize)
            with runtime.autocast():
                model(views)
        if deal:
            _pool_over_ranks(norms)
    finally:
        for module, momentum in zip(norms, momenta, strict=True):
            module.momentum = momentum
        model.eval()


def _classes(model: nn.Module) -> int:
    """The number of logits of a model that received no images here (a rank with no share)."""
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    return classifier.out_features


def _views(batch: Tensor, size: int, norm: Normalization | None, tta: str) -> Tensor:
    if tta == "center":
        return center_crop(batch, size, norm)
    views = flip_views(batch, size, norm) if tta == "flip" else ten_crop(batch, size, norm)
    return views.flatten(0, 1)


@dataclass
class LoadedModel:
    path: Path
    model: nn.Module  # eval mode, on runtime.device, in runtime's memory format
    norm: Normalization | None
    input_size: int  # the crop side the model was trained on
    classes: list[str]  # wnids, in the training cache's order
    names: list[str]
    config: dict  # the training run's resolved config
    epoch: int
    iteration: int
    runtime: Runtime
    resize: int | None = None  # the side views are resized to for the model (None: the crop's)
    # The side of the square images it was trained on; None in checkpoints from before it was
    # recorded (then the mean image's side, else unknown and not checked).
    image_size: int | None = None
    sha256: str = ""  # of the checkpoint's bytes as they were loaded (the probability cache's key)
    # Its run's conv kernels (timed, or the static rules): evaluation computes as the run did.
    kernels: SavedChoices = STATIC_RULES

    def logits(
        self,
        images_u8: Tensor,
        tta: str = "center",
        batch_size: int = 500,
        progress: str | None = None,
    ) -> Tensor:
        """(N, C) float32 logits on the CPU for (N, S, S, 3) uint8 images, S its image_size.

        progress: a label for a progress bar (None: no bar).
        """
        check_tta(tta)
        self.check_image_size(tuple(images_u8.shape[1:3]))
        with CHOICES.running(self.kernels):
            logits = predict_logits(
                self.model,
                images_u8,
                self.runtime,
                size=self.input_size,
                norm=self.norm,
                batch_size=batch_size,
                tta=tta,
                progress=progress,
                resize=self.resize,
            )
        if progress and (timed := CHOICES.take_report()):  # shapes its run never met
            print(timed, file=sys.stderr)
        return logits

    def probabilities(
        self,
        images_u8: Tensor,
        tta: str = "center",
        batch_size: int = 500,
        progress: str | None = None,
    ) -> Tensor:
        """(N, C) float32 class probabilities on the CPU (TTA views averaged as probabilities)."""
        return self.logits(images_u8, tta, batch_size, progress).softmax(dim=1)

    @property
    def image_side(self) -> int:
        """The side its input images should have: the one it was trained on where recorded,
        else 64, Tiny ImageNet's."""
        return self.image_size or 64

    def check_image_size(self, shape: tuple[int, ...]) -> None:
        """ConfigError for images of another side than the model was trained on: its crop
        would take another part of them (a 56-pixel crop of a 64-pixel image is 77% of it, of a
        128-pixel one 19%), and the predictions would be made on views it never saw."""
        if self.image_size and tuple(shape) != (self.image_size, self.image_size):
            size = "x".join(map(str, shape))
            raise ConfigError(
                f"{self.path}: trained on {self.image_size}x{self.image_size} images, given "
                f"{size} ones; use data prepared at its side (tinycnn prepare --size "
                f"{self.image_size})"
            )

    def check_classes(self, classes: list[str], where: str) -> None:
        """A clear error when the data's class list is not the one the model was trained on."""
        check_classes(self.classes, classes, self.path, where)


def load_model(path: str | Path, runtime: Runtime | None = None) -> LoadedModel:
    """Returns a LoadedModel: a checkpoint ready for inference on runtime's device, in
    runtime's precision, but for a model trained in fp32 under a runtime of precision "auto"
    (make_runtime's): that one stays in fp32, so that evaluating its run gives the figures it
    logged where auto would take bf16. (A bf16-trained model computes in bf16 only where auto
    takes it: elsewhere bf16 is not fast, or emulated.)"""
    runtime = runtime or make_runtime()
    payload, sha256 = read_checkpoint(path)
    if runtime.requested == "auto" and payload.get("precision") == "fp32":
        runtime = with_precision(runtime, "fp32", "as the model trained")
    model = runtime.prepare_model(model_from_checkpoint(payload, path)).eval()
    norm = normalization_from_payload(payload["normalization"])
    mean_image = norm.mean_image if norm is not None else None
    # Checkpoints from before the image side was recorded: a mean image's side, else unknown.
    image_size = payload.get("image_size") or (
        None if mean_image is None else int(mean_image.shape[0])
    )
    return LoadedModel(
        path=Path(path),
        model=model,
        norm=norm,
        input_size=payload["input_size"],
        classes=payload["classes"],
        names=payload["names"],
        config=payload["config"],
        epoch=payload["epoch"],
        iteration=payload["iteration"],
        runtime=runtime,
        resize=payload.get("resize"),
        image_size=image_size,
        sha256=sha256,
        kernels=SavedChoices.from_payload(payload),
    )


# Batch norms whose statistics span the ranks: every rank must run every batch (its share).
_GLOBAL_NORMS = (distributed.GlobalBatchNorm1d, distributed.GlobalBatchNorm2d, nn.SyncBatchNorm)


def _pool_over_ranks(norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
    """Each rank's running statistics, the cumulative averages over its own batches, made those
    over every rank's batches: summed weighted by the batches each rank ran, in one all-reduce.
    A rank that ran none (more ranks than batches) adds nothing."""
    norms = [m for m in norms if m.running_mean is not None]
    parts = []
    for m in norms:
        n = m.num_batches_tracked.to(torch.float64).reshape(1)
        parts += [m.running_mean.double() * n, m.running_var.double() * n, n]
    if not parts:
        return
    total = distributed.all_sum(torch.cat(parts))
    at = 0
    for m in norms:
        c = m.running_mean.numel()
        n = total[at + 2 * c]
        if n > 0:  # a layer no batch reached keeps its reset statistics, as in one process
            m.running_mean.copy_(total[at : at + c] / n)
            m.running_var.copy_(total[at + c : at + 2 * c] / n)
            m.num_batches_tracked.fill_(int(n.item()))
        at += 2 * c + 1


def images_tensor(array) -> Tensor:
    """A (N, 64, 64, 3) uint8 numpy array or memory map as a torch tensor (one copy at most)."""
    array = np.asarray(array)
    if not array.flags.writeable or not array.flags.c_contiguous:  # e.g. a read-only memmap
        array = np.array(array)
    return torch.from_numpy(array)


class Predictor(Protocol):
    """Maps uint8 images (N, S, S, 3) to probabilities (N, C) over ``classes``, in that order;
    S is its ``image_side`` (64 where it has none)."""

    classes: list[str]  # wnids
    names: list[str]  # words.txt names, one per class

    def __call__(self, images_u8: Tensor) -> Tensor: ...


@dataclass
class ModelPredictor:
    """One loaded model with a fixed test-time augmentation, as a Predictor."""

    loaded: LoadedModel
    tta: str = "center"
    batch_size: int = 500

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    @property
    def names(self) -> list[str]:
        return self.loaded.names

    @property
    def image_side(self) -> int:
        return self.loaded.image_side

    def __call__(self, images_u8: Tensor) -> Tensor:
        """(N, C) float32 probabilities on the CPU; images_u8: (N, 64, 64, 3) uint8."""
        return self.loaded.probabilities(images_u8, self.tta, self.batch_size)


def model_predictor(loaded: LoadedModel, tta: str = "center") -> ModelPredictor:
    """Wrap a loaded model as a Predictor; tta: one of "center", "flip", "10crop"."""
    check_tta(tta)  # before any image is read, not at the first batch
    return ModelPredictor(loaded, tta)


def predict_batches(
    predictor: Predictor, images: np.ndarray, batch_size: int = 500, progress: str | None = None
) -> Tensor:
    """(N, C) probabilities of images (N, 64, 64, 3) uint8; a memory map is read per batch.

    progress: a label for a progress bar over the images (None: no bar).
    """
    outputs = []
    bar = tqdm(total=len(images), desc=progress, unit="img", disable=progress is None, leave=False)
    for lo in range(0, len(images), batch_size):
        batch = torch.from_numpy(np.array(images[lo : lo + batch_size]))  # a writable copy
        probs = predictor(batch)
        # Ensembles are written elsewhere: a wrong shape must fail here, not as a bad file.
        if tuple(probs.shape) != (len(batch), len(predictor.classes)):
            raise TinycnnError(
                f"predictor returned shape {tuple(probs.shape)} for {len(batch)} images, "
                f"expected ({len(batch)}, {len(predictor.classes)})"
            )
        outputs.append(probs.float().cpu())
        bar.update(len(batch))
    bar.close()
    return torch.cat(outputs) if outputs else torch.empty(0, len(predictor.classes))

"""One training step, and what the loop needs between steps: the epoch's image order, the
snapshots due, the losses brought to the host (and the ranks' agreement on a stop), the stop a
signal requests.

All randomness of a step derives from (train.seed, iteration), so a resumed run repeats exactly
what the uninterrupted one would have done.
"""

from __future__ import annotations

import math
import signal
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from tinycnn import distributed
from tinycnn.data.augment import augment_batch, resize_views
from tinycnn.data.mixing import mix_batch
from tinycnn.ema import update_ema
from tinycnn.errors import Interrupted
from tinycnn.optim import set_lr
from tinycnn.session import Session


def train_step(s: Session, rows: torch.Tensor) -> torch.Tensor:
    """One optimisation step on the given global batch of training rows.

    Returns this rank's (loss sum, wrong top-1 count) as a float64 tensor on the device: no
    host sync here. Under torchrun every rank augments the whole global batch (the same random
    views as one process would make) and trains on its own share of it. The caller advances
    the session (Session.advance).
    """
    cfg, rt = s.cfg, s.runtime
    set_lr(s.optimizer, s.schedule.lr_at(s.iteration))
    # Everything random in this step derives from (seed, iteration): exact resume, no RNG state.
    step_seed = (cfg.train.seed * 1_000_003 + s.iteration) % (2**63)
    torch.manual_seed(step_seed)
    generator = s.aug_generator.manual_seed(step_seed)
    images = s.train_images[rows].to(rt.device, non_blocking=True)
    labels = s.train_labels[rows].to(rt.device, non_blocking=True)
    x = augment_batch(images, cfg.augment, generator, s.norm, checked=True)  # by load_session
    x = resize_views(x, s.schedule.input_size_at(s.iteration))  # progressive resizing, or a no-op
    targets = labels
    if cfg.augment.mixup or cfg.augment.cutmix:
        x, targets, _ = mix_batch(
            x, labels, s.cache.num_classes, cfg.augment.mixup, cfg.augment.cutmix, step_seed
        )
    if s.dist.active:
        mine = distributed.share(len(rows), s.dist)
        x, targets, labels = x[mine], targets[mine], labels[mine]
    with rt.autocast():
        logits = (s.model if s.step_model is None else s.step_model)(x)
    loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.optim.label_smoothing)
    s.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.optim.clip_grad_norm:  # after DDP's all-reduce: every rank clips the same gradient
        torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.optim.clip_grad_norm)
    s.optimizer.step()
    if s.ema is not None:
        update_ema(s.ema, s.model, cfg.train.ema_decay, s.iteration + 1)
    wrong = (logits.argmax(dim=1) != labels).sum()
    return torch.stack([loss.detach().double() * len(labels), wrong.double()])


def epoch_order(seed: int, epoch: int, count: int) -> torch.Tensor:
    """The epoch's order of the training rows: a permutation drawn from (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(count, generator=generator)


def snapshot_names(s: Session) -> list[str]:
    """The snapshots due once s.iteration steps are done: iter-N (train.snapshot_every) and
    cycle-NN at the end of a cyclic schedule's cycle NN (from 1)."""
    names = []
    every = s.cfg.train.snapshot_every
    if every and s.iteration % every == 0:
        names.append(f"iter-{s.iteration:07d}")
    if s.cfg.schedule.name == "cyclic":
        ends = s.schedule.cycle_ends()
        if s.iteration in ends:
            names.append(f"cycle-{ends.index(s.iteration) + 1:02d}")
    return names


class StopRequest:
    """Set by SIGINT/SIGTERM (or --stop-at); the loop checks it between iterations."""

    def __init__(self, at_iteration: int | None = None) -> None:
        self.reason: str | None = None
        self.signal: int | None = None
        self.at_iteration = at_iteration

    def __call__(self, signum: int, _frame) -> None:
        if self.reason == "interrupted":  # a second Ctrl-C: stop now, without the checkpoint
            raise Interrupted(signum, again=True)
        self.reason = "interrupted"
        self.signal = signum


@contextmanager
def catching_signals(stop: StopRequest):
    """SIGINT and SIGTERM set ``stop`` instead of killing the process, inside the block."""
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in previous:
            signal.signal(s, stop)
    except ValueError:  # not the main thread: signals stay with their owner
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class StepSums:
    """The steps' loss and error counts on the device, brought to the host, summed over ranks,
    every few steps (flush).

    The same reduction carries each rank's stop requests (a signal, the time budget), so all
    ranks stop at the same iteration. On a CPU this is every step (it costs nothing there); on a
    GPU every SYNC_EVERY_CUDA steps, so that the inner loop never waits for the device: a loss
    that is no longer finite is caught at the next flush, before any checkpoint.
    """

    SYNC_EVERY_CUDA = 25

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.every = self.SYNC_EVERY_CUDA if device.type == "cuda" else 1
        self.pending: list[torch.Tensor] = []
        self.images = 0
        self.last_loss = math.nan

    def add(self, stats: torch.Tensor, images: int) -> None:
        """stats: this rank's (loss sum, wrong count) of a step, on the device."""
        self.pending.append(stats)
        self.images += images

    def due(self, iteration: int, iters_per_epoch: int, total: int) -> bool:
        end = iteration % iters_per_epoch == 0 or iteration >= total
        return end or iteration % self.every == 0

    def flush(self, stop_flags: list[float]) -> tuple[float, int, int, int, list[bool]]:
        """(loss sum, wrong, images, steps) of the pending steps over all ranks, and for each
        of ``stop_flags`` (this rank's requests, 0 or 1) whether any rank raised it."""
        if self.pending:
            local = torch.stack(self.pending).sum(0)
        else:
            local = torch.zeros(2, device=self.device)
        flags = torch.tensor(stop_flags, device=self.device).double()
        numbers = distributed.all_sum(torch.cat([local.double(), flags])).tolist()
        images, steps = self.images, len(self.pending)
        self.pending, self.images = [], 0
        if images:
            self.last_loss = numbers[0] / images
        return numbers[0], round(numbers[1]), images, steps, [bool(r) for r in numbers[2:]]

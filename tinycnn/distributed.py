"""Data-parallel runs under torchrun: PyTorch's own process group and DDP, nothing home-made.

``torchrun --nproc-per-node N -m tinycnn train ...`` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous in their environment. ``init`` joins the process group (NCCL on
GPUs, gloo on CPUs); everything else asks ``current()`` who it is. A run of one process (no
torchrun, or WORLD_SIZE=1) takes none of these paths: ``current()`` is rank 0 of 1.

How the work is split, so that one process and N give the same run:
- every rank draws the same global batch from the one seeded permutation and the same random
  augmentation for all of it, then keeps its own contiguous share (``share``): the batch size,
  learning rate and schedule mean what they mean in one process;
- DDP averages the gradients of the shares (equal sizes), which is the gradient of the global
  batch's mean loss; batch norm sees only its share unless ``train.sync_batch_norm`` is set
  (``sync_batch_norm``: torch's SyncBatchNorm on GPUs, ``GlobalBatchNorm`` on CPUs, where torch's
  has no kernel);
- an evaluation splits the images into contiguous shares and gathers the logits in order
  (``gather_rows``): the numbers are those of one process, not an approximation;
- rank 0 alone writes the run folder; the others compute the same decisions from the same
  reduced numbers, and a stop asked of any rank (a signal, the time budget) is agreed on by all.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from dataclasses import dataclass
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import Tensor, nn

from tinycnn.errors import ConfigError


@dataclass(frozen=True)
class Dist:
    """Who this process is in the job: rank of world, and its rank on this machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and prints progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def from_env() -> Dist:
    """The job as torchrun describes it in the environment (rank 0 of 1 without torchrun)."""

    def number(name: str, default: int) -> int:
        text = os.environ.get(name, "")
        try:
            return int(text) if text else default
        except ValueError:
            raise ConfigError(f"environment variable {name}={text!r}: expected a number") from None

    world = number("WORLD_SIZE", 1)
    return Dist(
        rank=number("RANK", 0),
        world=world,
        local_rank=number("LOCAL_RANK", 0),
        local_world=number("LOCAL_WORLD_SIZE", 1 if world == 1 else world),
    )


_joined = False  # this process joined a process group (init), even if it has left it since


def init(device: torch.device) -> Dist:
    """Join torchrun's process group if there is a job of several processes; returns who we are.

    device: this process's device (cuda:LOCAL_RANK on GPUs): NCCL for CUDA, gloo otherwise.
    """
    global _joined
    env = from_env()
    if env.active and not dist.is_initialized():
        _joined = True
        backend = "nccl" if device.type == "cuda" else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(device)  # object collectives (broadcast_int) use it
        dist.init_process_group(backend=backend, device_id=device if backend == "nccl" else None)
    return current()


def current() -> Dist:
    """This process in the initialised group, or rank 0 of 1."""
    if not (dist.is_available() and dist.is_initialized()):
        return Dist()
    env = from_env()
    return Dist(dist.get_rank(), dist.get_world_size(), env.local_rank, env.local_world)


def local_device(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this process's own GPU (cuda:LOCAL_RANK)."""
    env = from_env()
    if device.type == "cuda" and device.index is None and env.active:
        return torch.device("cuda", env.local_rank)
    return device


def share(count: int, d: Dist) -> slice:
    """Rank d.rank's contiguous share of ``count`` items (shares differ by at most one)."""
    return slice(d.rank * count // d.world, (d.rank + 1) * count // d.world)


def check_batch(batch_size: int, d: Dist) -> None:
    """Each rank takes an equal share of every global batch."""
    if batch_size % d.world:
        raise ConfigError(
            f"train.batch_size = {batch_size} does not split into {d.world} equal shares (one a "
            f"process); use a multiple of {d.world}"
        )


def gather_rows(local: Tensor, count: int, d: Dist) -> Tensor:
    """Every rank's ``share(count)`` rows, gathered in rank order into ``count`` rows everywhere.

    local: this rank's rows (any trailing shape); the result is on local's device.
    """
    if not d.active:
        return local
    longest = -(-count // d.world)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: len(local)] = local
    gathered = [torch.empty_like(padded) for _ in range(d.world)]
    dist.all_gather(gathered, padded.contiguous())
    shares = [share(count, Dist(r, d.world)) for r in range(d.world)]
    return torch.cat([g[: s.stop - s.start] for g, s in zip(gathered, shares, strict=True)])


def all_sum(values: Tensor) -> Tensor:
    """The sum over ranks of a tensor (in place on a copy); the tensor itself with one rank."""
    if not current().active:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total


def broadcast_int(value: int) -> int:
    """Rank 0's value, on every rank."""
    return int(broadcast_object(value))


def broadcast_object(value):
    """Rank 0's value (anything picklable), on every rank."""
    if not current().active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown() -> None:
    """Leave the process group together (a barrier, then destroy): a rank that exits with the
    group still up can abort in gloo's threads at interpreter exit."""
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(RuntimeError):  # fails at once where a peer is gone
            dist.barrier()
        dist.destroy_process_group()


def joined() -> bool:
    """Whether this process joined a torchrun job's process group."""
    return _joined


def exit_process(code: int) -> NoReturn:
    """End a process of a torchrun job, its work saved and the group left (``shutdown``): run
    the exit handlers, flush the streams, and exit without tearing the interpreter down.

    The teardown destroys torch's C++ objects in no set order, and after a complete, saved run one
    of them could end the process with "terminate called without an active exception" (SIGABRT;
    seen once, in CI, in a compiled DDP job on gloo): torchrun then failed the job and stopped the
    other ranks. Nothing of tinycnn's waits for the teardown: files are written and closed before
    ``main`` returns.
    """
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed stream (a broken pipe) has nothing left
            stream.flush()
    os._exit(code)


def barrier() -> None:
    if current().active:
        dist.barrier()


class _AllReduce(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the
    gradients (torch.distributed.nn.functional.all_reduce, which torch now deprecates)."""

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce(tensor: Tensor) -> Tensor:
    return _AllReduce.apply(tensor)


def _global_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> Tensor:
    """Batch norm of x with statistics over the whole global batch (all ranks' shares).

    The per-channel sums (then sums of squared deviations) are added over ranks by ``all_reduce``,
    whose backward adds the gradients over ranks too: forward and backward are those of batch
    norm on the whole global batch.
    """
    dims = [d for d in range(x.dim()) if d != 1]  # all but the channels
    channels = x.shape[1]
    count = torch.full((1,), float(x.numel() // channels), device=x.device, dtype=x.dtype)
    # Two passes (the mean, then the squared deviations from it), as batch norm itself: the
    # one-pass E[x^2] - E[x]^2 loses digits to cancellation.
    totals = all_reduce(torch.cat([x.sum(dims), count]))
    n = totals[-1]
    mean = totals[:channels] / n
    centred = x - mean.view([1, channels] + [1] * (x.dim() - 2))
    var = all_reduce((centred * centred).sum(dims)) / n  # biased: what batch norm divides by
    if bn.track_running_stats:
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1 / float(bn.num_batches_tracked)
            bn.running_mean.lerp_(mean.detach(), factor)
            bn.running_var.lerp_((var * n / (n - 1).clamp_min(1)).detach(), factor)
    shape = [1, channels] + [1] * (x.dim() - 2)
    y = centred * torch.rsqrt(var.view(shape) + bn.eps)
    if bn.affine:
        y = y * bn.weight.view(shape) + bn.bias.view(shape)
    return y


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over the global batch under torchrun, on any device (CPUs included, where
    torch's SyncBatchNorm has no kernel); evaluation and a one-process job are BatchNorm1d."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and current().active:
            return _global_batch_norm(self, x)
        return super().forward(x)


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the global batch under torchrun, as GlobalBatchNorm1d."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training and current().active:
            return _global_batch_norm(self, x)
        return super().forward(x)


_GLOBAL = {nn.BatchNorm1d: GlobalBatchNorm1d, nn.BatchNorm2d: GlobalBatchNorm2d}


def sync_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """The model with every batch norm computing global-batch statistics across the ranks:
    torch's SyncBatchNorm on GPUs, GlobalBatchNorm1d/2d elsewhere."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)


def _convert(module: nn.Module) -> nn.Module:
    kind = _GLOBAL.get(type(module))
    if kind is not None:
        converted = kind(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        converted.load_state_dict(module.state_dict())
        return converted
    for name, child in module.named_children():
        setattr(module, name, _convert(child))
    return module

"""Does fusing batch norm and ReLU into one compiled kernel speed up a CPU training step?

Usage: python bench/fused_bn_relu.py --cache DIR [--config PRESET] [--sizes 32 48 64]
       [--iters 5] [--rounds 4]
(--sizes: the preset's progressive-resizing sizes by default, else its own input)

Eager PyTorch has no fused batch-norm + ReLU kernel for CPU training: each pair reads and writes
its feature map twice forward (normalise, then clamp) and twice backward. Here every
BatchNorm2d followed by a ReLU in the model is replaced by one function compiled by
torch.compile (inductor writes one C++ loop for the normalisation and the clamp, and one for
their backward), while the convolutions stay eager (tinycnn's Conv3x3 and oneDNN). Both models
run tinycnn's own training step (bench/train_throughput.py's, on the fast path: bf16 where the
CPU is faster with it, channels_last) on the same batches, timed in interleaved rounds; the
figure is fused / eager images per second (median of the rounds), above 1 where fusion pays.

Measured so far: results/README.md (issue 26, part 2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from train_throughput import FAST, tinycnn_steps

import tinycnn.session
from tinycnn.config import load_config


def _bn_relu(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    mean: Tensor,
    var: Tensor,
    training: bool,
    momentum: float,
    eps: float,
) -> Tensor:
    return torch.relu(F.batch_norm(x, mean, var, weight, bias, training, momentum, eps))


# One compiled function for every layer (a compiled module would not survive the deep copies
# tinycnn makes to count FLOPs); a graph per input shape, so room for many.
torch._dynamo.config.cache_size_limit = 256
_fused = torch.compile(_bn_relu, dynamic=False)


class FusedBatchNormReLU(nn.BatchNorm2d):
    """BatchNorm2d then ReLU, as one compiled function; the same parameters and statistics."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return _fused(
            x,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.training,
            self.momentum,
            self.eps,
        )


def fuse(model: nn.Module) -> int:
    """Replace each BatchNorm2d directly followed by a ReLU in a Sequential; returns how many."""
    count = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module)
        for i in range(len(children) - 1):
            bn, act = children[i], children[i + 1]
            if type(bn) is nn.BatchNorm2d and isinstance(act, nn.ReLU):
                fused = FusedBatchNormReLU(bn.num_features, bn.eps, bn.momentum)
                fused.load_state_dict(bn.state_dict())
                module[i], module[i + 1] = fused, nn.Identity()
                count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="prepared full cache")
    parser.add_argument("--config", default=str(FAST), help="preset (default: the fastnet recipe)")
    parser.add_argument("--sizes", type=int, nargs="*", help="input sides (default: the preset's)")
    parser.add_argument("--iters", type=int, default=5, help="steps a round")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds a variant")
    args = parser.parse_args()
    cfg = load_config(Path(args.config))
    sizes = args.sizes or cfg.augment.sizes or [0]
    build = tinycnn.session.build_model
    fused_layers = []

    def build_fused(*a, **k):
        model = build(*a, **k)
        fused_layers.append(fuse(model))
        return model

    print(
        f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads, "
        f"{Path(args.config).name}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            eager = tinycnn_steps(
                Path(args.cache), True, args.iters, Path(tmp) / f"e{size}", Path(args.config), size
            )
            next(eager)
            tinycnn.session.build_model = build_fused
            try:
                fused = tinycnn_steps(
                    Path(args.cache),
                    True,
                    args.iters,
                    Path(tmp) / f"f{size}",
                    Path(args.config),
                    size,
                )
                next(fused)
            finally:
                tinycnn.session.build_model = build
            next(eager), next(fused)  # warm-up: kernels chosen, graphs compiled
            rates: dict[str, list[float]] = {"eager": [], "fused": []}
            for _ in range(args.rounds):
                rates["eager"].append(next(eager))
                rates["fused"].append(next(fused))
            e, f = statistics.median(rates["eager"]), statistics.median(rates["fused"])
            side = size or "preset"
            print(
                f"side {side}: {fused_layers[-1]} batch norm + ReLU pairs fused; images/s eager "
                f"{e:.1f}, fused {f:.1f}: fused / eager {f / e:.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()

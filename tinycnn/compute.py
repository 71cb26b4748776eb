"""Training compute in FLOPs: the unit in which tinycnn's results compare across machines.

A training step's cost per image is counted once per model and input size by torch's own
FlopCounterMode (forward + backward, multiply-adds counted as 2 FLOPs), on the meta device: shapes
only, no memory, no arithmetic. Element-wise work (ReLU, pooling, batch norm, the optimiser) is
not counted, as is the convention; convolutions and matrix products are.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PFLOP = 1e15


def training_flops_per_image(model: nn.Module, input_size: int, in_channels: int = 3) -> float:
    """FLOPs of one training step (forward + backward) per image at input_size x input_size.

    model: any module whose parameters may be on any device; a shape-only copy is counted.
    """
    with torch.device("meta"):
        counted = _meta_copy(model)
        images = torch.zeros(2, in_channels, input_size, input_size)
    counted.train()
    with FlopCounterMode(display=False) as counter:
        counted(images).float().sum().backward()
    return counter.get_total_flops() / len(images)


def _meta_copy(model: nn.Module) -> nn.Module:
    if all(p.device.type == "meta" for p in model.parameters()):
        return model
    clone = copy.deepcopy(model)
    return clone.to_empty(device="meta")

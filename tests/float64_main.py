"""The tinycnn command with every float in float64: ``python -m tests.float64_main train ...``.

For tests that compare two runs which should be the same run (one process and two under
torchrun). In fp32 such runs drift apart by chance: a rounding difference (the gradient
all-reduce adds in another order) can tip a max-pool or a ReLU near a tie, and the runs part
there, ~1e-6 apart for most seeds and up to ~2e-2 for some. In float64 the same roundings stay
~1e-15. Three settings make a run float64: torch's default dtype (the model's weights), the
augmentation's output dtype (the images, and the normalisation statistics they are centred
with), and ``Tensor.float``, by which the loss takes the
logits (bf16 under autocast) and mixing makes its soft targets. A float32 left anywhere else
stops the run on a dtype mismatch, or rounds it to fp32 noise, which a float64 bound catches.
"""

import torch

from tinycnn.cli import run
from tinycnn.data import augment, normalization


def use_float64() -> None:
    """This process computes in float64 where tinycnn would compute in float32."""
    torch.set_default_dtype(torch.float64)
    torch.Tensor.float = torch.Tensor.double
    augment.OUTPUT_DTYPE = normalization.OUTPUT_DTYPE = torch.float64


if __name__ == "__main__":
    use_float64()
    run()

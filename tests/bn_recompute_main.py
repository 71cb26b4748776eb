"""recompute_batch_norm in each process of a torchrun job, on the case of
``tests.helpers.bn_recompute_case``: ``python -m torch.distributed.run --nproc-per-node N -m
tests.bn_recompute_main OUT [--split]`` writes OUT/rankR.pt: the batch-norm statistics each rank
ends with, and how many batches its first batch-norm layer saw."""

import sys
from pathlib import Path

import torch

from tests.helpers import bn_recompute_case
from tinycnn import distributed
from tinycnn.inference import recompute_batch_norm
from tinycnn.runtime import make_runtime

if __name__ == "__main__":
    out, split = Path(sys.argv[1]), "--split" in sys.argv
    runtime = make_runtime("cpu", "fp32", channels_last=False, threads=1)
    d = distributed.init(runtime.device)
    model, images = bn_recompute_case()
    seen = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    first.register_forward_hook(lambda module, args, output: seen.append(len(args[0])))
    recompute_batch_norm(
        model, images, runtime, size=8, norm=None, batch_size=3, split_over_ranks=split
    )
    stats = {k: v for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    torch.save({"stats": stats, "batches": seen}, out / f"rank{d.rank}.pt")
    distributed.shutdown()

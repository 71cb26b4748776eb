"""How long Conv3x3's kernel timing (models/kernel_choice.py) takes for a preset's layers.

For each preset, a training step's forward and backward at each of its input sides (batch 128,
bf16 autocast where the CPU has fast bf16, else fp32; channels_last) with no kernel choice known
yet: prints the layer shapes timed, the seconds the timing took, and which passes chose the
matmuls. Usage: python bench/kernel_choice_time.py [PRESET ...]

Measured 2026-12-04, 2-core Zen 5 EPYC (AVX512-BF16, bf16, 2 threads) with both cores also
training two runs: paper8 1 shape timed in 1.0 s, fastnet-1.5pflop 13 shapes in 14.6 s,
fastnet-3pflop 13 shapes in 26.4 s (train.autotune's budget: under 30 s). 2026-12-05, the same
machine with the training runs paused, the kernels timed in turns (at least 5 rounds each):
paper8 0.6 s, fastnet-1.5pflop 7.4 s, fastnet-3pflop 12.7 s.
"""

from __future__ import annotations

import sys
import time

import torch

import tinycnn.models.conv as conv
from tinycnn.config import load_config
from tinycnn.models import create_model
from tinycnn.models.kernel_choice import KernelChoices
from tinycnn.runtime import make_runtime

PRESETS = [
    "configs/paper/paper8_l2_5e-4.toml",
    "configs/fast/fastnet-1.5pflop.toml",
    "configs/fast/fastnet-3pflop.toml",
]


def main() -> None:
    runtime = make_runtime(device="cpu", channels_last=True)
    threads = torch.get_num_threads()
    print(f"{torch.backends.cpu.get_cpu_capability()}, {runtime.precision}, {threads} threads")
    for preset in sys.argv[1:] or PRESETS:
        cfg = load_config(preset, [])
        sides = cfg.augment.sizes or [cfg.augment.crop or 56]
        model = create_model(cfg.model.name, num_classes=200, **cfg.model.options)
        model = runtime.prepare_model(model).train()
        conv.CHOICES = KernelChoices(path=None)
        start = time.perf_counter()
        for side in sides:
            x = torch.randn(128, 3, side, side).contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                out = model(x)
            out.float().sum().backward()
        total = time.perf_counter() - start
        timed = conv.CHOICES.timed_seconds
        taps = sorted(
            f"{key}:{'+'.join(p for p, t in passes.items() if t)}"
            for key, passes in conv.CHOICES.used().items()
            if any(passes.values())
        )
        print(
            f"{preset}: {len(conv.CHOICES.used())} layer shapes timed in {timed:.1f} s "
            f"(the steps with the timing: {total:.1f} s); matmuls chosen: "
            f"{', '.join(taps) or 'none'}"
        )


if __name__ == "__main__":
    main()

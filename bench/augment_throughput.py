"""Print images/s of augment_batch (all options on) and center_crop; no assertions on time.

Run: python bench/augment_throughput.py [--device cpu|cuda] [--threads 2] [--batch 256]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from tinycnn.data.augment import AugmentConfig, augment_batch, center_crop
from tinycnn.data.normalization import Normalization

IMAGE_SIDE = 64  # Tiny ImageNet pixels
CROP = 56  # the paper's training crop


def images_per_second(
    step: Callable[[], torch.Tensor], batch: int, seconds: float, device: torch.device
) -> float:
    """Time ``step`` (one batch) repeatedly for about ``seconds``; images/s of the median batch.

    The median, not the mean: on a shared 2-core VM a few batches stall for a scheduler tick.
    """
    for _ in range(3):  # warm-up: allocator, CUDA kernels, thread pool
        step()
    # CUDA runs asynchronously: wait for the batch, or only the launch would be timed.
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(times) < 5:
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing per figure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (args.batch, IMAGE_SIDE, IMAGE_SIDE, 3)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    full = AugmentConfig(crop=CROP, flip=True, tint=20.0, contrast=0.2, noise_std=1.0, pad=4)
    mean_image = Normalization.from_mean_image(torch.full((IMAGE_SIDE, IMAGE_SIDE, 3), 110.0))
    mean_image = mean_image.to(device)
    channel = Normalization.channel([120.0, 110.0, 100.0], [60.0, 60.0, 60.0]).to(device)
    cases = {
        "augment_batch, all options, no norm": lambda: augment_batch(images, full, generator),
        "augment_batch, all options, mean image": lambda: augment_batch(
            images, full, generator, mean_image
        ),
        "augment_batch, all options, channel norm": lambda: augment_batch(
            images, full, generator, channel
        ),
        "augment_batch, all but noise": lambda: augment_batch(
            images, dataclasses.replace(full, noise_std=0.0), generator
        ),
        "augment_batch, crop + flip only": lambda: augment_batch(
            images, AugmentConfig(crop=CROP), generator
        ),
        "center_crop": lambda: center_crop(images, CROP),
    }
    print(
        f"device {device}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{IMAGE_SIDE}x{IMAGE_SIDE} -> {CROP}x{CROP}, torch {torch.__version__}"
    )
    for name, step in cases.items():
        rate = images_per_second(step, args.batch, args.seconds, device)
        print(f"{name:42s} {rate:12,.0f} images/s")


if __name__ == "__main__":
    main()

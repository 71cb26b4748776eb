"""What several test files share: run settings, reference computations, fault injection.

Plain values and functions, imported by name; the fixtures are in conftest.py.
"""

from __future__ import annotations

import builtins
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from tinycnn import atomic
from tinycnn.cli import main
from tinycnn.config import load_config
from tinycnn.data.cache import load_cache
from tinycnn.inference import load_model
from tinycnn.runtime import make_runtime

# --- run settings ---------------------------------------------------------------------------------


# A small, fast model for the generated 5-class data (60 train images: 3 batches of 16).
SMALL = [
    "model.name=cnn5",
    "model.conv_channels=[8, 8, 8]",
    "model.fc_widths=[32]",
    "train.batch_size=16",
    "train.eval_batch_size=64",
    'data.normalization="channel"',
    "optim.name=nesterov",
    "optim.lr=0.02",
    "train.deterministic=true",
    "train.threads=1",
]


def small_config(cache: Path, *overrides: str):
    """The RunConfig of SMALL on a prepared cache, with overrides ("key=value")."""
    return load_config(None, [f"data.cache={json.dumps(str(cache))}", *SMALL, *overrides])


def cnn5_config(cache: Path, *extra: str):
    """A tiny cnn5 on a prepared cache: Nesterov at lr 0.05, batches of 16, one thread."""
    return load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            "model.name=cnn5",
            "model.conv_channels=[8, 8, 8]",
            "model.fc_widths=[32]",
            'data.normalization="channel"',
            'optim.name="nesterov"',
            "optim.lr=0.05",
            "train.batch_size=16",
            "train.threads=1",
            "train.deterministic=true",
            *extra,
        ],
    )


# Two epochs of a tiny cnn5: the public API and the command line, end to end.
QUICK = [
    "model.name=cnn5",
    "model.conv_channels=[8, 8, 8]",
    "model.fc_widths=[32]",
    'data.normalization="channel"',
    "train.batch_size=16",
    "train.threads=1",
    "train.epochs=2",
]


# 50 training images after the hold-out (2 per class): batch 16 -> 3 iterations an epoch, 9 in
# all. Iteration snapshots every 3 iterations fall exactly on epoch ends (fault 1 of issue 7).
RUN = [
    "model.name=cnn5",
    "model.conv_channels=[8, 8, 8]",
    "model.fc_widths=[32]",
    "model.dropout=0.3",
    "train.batch_size=16",
    "train.eval_batch_size=64",
    'data.normalization="channel"',
    "data.holdout_per_class=2",
    "optim.name=nesterov",
    "optim.lr=0.05",
    "augment.noise_std=1.0",
    "train.deterministic=true",
    "train.threads=1",
    "train.epochs=3",
    "train.snapshot_every=3",
    "train.log_every=2",  # steps.jsonl lines at 2, 4, 6, 8: windows across epochs and snapshots
]


def train_argv(cache: Path, out: Path, *extra: str) -> list[str]:
    """``tinycnn train`` of RUN on a cache into out, quiet; extra arguments before --out."""
    sets = [a for item in RUN for a in ("--set", item)]
    return ["train", "--data", str(cache), *sets, *extra, "--out", str(out), "-q"]


# A tiny preset file for tinycnn experiment (studies) and torchrun.
SMALL_PRESET = """
[data]
normalization = "channel"
[model]
name = "cnn5"
conv_channels = [8, 8, 8]
fc_widths = [32]
[train]
epochs = 4
batch_size = 16
threads = 1
"""


# Evaluation in fp32, one thread, no channels-last: the truths computed here are fp32.
FP32 = make_runtime(precision="fp32", channels_last=False, threads=1)


# --- truths computed here, not by tinycnn ---------------------------------------------------------


def _reference_views(images: torch.Tensor, tta: str) -> list[tuple[int, int, bool]]:
    """(top, left, mirrored) of each TTA view of a 64x64 image for a 56x56 model, by hand."""
    assert images.shape[1:3] == (64, 64)
    corners = [(0, 0), (0, 8), (8, 0), (8, 8), (4, 4)]  # TL, TR, BL, BR, centre (floor of 8/2)
    return {
        "center": [(4, 4, False)],
        "flip": [(4, 4, False), (4, 4, True)],
        "10crop": [(y, x, m) for m in (False, True) for y, x in corners],
    }[tta]


def reference_probabilities(cache: Path, checkpoint: Path, tta: str) -> torch.Tensor:
    """(N, C) fp32 probabilities of a checkpoint on the val images, each image's TTA views
    cut, mirrored and normalised here (the run's "channel" setting) and averaged."""
    data = load_cache(cache)
    images = torch.from_numpy(np.array(data.split("val").images))
    model = load_model(checkpoint, FP32).model
    mean = torch.tensor(data.channel_mean, dtype=torch.float32)
    std = torch.tensor(data.channel_std, dtype=torch.float32)
    probs = []
    for top, left, mirrored in _reference_views(images, tta):
        crop = images[:, top : top + 56, left : left + 56, :].float()
        crop = crop.flip(2) if mirrored else crop  # mirror = reversed columns
        x = ((crop - mean) / std).permute(0, 3, 1, 2).contiguous()
        with torch.no_grad():
            probs.append(model(x).softmax(dim=1))
    return torch.stack(probs).mean(dim=0)  # (N, C): each image's own views only


def numbers_by_hand(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """Top-1 and top-5 error, mean -log p(label) and the confusion (rows true), by loops."""
    rows = probs.tolist()
    top1 = top5 = 0
    loss = 0.0
    confusion = [[0] * len(rows[0]) for _ in rows[0]]
    for p, label in zip(rows, labels.tolist(), strict=True):
        guess = max(range(len(p)), key=p.__getitem__)
        confusion[label][guess] += 1
        top1 += guess != label
        top5 += sum(q > p[label] for q in p) >= 5  # 5 classes above it: not in the top 5
        loss -= math.log(p[label])
    n = len(rows)
    return {"top1": top1 / n, "top5": top5 / n, "loss": loss / n, "confusion": confusion}


def normalised(images: np.ndarray, kind: str, cache_dir: Path) -> torch.Tensor:
    """(N, 64, 64, 3) uint8 -> (N, 3, 64, 64) as the config's normalisation defines it."""
    data = load_cache(cache_dir)
    x = torch.from_numpy(np.array(images, dtype=np.float32))
    if kind == "mean_image":
        x = x - torch.from_numpy(np.array(data.mean_image, dtype=np.float32))
    elif kind == "channel":
        mean = torch.tensor(data.channel_mean, dtype=torch.float32)
        x = (x - mean) / torch.tensor(data.channel_std, dtype=torch.float32)
    return x.permute(0, 3, 1, 2)


class StepWatch:
    """Records every optimiser step of a run: lr, parameters and gradients before, after."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def __enter__(self) -> StepWatch:
        def before(optimizer, args, kwargs):
            groups = optimizer.param_groups
            self.steps.append(
                {
                    "lr": [g["lr"] for g in groups],
                    "params": [p for g in groups for p in g["params"]],
                    "w": [p.detach().clone() for g in groups for p in g["params"]],
                    "g": [p.grad.detach().clone() for g in groups for p in g["params"]],
                }
            )

        def after(optimizer, args, kwargs):
            self.steps[-1]["after"] = [p.detach().clone() for p in self.steps[-1]["params"]]

        self.handles = [
            register_optimizer_step_pre_hook(before),
            register_optimizer_step_post_hook(after),
        ]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()


# --- running the command line ---------------------------------------------------------------------


@dataclass
class Small:
    """The `small` fixture (conftest.py): a tiny model two iterations into training."""

    dataset: Path  # generated dataset folder
    cache: Path
    run: Path
    checkpoint: Path  # run/checkpoints/last.pt, two iterations of a tiny cnn5


def run_cli(capsys: pytest.CaptureFixture, argv: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``tinycnn ARGV`` run in-process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """The CLI failed with exit 1 and one "tinycnn: error:" line holding each fragment."""
    assert code == 1, err
    assert "Traceback" not in err and "\x1b" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tinycnn: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def start_tinycnn(argv: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tinycnn", *argv],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def paused(argv: list[str], phase: str, iteration: int, flag: Path) -> subprocess.Popen:
    """Start the CLI and return once it waits at PHASE@ITERATION."""
    process = start_tinycnn(
        argv, {"TINYCNN_PAUSE_AT": f"{phase}@{iteration}", "TINYCNN_PAUSE_FILE": str(flag)}
    )
    deadline = time.monotonic() + 240
    while not flag.exists():
        if process.poll() is not None:
            raise AssertionError(f"ended before {phase}@{iteration}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"never reached {phase}@{iteration}"
        time.sleep(0.05)
    return process


# --- full disks and read-only folders -------------------------------------------------------------
# Simulated in-process: the tests run as root, where chmod 0o555 stops nothing, so
# tinycnn.atomic's ``open`` is replaced by one whose writes fail with the errno (after part of the
# data, so a half-written temporary file exists and must be removed), or ``os.fsync`` fails (as a
# full NFS or quota-limited disk reports it).


class _FailingFile:
    """A real file whose writes fail with an errno after the first 10 bytes (half-written)."""

    def __init__(self, file, code: int, text: str) -> None:
        self.file, self.code, self.text = file, code, text

    def write(self, data) -> int:
        self.file.write(bytes(data)[:10])
        self.file.flush()
        raise OSError(self.code, self.text)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def fail_writes(
    monkeypatch: pytest.MonkeyPatch, code: int, text: str, under: Path | None = None
) -> None:
    """Files tinycnn.atomic opens for writing (under a folder) fail part-way with OSError(code)."""

    def failing_open(path, mode="r", *args, **kwargs):
        file = builtins.open(path, mode, *args, **kwargs)  # noqa: SIM115 (closed by the caller)
        hit = "w" in mode and (under is None or Path(path).is_relative_to(under))
        return _FailingFile(file, code, text) if hit else file

    monkeypatch.setattr(atomic, "open", failing_open, raising=False)


def fail_fsync(
    monkeypatch: pytest.MonkeyPatch, code: int, text: str, under: Path | None = None
) -> None:
    """os.fsync of files (under a folder) fails with OSError(code), as a full disk reports it."""
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if under is None or Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(under):
            raise OSError(code, text)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)


# --- image files ----------------------------------------------------------------------------------


def save_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int], fmt: str = "JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, fmt, **({"quality": 100} if fmt == "JPEG" else {}))


def bn_recompute_case() -> tuple[torch.nn.Module, torch.Tensor]:
    """A small model with two batch-norm layers (seeded) and 10 uint8 8x8 images: at batch_size
    3, batches of 3, 3 and 4 (the remainder joins the last), for recompute_batch_norm."""
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 3), torch.nn.BatchNorm2d(4),
    )  # fmt: skip
    images = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8, generator=generator)
    return model.eval(), images

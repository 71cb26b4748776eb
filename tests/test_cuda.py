"""The GPU path (bench/gpu_check.sh runs these on a machine with CUDA; skipped elsewhere)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.evaluation import evaluate
from tinycnn.run_plan import plan_run
from tinycnn.runtime import make_runtime
from tinycnn.session import load_session
from tinycnn.steps import train_step
from tinycnn.training import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def _cfg(cache: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.cache={json.dumps(str(cache))}",
            "model.name=fastnet",
            "model.width=16",
            'model.init="kaiming"',
            'data.normalization="channel"',
            'optim.name="nesterov"',
            "optim.lr=0.05",
            "optim.label_smoothing=0.1",
            "augment.crop=64",
            "augment.pad=4",
            "augment.sizes=[32, 64]",
            "augment.size_until=[0.5]",
            "augment.mixup=0.2",
            "train.ema_decay=0.9",
            "train.batch_size=16",
            'train.device="cuda"',
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def cache(synth_sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare(synth_sources["folder"], tmp_path_factory.mktemp("cuda") / "c").path


def test_the_inner_loop_never_waits_for_the_gpu(cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(cache, "train.epochs=2")
    plan = replace(plan_run(cfg), runtime=make_runtime("cuda"), flops_by_size={32: 1.0})
    session = load_session(plan, tmp_path / "run")
    assert session.train_images.device.type == "cuda"  # the uint8 split lives on the GPU
    order = torch.arange(len(session.train_labels), device="cuda")
    train_step(session, order[:16])  # first call: allocations, kernel choice
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host-device sync now raises
    try:
        for i in range(1, 3):
            train_step(session, order[16 * i : 16 * (i + 1)])
            session.iteration += 1
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("compile_", [False, True])
def test_a_gpu_run_with_bf16_ema_mixup_and_resizing_is_evaluated_alike_on_the_cpu(
    cache: Path, tmp_path: Path, compile_: bool
) -> None:
    cfg = _cfg(cache, "train.epochs=3", f"train.compile={str(compile_).lower()}")
    result = train(cfg, tmp_path / "run", progress=False)
    rows = result.metrics
    assert rows[-1]["precision"] == ("bf16" if torch.cuda.is_bf16_supported() else "fp32")
    assert torch.cuda.get_device_name() in rows[-1]["hardware"]
    assert all(math.isfinite(row["train_loss"]) for row in rows)
    (cpu,) = evaluate(tmp_path / "run", cache, runtime=make_runtime("cpu", "fp32"))
    (gpu,) = evaluate(tmp_path / "run", cache, runtime=make_runtime("cuda", "fp32"))
    assert cpu.top1_error == gpu.top1_error
    assert cpu.loss == pytest.approx(gpu.loss, rel=1e-3)

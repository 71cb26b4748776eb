"""step_model.py: under train.compile, torch.compile'd training steps train the weights of eager
ones, with one static graph per input side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.training import train


@pytest.mark.slow
def test_a_compiled_run_trains_the_weights_of_an_eager_one(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    overrides = [
        f"data.cache={json.dumps(str(cache))}",
        "model.name=cnn5",
        "model.conv_channels=[8, 8, 8]",
        "model.fc_widths=[16]",
        "model.batch_norm=true",
        "model.dropout=0.0",
        'data.normalization="channel"',
        'optim.name="nesterov"',
        "optim.lr=0.02",
        "train.batch_size=20",
        "train.epochs=1",
        "train.threads=1",
        # fp32 on every machine: under bf16 autocast, inductor's fused kernels round differently.
        'train.precision="fp32"',
    ]
    eager = train(load_config(None, overrides), tmp_path / "eager", progress=False)
    compiled = train(
        load_config(None, [*overrides, "train.compile=true"]), tmp_path / "compiled", progress=False
    )
    assert compiled.iteration == eager.iteration == 3
    for (name, a), b in zip(
        eager.model.state_dict().items(), compiled.model.state_dict().values(), strict=True
    ):
        # Within 1e-4 of each tensor's own scale: a compiled step may run another kernel for a
        # gradient (the first conv's weight gradient differs by ~5e-5 of its scale on some CPUs).
        scale = a.abs().max().item() if a.is_floating_point() else 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * scale, msg=name)
    # The checkpoint holds the model itself, not the compiled wrapper.
    assert not any("_orig_mod" in k for k in compiled.model.state_dict())


def test_compiled_steps_take_one_static_graph_per_side(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Traced with dynamic sides, fastnet width 64 failed in inductor's shape algebra at its
    # second side (48x48 after 32x32; minutes of compiling to show, so the call is checked).
    from tinycnn import compile_choice

    calls = []

    def recording_compile(model, **kwargs):
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", recording_compile)
    monkeypatch.setattr(compile_choice, "COMPILE_CACHE", tmp_path / "compile-choices")
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    overrides = [
        f"data.cache={json.dumps(str(cache))}",
        "model.name=fastnet",
        "model.width=8",
        "augment.sizes=[32, 48]",
        "augment.size_until=[0.5]",
        "train.batch_size=20",
        "train.epochs=1",
        "train.threads=1",
    ]
    for compile_value in ("true", '"auto"'):
        calls.clear()
        config = load_config(None, [*overrides, f"train.compile={compile_value}"])
        train(config, tmp_path / f"run-{len(compile_value)}", progress=False, stop_at_iteration=1)
        assert calls and all(kwargs.get("dynamic") is False for kwargs in calls)

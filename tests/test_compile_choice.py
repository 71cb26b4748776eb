"""train.compile = "auto": compiled at the input sides timed faster, eager elsewhere; the timing
leaves the run untouched, its choices are kept per machine and pinned by a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tinycnn import compile_choice
from tinycnn.checkpoint import load_checkpoint
from tinycnn.compile_choice import SizeDispatch, choose, measure
from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.runtime import make_runtime
from tinycnn.training import train


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(4, 5),
    )


def _fp32() -> object:
    return make_runtime(precision="fp32", channels_last=False)


def test_the_side_dispatch_calls_the_compiled_model_at_its_sides_only() -> None:
    calls = []
    eager = lambda x: calls.append(("eager", x.shape[-1]))  # noqa: E731
    compiled = lambda x: calls.append(("compiled", x.shape[-1]))  # noqa: E731
    dispatch = SizeDispatch(eager, compiled, {32})
    for side in (32, 48, 32, 64):
        dispatch(torch.zeros(1, 3, side, side))
    assert calls == [("compiled", 32), ("eager", 48), ("compiled", 32), ("eager", 64)]


def test_choices_follow_the_timing_with_a_margin_and_are_kept_per_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (eager seconds, compiled seconds) per side: 32 clearly faster compiled, 48 a near-tie
    # (0.96 of eager: under the 5% margin, so eager), 64 slower compiled.
    timings = {32: (1.0, 0.5), 48: (1.0, 0.96), 64: (1.0, 1.2)}
    measured = []

    def fake_measure(model, compiled, side, batch, runtime):
        measured.append(side)
        return timings[side]

    monkeypatch.setattr(compile_choice, "measure", fake_measure)
    path = tmp_path / "machine.json"
    model, runtime = _net(), _fp32()
    choices, line = choose(model, model, [32, 48, 64], 8, runtime, path=path)
    assert choices == {32: True, 48: False, 64: False}
    assert measured == [32, 48, 64]
    assert "2.00x" in line and "compiled at 32x32 " in line
    saved = json.loads(path.read_text())
    assert sorted(saved.values()) == [False, False, True]
    assert all(" b8 " in key and "fp32" in key for key in saved)
    # Read back without timing; a resumed run's own choices win over the file.
    choices, line = choose(model, model, [32, 48, 64], 8, runtime, path=path)
    assert (choices, line, measured) == ({32: True, 48: False, 64: False}, None, [32, 48, 64])
    pinned = {32: False, 48: True, 64: True}
    assert choose(model, model, [32, 48, 64], 8, runtime, path=path, pinned=pinned)[0] == pinned
    # Another batch, or another setting of the run, is another key: timed again.
    choose(model, model, [32], 16, runtime, path=path)
    choose(model, model, [32], 8, runtime, path=path, setting="autotune=False")
    assert measured[3:] == [32, 32]


def test_a_model_that_fails_to_compile_trains_eager_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(model, compiled, side, batch, runtime):
        raise RuntimeError("no C++ compiler found\nmore detail")

    monkeypatch.setattr(compile_choice, "measure", failing)
    model = _net()
    choices, line = choose(model, model, [32], 8, _fp32(), path=tmp_path / "machine.json")
    assert choices == {32: False}
    assert "32x32 compiling failed (RuntimeError: no C++ compiler found)" in line


def test_every_rank_takes_rank_0_s_choice_and_times_with_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A non-zero rank: rank 0 knows side 32 (compiled) and must time 48, where it finds
    # compiled faster though this rank's own timing says otherwise.
    measured = []

    def slower_here(model, compiled, side, batch, runtime):
        measured.append(side)
        return 1.0, 2.0

    rank0 = iter([1, -1, 1])  # 32: known, compiled; 48: unknown; 48 timed: compiled

    def from_rank0(value: int) -> int:
        return next(rank0)

    monkeypatch.setattr(compile_choice, "measure", slower_here)
    model, path = _net(), tmp_path / "machine.json"
    choices, line = choose(
        model, model, [32, 48], 8, _fp32(), path=path, agree=from_rank0, main=False
    )
    assert choices == {32: True, 48: True}
    assert measured == [48]  # timed alongside rank 0, not skipped, not on its own
    assert line is None and not path.exists()  # rank 0 reports and keeps the choices


def test_the_timing_leaves_random_streams_statistics_and_gradients_as_they_were() -> None:
    model = _net().train()
    model(torch.randn(8, 3, 16, 16)).sum().backward()  # gradients and statistics to keep
    for p in model.parameters():
        p.grad = None
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    eager_s, compiled_s = measure(model, model, 16, 8, _fp32())
    assert eager_s > 0 and compiled_s > 0
    assert torch.equal(torch.get_rng_state(), rng)  # dropout's stream not advanced
    for key, value in model.state_dict().items():
        assert torch.equal(value, buffers[key]), key  # running statistics put back
    assert all(p.grad is None for p in model.parameters())


def _overrides(cache: Path) -> list[str]:
    return [
        f"data.cache={json.dumps(str(cache))}",
        "model.name=cnn5",
        "model.conv_channels=[8, 8, 8]",
        "model.fc_widths=[16]",
        "model.batch_norm=true",
        "model.dropout=0.5",
        'data.normalization="channel"',
        'optim.name="nesterov"',
        "optim.lr=0.02",
        "train.batch_size=20",
        "train.epochs=2",
        "train.threads=1",
        'train.precision="fp32"',
    ]


@pytest.mark.slow
def test_an_auto_run_that_stays_eager_equals_an_eager_run_and_a_resume_pins_its_choices(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(compile_choice, "COMPILE_CACHE", tmp_path / "compile-choices")
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    overrides = _overrides(cache)
    eager = train(load_config(None, overrides), tmp_path / "eager", progress=False)
    # Timed for real (the compiled model compiles), then kept eager whatever the timing said:
    # the run must be the eager run exactly, so the timing moved nothing of it.
    monkeypatch.setattr(compile_choice, "MARGIN", 0.0)
    auto_cfg = load_config(None, [*overrides, 'train.compile="auto"'])
    auto = train(auto_cfg, tmp_path / "auto", progress=True)
    assert "train.compile = auto: timed compiled training passes" in capsys.readouterr().out
    for (name, a), b in zip(
        eager.model.state_dict().items(), auto.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    saved = load_checkpoint(tmp_path / "auto" / "checkpoints" / "last.pt")
    assert list(saved["compile_choices"].values()) == [False]

    # A resume takes the run's own choices, though the machine's file now says otherwise.
    def no_timing(*args, **kwargs):
        raise AssertionError("a resumed run must not time again")

    monkeypatch.setattr(compile_choice, "measure", no_timing)
    stopped = train(auto_cfg, tmp_path / "resumed", progress=False, stop_at_iteration=2)
    assert stopped.iteration == 2
    checkpoint = tmp_path / "resumed" / "checkpoints" / "last.pt"
    assert load_checkpoint(checkpoint)["compile_choices"] == saved["compile_choices"]
    files = list((tmp_path / "compile-choices").glob("*.json"))
    assert files  # the first auto run kept its choice for this machine
    for file in files:
        file.write_text(json.dumps(dict.fromkeys(json.loads(file.read_text()), True)))
    resumed = train(auto_cfg, tmp_path / "resumed", resume=True, progress=False)
    for (name, a), b in zip(
        auto.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    resumed_payload = load_checkpoint(checkpoint)
    assert resumed_payload["compile_choices"] == saved["compile_choices"]


@pytest.mark.parametrize("value", ['"yes"', "1", '"true"'])
def test_train_compile_takes_true_false_or_auto_only(value: str) -> None:
    from tinycnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r'train\.compile = .*: expected true, false or "auto"'):
        load_config(None, [f"train.compile={value}"])
    assert load_config(None, ['train.compile="auto"']).train.compile == "auto"


@pytest.mark.slow
def test_an_auto_run_compiled_where_its_file_says_so_trains_the_weights_of_an_eager_run(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(compile_choice, "COMPILE_CACHE", tmp_path / "compile-choices")
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    overrides = [*_overrides(cache), "model.dropout=0.0", "train.epochs=1"]
    eager = train(load_config(None, overrides), tmp_path / "eager", progress=False)
    auto_cfg = load_config(None, [*overrides, 'train.compile="auto"'])
    monkeypatch.setattr(compile_choice, "measure", lambda *args: (1.0, 0.5))  # compiled: 2x
    auto = train(auto_cfg, tmp_path / "auto", progress=True)
    assert "compiled at 56x56" in capsys.readouterr().out  # the banner
    assert load_checkpoint(tmp_path / "auto" / "checkpoints" / "last.pt")["compile_choices"] == {
        "56": True
    }
    for (name, a), b in zip(
        eager.model.state_dict().items(), auto.model.state_dict().values(), strict=True
    ):
        scale = a.abs().max().item() if a.is_floating_point() else 0
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * scale, msg=name)

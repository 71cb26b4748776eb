"""Training compute: FLOPs per image checked against hand counts, and train_pflop in the log."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from tinycnn.checkpoint import load_checkpoint
from tinycnn.compute import training_flops_per_image
from tinycnn.config import load_config
from tinycnn.data.prepare import prepare
from tinycnn.members import resolve_members
from tinycnn.models import create_model
from tinycnn.training import train


def _conv(c_in: int, c_out: int, side: int) -> int:
    return 2 * c_in * 9 * c_out * side * side  # 3x3, padding 1: a multiply-add is 2 FLOPs


def _paper8_forward() -> int:
    convs = _conv(3, 128, 56) + _conv(128, 128, 56) + 2 * _conv(128, 128, 28)
    convs += _conv(128, 128, 14)
    return convs + 2 * (6272 * 400 + 400 * 400 + 400 * 200)


@pytest.mark.parametrize(
    ("model", "size", "expected"),
    [
        # forward: conv 2*27*4*64 + fc 2*256*10; backward: the conv's weight gradient only (the
        # image needs none), the fc's weight and input gradients.
        (
            lambda: nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 10)
            ),
            8,
            2 * (2 * 27 * 4 * 64) + 3 * (2 * 256 * 10),
        ),
        # paper8 at 56x56: forward 1.47 GFLOP; backward twice that, less conv1's input gradient.
        (
            lambda: create_model("paper8", num_classes=200, input_size=56),
            56,
            3 * _paper8_forward() - _conv(3, 128, 56),
        ),
    ],
)
def test_training_flops_per_image_match_a_hand_count(model, size: int, expected: int) -> None:
    assert training_flops_per_image(model(), size) == expected


def _small_cfg(cache: Path, *extra: str):
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


def test_metrics_log_cumulative_training_pflop(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    cfg = _small_cfg(cache, "train.epochs=2")
    result = train(cfg, tmp_path / "run", progress=False)
    model = create_model("cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32])
    per_image = training_flops_per_image(model, 56)
    steps = [row["iteration"] for row in result.metrics]
    assert steps == [3, 6]  # 60 images, batch 16
    for row in result.metrics:
        assert row["train_pflop"] == pytest.approx(row["iteration"] * 16 * per_image / 1e15)
        # The machine the figures come from, with its vector unit and threads.
        capability = torch.backends.cpu.get_cpu_capability()
        assert f"({capability}, 1 thread), fp32" in row["hardware"] or "bf16" in row["hardware"]
    assert "GFLOP per image" in (tmp_path / "run" / "config.toml").read_text()


def test_max_pflop_ends_the_schedule_on_the_budget(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    import math

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    model = create_model("cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32])
    step = 16 * training_flops_per_image(model, 56)  # one batch of 16
    cfg = _small_cfg(
        cache,
        'schedule.name="cosine"',
        "train.epochs=10",
        f"train.max_pflop={5.5 * step / 1e15!r}",  # room for 5 steps, not 6
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert [row["iteration"] for row in result.metrics] == [3, 5]  # epoch 1, then the budget
    last = result.metrics[-1]
    assert last["epoch"] == pytest.approx(5 / 3) and not last["partial_epoch"]
    assert last["train_pflop"] == pytest.approx(5 * step / 1e15)
    assert last["train_pflop"] <= cfg.train.max_pflop
    # The cosine schedule spans the 5 budgeted steps: step 4 (0-based) has lr 0.05 * (1 +
    # cos(4/5 pi)) / 2, not the 0.05 * (1 + cos(4/30 pi)) / 2 of a 30-step schedule.
    assert last["lr"] == pytest.approx(0.05 * (1 + math.cos(0.8 * math.pi)) / 2)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["best.pt", "epoch-001.pt", "last.pt"]
    # The final weights (iteration 5) are only in last.pt: the most recent snapshot for @last:K.
    checkpoints = tmp_path / "run" / "checkpoints"
    chosen = resolve_members(f"{tmp_path / 'run'}@last:2")
    assert chosen == [checkpoints / "epoch-001.pt", checkpoints / "last.pt"]
    assert resolve_members(f"{tmp_path / 'run'}@last:1") == [checkpoints / "last.pt"]
    (tmp_path / "run" / "metrics.jsonl").unlink()  # then the checkpoint says where it is
    assert resolve_members(f"{tmp_path / 'run'}@last:1") == [checkpoints / "last.pt"]


def test_a_budget_ended_run_prints_its_epoch_in_hundredths(
    synth_sources: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    model = create_model("cnn5", num_classes=5, conv_channels=[8, 8, 8], fc_widths=[32])
    step = 16 * training_flops_per_image(model, 56)
    budget = f"train.max_pflop={5.5 * step / 1e15!r}"  # 5 steps of 3 an epoch: 1.666... epochs
    result = train(_small_cfg(cache, "train.epochs=10", budget), tmp_path / "run", progress=True)
    assert result.metrics[-1]["epoch"] == pytest.approx(5 / 3)  # the log keeps the fraction
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1", "epoch 1.66"]  # not 1.6666...


def test_the_weight_ema_is_the_hand_computed_average_and_what_is_evaluated(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    import tinycnn

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    seen: list[dict[int, torch.Tensor]] = []

    def snapshot(optimizer, _args, _kwargs) -> None:
        seen.append(
            {id(p): p.detach().clone() for g in optimizer.param_groups for p in g["params"]}
        )

    handles = [
        register_optimizer_step_pre_hook(snapshot),
        register_optimizer_step_post_hook(snapshot),
    ]
    try:
        result = train(
            _small_cfg(cache, "train.epochs=1", "train.ema_decay=0.5"),
            tmp_path / "run",
            progress=False,
        )
    finally:
        for handle in handles:
            handle.remove()
    # seen: before step 1, after step 1, before step 2, after step 2, ...
    ema = dict(seen[0])
    for t, after in enumerate(seen[1::2], start=1):
        d = min(0.5, (1 + t) / (10 + t))
        ema = {k: d * ema[k] + (1 - d) * after[k] for k in ema}
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "epoch-001.pt")["model"]["state"]
    for name, param in result.model.named_parameters():
        torch.testing.assert_close(state[name], ema[id(param)], rtol=1e-5, atol=1e-6)
        assert not torch.equal(state[name], param.detach()), "the EMA is not the raw weights"
    [evaluation] = tinycnn.evaluate(tmp_path / "run" / "checkpoints" / "epoch-001.pt", cache)
    assert evaluation.top1_error == result.metrics[-1]["val_top1_error"]
    assert evaluation.loss == pytest.approx(result.metrics[-1]["val_loss"], rel=1e-5)


def test_the_ema_checkpoint_holds_the_trained_models_batch_norm_statistics(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    # The EMA averages parameters only; batch norm's running statistics (buffers) are the trained
    # model's. Their truth is written here from the inputs each BN layer saw in training:
    # mean <- 0.9 mean + 0.1 batch mean, var <- 0.9 var + 0.1 unbiased batch var, from 0 and 1.
    import tinycnn.session

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    seen: dict[str, list[torch.Tensor]] = {}
    original = tinycnn.session.build_model

    def build_and_watch(*args, **kwargs):
        model = original(*args, **kwargs)
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):

                def record(m, inputs, name=name) -> None:
                    if m.training:  # training steps, not the evaluations
                        seen.setdefault(name, []).append(inputs[0].detach().clone())

                module.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(tinycnn.session, "build_model", build_and_watch)
    cfg = _small_cfg(
        cache,
        "train.epochs=1",
        "train.ema_decay=0.5",
        "model.batch_norm=true",
        'train.precision="fp32"',
    )
    result = train(cfg, tmp_path / "run", progress=False)
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    state, raw = payload["model"]["state"], payload["train_state"]
    norms = [
        n for n, m in result.model.named_modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)
    ]
    assert len(norms) == 4 and sorted(seen) == sorted(norms)  # after 3 convs and 1 hidden fc
    for name, batches in seen.items():
        assert len(batches) == 3  # 60 images, batches of 16
        mean, var = torch.zeros(batches[0].shape[1]), torch.ones(batches[0].shape[1])
        for x in batches:
            dims = [0, 2, 3] if x.ndim == 4 else [0]
            mean = 0.9 * mean + 0.1 * x.mean(dim=dims)
            var = 0.9 * var + 0.1 * x.var(dim=dims, unbiased=True)
        for key, expected in (("running_mean", mean), ("running_var", var)):
            torch.testing.assert_close(state[f"{name}.{key}"], expected, rtol=1e-4, atol=1e-5)
            assert torch.equal(state[f"{name}.{key}"], raw[f"{name}.{key}"]), (name, key)
        assert state[f"{name}.num_batches_tracked"].item() == 3
    assert any(  # the EMA's parameters are averaged, so they are not the raw ones
        not torch.equal(state[n], p.detach()) for n, p in result.model.named_parameters()
    )


def test_a_resumed_run_continues_the_same_ema(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    cfg = _small_cfg(cache, "train.epochs=2", "train.ema_decay=0.9")
    train(cfg, tmp_path / "whole", progress=False)
    train(cfg, tmp_path / "cut", progress=False, stop_at_iteration=4)
    train(None, tmp_path / "cut", resume=True, progress=False)
    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    cut = load_checkpoint(tmp_path / "cut" / "checkpoints" / "last.pt")
    for key in ("state",):
        for name, tensor in whole["model"][key].items():
            assert torch.equal(cut["model"][key][name], tensor), name
    for name, tensor in whole["train_state"].items():
        assert torch.equal(cut["train_state"][name], tensor), name


def test_the_time_probe_leaves_the_runs_model_untouched(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    from tinycnn.run_plan import plan_run
    from tinycnn.runtime import make_runtime
    from tinycnn.session import load_session
    from tinycnn.timing import probe_step_seconds

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    sizes = ("augment.sizes=[32, 64]", "augment.size_until=[0.5]")
    cfg = load_config(  # a model with batch norm, whose statistics a forward pass moves
        None,
        [f"data.cache={json.dumps(str(cache))}", "model.name=fastnet", "model.width=4", *sizes],
    )
    runtime = make_runtime("cpu", "fp32")
    plan = replace(plan_run(cfg), runtime=runtime, flops_by_size={32: 1.0, 64: 4.0})
    session = load_session(plan, tmp_path / "run")
    model = session.model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seconds = probe_step_seconds(session, {32, 64}, repeats=1)
    assert sorted(seconds) == [32, 64] and all(t > 0 for t in seconds.values())
    after = model.state_dict()
    for name, tensor in before.items():  # batch-norm statistics and the batch count included
        assert torch.equal(after[name], tensor), name
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())


@pytest.mark.slow
def test_a_time_fitted_run_ends_its_schedule_on_the_budget_and_resumes_on_it(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    from tinycnn.schedule import lr_at

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    fitted = ("train.epochs=10000", "train.max_minutes=0.4", "train.fit_to_time=true")
    cfg = _small_cfg(cache, 'schedule.name="onecycle"', *fitted)
    cut = train(cfg, tmp_path / "run", progress=False, stop_at_iteration=30)
    total = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["fitted_total"]
    assert cut.iteration == 30 and 30 < total < 30_000
    result = train(None, tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["fitted_total"] == total
    # The learning rate followed a schedule of the fitted length, from the fit on.
    for row in result.metrics[-3:]:
        i = row["iteration"] - 1
        assert row["lr"] == pytest.approx(lr_at(i, 3, total, 0.05, cfg.schedule))
    if result.stopped == "finished":  # else the safety stop of a very noisy machine
        assert result.iteration == total
        assert result.metrics[-1]["lr"] == pytest.approx(0.05 / total)
    assert result.stopped in ("finished", "time budget")

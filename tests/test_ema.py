"""ema.py: the weights' moving average: by hand, what is evaluated, batch norm's statistics
recomputed for its weights (or, train.ema_bn_images = 0, kept from the trained model), and
carried across a resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers import cnn5_config
from tinycnn.checkpoint import load_checkpoint, save_checkpoint
from tinycnn.data.prepare import prepare
from tinycnn.training import train


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
            cnn5_config(cache, "train.epochs=1", "train.ema_decay=0.5"),
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


def test_without_recomputing_the_ema_holds_the_trained_models_batch_norm_statistics(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    # The EMA averages parameters only; with train.ema_bn_images = 0 batch norm's running
    # statistics (buffers) are the trained model's. Their truth is written here from the inputs
    # each BN layer saw in training: mean <- 0.9 mean + 0.1 batch mean, var <- 0.9 var + 0.1
    # unbiased batch var, from 0 and 1.
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
    cfg = cnn5_config(
        cache,
        "train.epochs=1",
        "train.ema_decay=0.5",
        "model.batch_norm=true",
        'train.precision="fp32"',
        "train.ema_bn_images=0",
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


def test_the_rows_that_recompute_batch_norm_are_the_runs_own_and_leave_torchs_rng_alone() -> None:
    from tinycnn.ema import ema_bn_rows

    before = torch.get_rng_state()
    rows = ema_bn_rows(1000, 300, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(rows, ema_bn_rows(1000, 300, seed=7))  # at every point of the run
    assert len(set(rows.tolist())) == 300 and rows.tolist() == sorted(rows.tolist())
    assert rows.min() >= 0 and rows.max() < 1000
    assert not torch.equal(rows, ema_bn_rows(1000, 300, seed=8))
    assert ema_bn_rows(50, 300, seed=7).tolist() == list(range(50))  # fewer: all of them


def test_the_ema_checkpoint_holds_batch_norm_statistics_recomputed_for_its_weights(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    # The reference: PyTorch's own torch.optim.swa_utils.update_bn, over the centre views of
    # train.ema_bn_images = 30 of the run's own training rows, on the EMA's weights as saved.
    # The logged evaluation is of those statistics.
    from torch.optim.swa_utils import update_bn
    from torch.utils.data import DataLoader, TensorDataset

    import tinycnn
    from tinycnn.data.augment import center_crop
    from tinycnn.data.cache import load_cache
    from tinycnn.ema import ema_bn_rows
    from tinycnn.inference import images_tensor, load_model
    from tinycnn.run_plan import training_rows
    from tinycnn.runtime import make_runtime

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    cfg = cnn5_config(
        cache, "train.epochs=2", "train.ema_decay=0.5", "model.batch_norm=true",
        'train.precision="fp32"', "train.ema_bn_images=30", "data.holdout_per_class=2",
    )  # fmt: skip
    result = train(cfg, tmp_path / "run", progress=False)
    path = tmp_path / "run" / "checkpoints" / "epoch-002.pt"
    payload = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    state, raw = payload["model"]["state"], payload["train_state"]
    loaded = load_model(path, make_runtime("cpu", "fp32"))
    # 30 of the rows the run trained on (not the held-out ones), as ema_bn_rows draws them
    train_rows = training_rows(cfg, load_cache(cache))[0]
    assert len(train_rows) > 30
    rows = train_rows[ema_bn_rows(len(train_rows), 30, cfg.train.seed).numpy()]
    images = images_tensor(load_cache(cache).split("train").images[rows])
    views = center_crop(images, loaded.input_size, loaded.norm)
    update_bn(DataLoader(TensorDataset(views), batch_size=128), loaded.model)
    expected = loaded.model.state_dict()
    means = [k for k in state if k.endswith("running_mean")]
    assert len(means) == 4
    for key in means + [k.replace("mean", "var") for k in means]:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-4, atol=1e-5)
        assert not torch.allclose(state[key], raw[key], rtol=1e-3), key  # not the raw ones
    [evaluation] = tinycnn.evaluate(path, cache, runtime=make_runtime("cpu", "fp32"))
    assert evaluation.top1_error == result.metrics[-1]["val_top1_error"]
    assert evaluation.loss == pytest.approx(result.metrics[-1]["val_loss"], rel=1e-5)


def test_a_resumed_run_continues_the_same_ema(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    # Batch norm statistics recomputed on 20 of the 60 training images: the same 20 each time.
    bn = ("model.batch_norm=true", "train.ema_bn_images=20")
    cfg = cnn5_config(cache, "train.epochs=2", "train.ema_decay=0.9", *bn)
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


def test_a_run_from_before_ema_bn_images_resumes_copying_the_statistics_as_it_trained(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    # Its config.toml has no train.ema_bn_images: the recompute (the new default) would change
    # its evaluations and best.pt halfway; it resumes as the run trained, copying them.
    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    cfg = cnn5_config(cache, "train.epochs=2", "train.ema_decay=0.9", "model.batch_norm=true")
    run = tmp_path / "run"
    train(cfg, run, progress=False, stop_at_iteration=4)
    config = run / "config.toml"
    text = config.read_text()
    assert "ema_bn_images = 7680\n" in text
    config.write_text(text.replace("ema_bn_images = 7680\n", ""))
    last = run / "checkpoints" / "last.pt"  # nor has the config its checkpoint holds
    payload = load_checkpoint(last)
    del payload["config"]["train"]["ema_bn_images"]
    save_checkpoint(last, payload)
    train(None, run, resume=True, progress=False)
    payload = load_checkpoint(run / "checkpoints" / "last.pt")
    state, raw = payload["model"]["state"], payload["train_state"]
    means = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(means) == 8
    for key in means:
        assert torch.equal(state[key], raw[key]), key


def test_the_time_budget_counts_the_recompute_as_evaluation_work(
    synth_sources: dict[str, Path], tmp_path: Path
) -> None:
    from tinycnn.run_plan import plan_run
    from tinycnn.session import load_session

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    for extra, added in (
        (["model.batch_norm=true", "train.ema_bn_images=25"], 25),
        (["model.batch_norm=true", "train.ema_bn_images=1000"], 60),  # all 60 training images
        (["model.batch_norm=true", "train.ema_bn_images=0"], 0),
        (["model.batch_norm=false"], 0),  # no statistics to recompute
    ):
        cfg = cnn5_config(cache, "train.ema_decay=0.9", *extra)
        session = load_session(plan_run(cfg), tmp_path / f"run{len(extra)}{added}")
        evaluation = sum(len(labels) for _, labels in session.eval_sets.values())
        assert session.images_per_evaluation() == evaluation + added, extra

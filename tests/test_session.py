"""session.py: a resumed run builds what a step calls in the precision it trained in."""

from __future__ import annotations

from pathlib import Path

from tinycnn.data.prepare import prepare
from tinycnn.training import train


def test_a_resumed_run_builds_its_step_in_the_precision_it_trained_in(
    synth_sources: dict[str, Path], tmp_path: Path, monkeypatch
) -> None:
    # With train.precision = "auto" a resume takes the precision the run trained in
    # (runtime.keep_precision, in Session.restore); what a step calls is built after that, in
    # it: the kernels agreed and the compile choices timed are those of that precision.
    from dataclasses import replace

    import tinycnn.session
    from tests.helpers import cnn5_config

    cache = prepare(synth_sources["folder"], tmp_path / "cache", progress=False).path
    run = tmp_path / "run"
    train(cnn5_config(cache, "train.epochs=2"), run, progress=False, stop_at_iteration=2)
    kept, given = [], []

    def keep_precision(runtime, trained, configured):
        kept.append(replace(runtime, why="as the run trained so far"))  # a new object
        return kept[-1]

    def build_step_model(model, cfg, schedule, eval_size, runtime, *args):
        given.append(runtime)
        return original(model, cfg, schedule, eval_size, runtime, *args)

    original = tinycnn.session.build_step_model
    monkeypatch.setattr(tinycnn.session, "keep_precision", keep_precision)
    monkeypatch.setattr(tinycnn.session, "build_step_model", build_step_model)
    train(None, run, resume=True, progress=False)
    assert len(kept) == 1 and len(given) == 1 and given[0] is kept[0]

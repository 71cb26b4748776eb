"""members.py: member specs (a run folder, @last, @epochs:, @every:, @top:K, @last:K) resolved to
checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tinycnn.checkpoint import load_checkpoint
from tinycnn.errors import ConfigError
from tinycnn.members import resolve_members


def test_member_specs(run) -> None:
    _, folder = run
    ckpt = folder / "checkpoints"
    assert resolve_members(str(folder)) == [ckpt / "best.pt"]
    assert resolve_members(f"{folder}@last") == [ckpt / "last.pt"]
    assert resolve_members(f"{folder}@every:8") == [ckpt / "iter-0000008.pt"]
    assert resolve_members(f"{folder}@epochs:1,3") == [ckpt / "epoch-001.pt", ckpt / "epoch-003.pt"]
    assert resolve_members(f"{folder}@last:2") == [ckpt / "epoch-003.pt", ckpt / "epoch-004.pt"]
    top = resolve_members(f"{folder}@top:2")
    assert len(top) == 2 and all(p.name.startswith("epoch-") for p in top)
    assert resolve_members(str(ckpt / "last.pt")) == [ckpt / "last.pt"]
    for bad, message in [
        (f"{folder}@sometimes", "unknown selection"),
        (f"{folder}@every:x", "not a positive whole number"),
        (f"{folder}@epochs:1,two", "'two' is not a positive whole number"),
        (f"{folder}@epochs:1.5", "'1.5' is not a positive whole number"),
        (f"{folder}@every:5", "selects no snapshot"),
        (f"{folder}@epochs:9", "no such checkpoint"),
        (str(folder / "nope"), "neither a checkpoint file nor a run folder"),
    ]:
        with pytest.raises(ConfigError, match=message):
            resolve_members(bad)


def _fake_run(root: Path, rows: list[dict], epochs: list[int]) -> Path:
    """A run folder with empty epoch snapshots and the given metrics lines."""
    (root / "checkpoints").mkdir(parents=True)
    for e in epochs:
        (root / "checkpoints" / f"epoch-{e:03d}.pt").write_bytes(b"")
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_top_k_picks_the_k_lowest_selection_errors(tmp_path: Path) -> None:
    # tune and val disagree; a partial (time-budget) line and a deleted snapshot do not count.
    rows = [
        {"epoch": 1, "iteration": 10, "tune_top1_error": 0.5, "val_top1_error": 0.1},
        {"epoch": 2, "iteration": 20, "tune_top1_error": 0.3, "val_top1_error": 0.4},
        {"epoch": 3, "iteration": 30, "tune_top1_error": 0.4, "val_top1_error": 0.2},
        {"epoch": 3.5, "iteration": 35, "tune_top1_error": 0.0, "partial_epoch": True},
        {"epoch": 4, "iteration": 40, "tune_top1_error": 0.2, "val_top1_error": 0.6},
        {"epoch": 5, "iteration": 50, "tune_top1_error": 0.1, "val_top1_error": 0.9},
    ]
    run = _fake_run(tmp_path / "tuned", rows, epochs=[1, 2, 3, 4])  # epoch-005.pt deleted
    ckpt = run / "checkpoints"
    assert resolve_members(f"{run}@top:2") == [ckpt / "epoch-004.pt", ckpt / "epoch-002.pt"]
    assert resolve_members(f"{run}@top:1") == [ckpt / "epoch-004.pt"]
    assert len(resolve_members(f"{run}@top:4")) == 4
    with pytest.raises(ConfigError, match=r"@top:5: selects 4 of the 5 snapshots asked for"):
        resolve_members(f"{run}@top:5")  # fewer members than asked: no silent smaller ensemble
    # Without a tuning split the val error decides.
    val_only = [{k: v for k, v in r.items() if k != "tune_top1_error"} for r in rows[:3]]
    run = _fake_run(tmp_path / "val", val_only, epochs=[1, 2, 3])
    ckpt = run / "checkpoints"
    assert resolve_members(f"{run}@top:2") == [ckpt / "epoch-001.pt", ckpt / "epoch-003.pt"]


def test_top_k_scores_a_budget_ended_runs_final_weights_as_last_pt(tmp_path: Path) -> None:
    # A compute budget ended the run at epoch 3.4: that evaluation is in last.pt only, not in
    # epoch-003.pt (which holds epoch 3's weights and its own, worse, error).
    rows = [
        {"epoch": 1, "iteration": 10, "tune_top1_error": 0.5},
        {"epoch": 2, "iteration": 20, "tune_top1_error": 0.3},
        {"epoch": 3, "iteration": 30, "tune_top1_error": 0.4},
        {"epoch": 3.4, "iteration": 34, "tune_top1_error": 0.2, "partial_epoch": False},
    ]
    run = _fake_run(tmp_path / "budget", rows, epochs=[1, 2, 3])
    ckpt = run / "checkpoints"
    (ckpt / "last.pt").write_bytes(b"")
    assert resolve_members(f"{run}@top:2") == [ckpt / "last.pt", ckpt / "epoch-002.pt"]
    assert resolve_members(f"{run}@top:4") == [
        ckpt / "last.pt",
        ckpt / "epoch-002.pt",
        ckpt / "epoch-003.pt",
        ckpt / "epoch-001.pt",
    ]


def _stored_iteration(path: Path) -> int:
    return load_checkpoint(path)["iteration"]


@pytest.mark.parametrize("with_metrics", [True, False])
def test_last_k_is_the_k_most_recent_snapshots_by_iteration(
    run, tmp_path: Path, with_metrics: bool
) -> None:
    # 3 iterations per epoch, snapshots every 4: epoch-001 (3), iter-4, epoch-002 (6), iter-8,
    # epoch-003 (9), iter-12 and epoch-004 (12, the same weights: one member).
    _, folder = run
    if not with_metrics:  # iterations per epoch then come from a checkpoint
        (tmp_path / "run").mkdir()
        folder = Path(shutil.copytree(folder / "checkpoints", tmp_path / "run" / "checkpoints"))
        folder = folder.parent
    ckpt = folder / "checkpoints"
    snapshots = [*ckpt.glob("iter-*.pt"), *ckpt.glob("epoch-*.pt")]
    iterations = sorted({_stored_iteration(p) for p in snapshots})
    for k in (1, 2, 3, 4, 6):
        chosen = resolve_members(f"{folder}@last:{k}")
        assert [_stored_iteration(p) for p in chosen] == iterations[-k:], k
    assert [p.name for p in resolve_members(f"{folder}@last:3")] == [
        "iter-0000008.pt",
        "epoch-003.pt",
        "epoch-004.pt",
    ]
    assert len(iterations) == 6
    with pytest.raises(ConfigError, match=r"@last:7: selects 6 of the 7 snapshots asked for") as e:
        resolve_members(f"{folder}@last:7")
    # What it can take, by iteration: iter-12 holds epoch 4's weights, so it is not among them.
    assert str(e.value).endswith(
        "(all this selection can take: epoch-001.pt, iter-0000004.pt, epoch-002.pt, "
        "iter-0000008.pt, epoch-003.pt, epoch-004.pt)"
    )
    assert len(resolve_members(f"{folder}@apart:4:6")) == 6
    with pytest.raises(ConfigError, match=r"@apart:4:7: selects 6 of the 7 snapshots asked for"):
        resolve_members(f"{folder}@apart:4:7")


def test_cycle_snapshots_in_the_order_of_their_numbers(tmp_path: Path) -> None:
    # cycle-100 sorts between cycle-10 and cycle-11 as text; the last three are 108-110.
    folder = tmp_path / "cyclic"
    (folder / "checkpoints").mkdir(parents=True)
    for k in range(1, 111):
        (folder / "checkpoints" / f"cycle-{k:02d}.pt").touch()
    chosen = resolve_members(f"{folder}@cycles:3")
    assert [p.name for p in chosen] == ["cycle-108.pt", "cycle-109.pt", "cycle-110.pt"]
    everything = resolve_members(f"{folder}@cycles")
    assert [p.name for p in everything] == [f"cycle-{k:02d}.pt" for k in range(1, 111)]
    with pytest.raises(ConfigError, match=r"@cycles:111: selects 110 of the 111 snapshots"):
        resolve_members(f"{folder}@cycles:111")


def test_a_path_with_an_at_sign_is_a_path(tmp_path: Path) -> None:
    # An existing path is taken whole; otherwise the selection follows the last @.
    folder = tmp_path / "r@1"
    (folder / "checkpoints").mkdir(parents=True)
    for name in ("best.pt", "last.pt"):
        (folder / "checkpoints" / name).touch()
    ckpt = folder / "checkpoints"
    assert resolve_members(str(folder)) == [ckpt / "best.pt"]
    assert resolve_members(str(ckpt / "last.pt")) == [ckpt / "last.pt"]
    assert resolve_members(f"{folder}@last") == [ckpt / "last.pt"]
    with pytest.raises(ConfigError, match=r"r@1@sometimes: unknown selection"):
        resolve_members(f"{folder}@sometimes")

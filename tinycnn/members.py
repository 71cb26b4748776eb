"""Member specs: which checkpoints of a run an evaluation, ensemble or report means.

    RUN_DIR              its best.pt           RUN_DIR@last / RUN_DIR@best
    RUN_DIR@every:N      snapshots N iterations apart (iter-*.pt; the paper used 10,000)
    RUN_DIR@top:K        the K epoch snapshots (and a budget-ended run's last.pt) with the
                         lowest selection error (metrics.jsonl)
    RUN_DIR@last:K       the K most recent snapshots (iter-*, epoch-* and a budget-ended
                         run's final last.pt, by iteration)
    RUN_DIR@epochs:2,4   those epoch snapshots
    RUN_DIR@apart:N:K    K snapshots N iterations apart, ending with the final model: each the
                         saved snapshot (iter-*, epoch-*, a budget-ended last.pt) nearest its
                         target (the paper's snapshot ensemble: RUN@apart:10000:3)
    RUN_DIR@cycles       the snapshots at the end of each cycle of a cyclic schedule
                         (schedule.name = "cyclic"; cycle-*.pt), in order
    RUN_DIR@cycles:K     the last K of them

A selection that asks for K snapshots and finds fewer is an error naming those it can take.
A checkpoint file stands for itself. A path that exists is taken whole, even with an @ in it;
otherwise the selection follows the last @.
"""

from __future__ import annotations

from pathlib import Path

from tinycnn.checkpoint import load_checkpoint
from tinycnn.errors import ConfigError
from tinycnn.run_folder import read_metrics


def snapshot_count(run: str | Path) -> int:
    """How many different models a run's snapshots hold (what @last:K and @apart:N:K can
    take): iter-*, epoch-* and a budget-ended last.pt, one per iteration."""
    return len(_by_iteration(Path(run), _snapshots(Path(run))))


def _snapshots(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    return sorted([*folder.glob("iter-*.pt"), *folder.glob("epoch-*.pt")], key=_position)


def _position(path: Path) -> tuple[int, int]:
    # For listing: iter-* then epoch-* (or cycle-*), each by its number.
    kind, number = path.stem.split("-")
    return (0 if kind == "iter" else 1, int(number))


def _most_recent(run: Path, snapshots: list[Path], k: int) -> list[Path]:
    """The k snapshots saved last, oldest first, by the training iteration they hold."""
    by_iteration = _by_iteration(run, snapshots)
    return [by_iteration[i] for i in sorted(by_iteration)][-k:]


def _apart(run: Path, snapshots: list[Path], spacing: int, k: int) -> list[Path]:
    """k snapshots ``spacing`` iterations apart, ending with the final model, oldest first.

    The paper's snapshot ensemble: 3 snapshots about 10,000 iterations apart. Each target
    iteration (final, final - spacing, ...) takes the saved snapshot nearest to it that is not
    taken yet (the later one on a tie).
    """
    by_iteration = _by_iteration(run, snapshots)
    if not by_iteration:
        return []
    final = max(by_iteration)
    chosen: list[int] = []
    for j in range(k):
        free = [i for i in by_iteration if i not in chosen]
        if not free:
            break
        target = final - j * spacing
        chosen.append(min(free, key=lambda i: (abs(i - target), -i)))
    return [by_iteration[i] for i in sorted(chosen)]


def _by_iteration(run: Path, snapshots: list[Path]) -> dict[int, Path]:
    """The run's snapshots by the training iteration they hold.

    iter-N is at iteration N and epoch-E at E * iters_per_epoch, so the two kinds interleave.
    An iteration snapshot at an epoch's end holds the same weights as that epoch's snapshot:
    only the epoch one is kept, so that k members are k different models.
    A run that a compute or time budget ended inside an epoch keeps its final weights only in
    last.pt: they are the most recent snapshot, so last.pt counts when it is past every other.
    """
    epochs = [p for p in snapshots if p.stem.startswith("epoch-")]
    per_epoch = _iters_per_epoch(run, epochs) if epochs else 0
    by_iteration: dict[int, Path] = {}
    for path in snapshots:  # iter-* first: an epoch snapshot at the same iteration replaces it
        kind, number = path.stem.split("-")
        by_iteration[int(number) * (per_epoch if kind == "epoch" else 1)] = path
    last = run / "checkpoints" / "last.pt"
    if last.is_file():
        final = _final_iteration(run, last)
        if final > max(by_iteration, default=-1):
            by_iteration[final] = last
    return by_iteration


def _final_iteration(run: Path, last: Path) -> int:
    """The iteration last.pt holds: that of the run's last evaluation, else the checkpoint's."""
    rows = read_metrics(run)
    if rows:
        return int(rows[-1]["iteration"])
    return int(load_checkpoint(last)["iteration"])


def _iters_per_epoch(run: Path, epoch_snapshots: list[Path]) -> int:
    """From a complete epoch's metrics line, else from an epoch snapshot's stored iteration."""
    for row in read_metrics(run):
        if not row.get("partial_epoch") and row["epoch"] >= 1:
            return int(row["iteration"]) // int(row["epoch"])
    payload = load_checkpoint(epoch_snapshots[-1])
    return int(payload["iteration"]) // max(1, int(payload["epoch"]))


def resolve_members(spec: str) -> list[Path]:
    """Checkpoint files named by one member spec (see the module docstring)."""
    if Path(spec).exists() or "@" not in spec:
        target, selection = spec, ""
    else:
        target, _, selection = spec.rpartition("@")
    path = Path(target)
    if path.is_file():
        if selection:
            raise ConfigError(f"{spec}: a snapshot selection (@...) needs a run folder")
        return [path]
    if not (path / "checkpoints").is_dir():
        raise ConfigError(
            f"{target}: neither a checkpoint file nor a run folder (with checkpoints/)"
        )
    kind, _, arg = (selection or "best").partition(":")
    if kind in ("best", "last") and not arg:
        return [_existing(path / "checkpoints" / f"{kind}.pt")]
    snapshots = _snapshots(path)
    wanted = None  # the count a @KIND:K selection asks for
    if kind == "every":
        step = _positive_int(spec, arg)
        chosen = [
            p
            for p in snapshots
            if p.stem.startswith("iter-") and int(p.stem.split("-")[1]) % step == 0
        ]
    elif kind == "last":
        wanted = _positive_int(spec, arg)
        chosen = _most_recent(path, snapshots, wanted)
    elif kind == "apart":
        spacing, _, count = arg.partition(":")
        wanted = _positive_int(spec, count)
        chosen = _apart(path, snapshots, _positive_int(spec, spacing), wanted)
    elif kind == "epochs":
        numbers = [_positive_int(spec, v.strip()) for v in arg.split(",") if v.strip()]
        chosen = [_existing(path / "checkpoints" / f"epoch-{e:03d}.pt") for e in numbers]
    elif kind == "top":
        wanted = _positive_int(spec, arg)
        chosen = _top_epochs(path, wanted)
    elif kind == "cycles":
        ends = sorted((path / "checkpoints").glob("cycle-*.pt"), key=_position)
        wanted = _positive_int(spec, arg) if arg else None
        chosen = ends[-wanted:] if wanted else ends
        snapshots = snapshots + ends
    else:
        raise ConfigError(
            f"{spec}: unknown selection @{kind}; use best, last, every:N, top:K, "
            "last:K, epochs:LIST, apart:N:K, cycles or cycles:K"
        )
    if chosen and wanted and len(chosen) < wanted:
        # Fewer members than asked for would change the ensemble without a word (last:30 for
        # last:3 on a run of 6 snapshots). Short, a selection takes all it can: those it names.
        raise ConfigError(
            f"{spec}: selects {len(chosen)} of the {wanted} snapshots asked for (all this "
            f"selection can take: {', '.join(p.name for p in chosen)})"
        )
    if not chosen:
        raise ConfigError(
            f"{spec}: selects no snapshot (the run has "
            f"{', '.join(p.name for p in snapshots) or 'none'})"
        )
    return chosen


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise ConfigError(f"{path}: no such checkpoint")
    return path


def _positive_int(spec: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"{spec}: {text!r} is not a positive whole number")
    return int(text)


def _top_epochs(run: Path, k: int) -> list[Path]:
    """The k snapshots with the lowest selection error, best first.

    Whole epochs are epoch-E.pt. A run that its compute budget ended inside an epoch (epoch
    10.32, say) saved that last evaluation only as last.pt: it competes as last.pt. A time-budget
    partial row is not a snapshot (a resume goes on from it).
    """
    rows = read_metrics(run)
    scored = []
    for i, row in enumerate(rows):
        key = "tune_top1_error" if "tune_top1_error" in row else "val_top1_error"
        if row.get("partial_epoch"):
            continue
        if float(row["epoch"]).is_integer():
            path = run / "checkpoints" / f"epoch-{int(row['epoch']):03d}.pt"
        elif i == len(rows) - 1:
            path = run / "checkpoints" / "last.pt"
        else:
            continue
        if path.is_file():
            scored.append((row[key], path))
    return [p for _, p in sorted(scored)[:k]]


def resolve_checkpoint(spec: str | Path) -> Path:
    """The one checkpoint a spec names (a file, a run folder's best.pt, RUN@last, ...)."""
    paths = resolve_members(str(spec))
    if len(paths) != 1:
        raise ConfigError(f"{spec}: names {len(paths)} checkpoints; give one (e.g. RUN@last)")
    return paths[0]

"""The ranks of a sharded command under torchrun: which commands shard their model passes over
the ranks, and how a rank other than 0 runs one (its output files in a scratch folder, its
stdout silenced)."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Commands whose model passes torchrun shards over the ranks (predict_logits gathers the logits).
SHARDED = ("evaluate", "ensemble", "predict", "report")


def sharded(command: str) -> bool:
    """Whether this is a sharded command under torchrun with more than one rank."""
    return command in SHARDED and int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


@contextlib.contextmanager
def rank_scratch(sharded: bool) -> Iterator[Path | None]:
    """Yields, on a sharded command's ranks other than 0, a temporary folder for their output
    files, with their stdout silenced: they write nothing the user sees. Else None."""
    rank = os.environ.get("RANK", "0")
    if not sharded or rank == "0":
        yield None
        return
    with (
        tempfile.TemporaryDirectory(prefix=f"tinycnn-rank{rank}-") as scratch,
        open(os.devnull, "w") as devnull,
        contextlib.redirect_stdout(devnull),
    ):
        yield Path(scratch)


def rank_args(args: argparse.Namespace, scratch: Path | None) -> argparse.Namespace:
    """A copy of args as one rank of a sharded command runs it: output files in scratch (if
    any), and no probability cache: every rank computes every member afresh, since a cache hit
    on one rank and not another would leave the others waiting in a gather."""
    changes: dict[str, object] = {"no_cache": True} if "no_cache" in vars(args) else {}
    if scratch is not None:
        for name in ("out", "submission"):
            if getattr(args, name, None):
                changes[name] = str(scratch / Path(getattr(args, name)).name)
    return argparse.Namespace(**{**vars(args), **changes})

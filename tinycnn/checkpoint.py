"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and use the model without the run folder: model
name and options, weights, class list and names, the normalisation, the eval crop size, the
resolved config, the position in training (epoch, iteration), optimiser and RNG states, and the
metrics at that point. Only tensors, numbers, strings, lists and dicts are stored, so loading
runs no pickled code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tinycnn import __version__
from tinycnn.atomic import save_buffer
from tinycnn.data.augment import Normalization
from tinycnn.errors import TinycnnError

FORMAT = 1


class CheckpointError(TinycnnError):
    """A checkpoint is missing, unreadable, or not a tinycnn checkpoint."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write payload to path through a temporary file and a rename (never half a file).

    OutputError (naming path and the reason) when the disk is full or the folder not writable.
    """
    header = {"format": FORMAT, "kind": "tinycnn-checkpoint", "tinycnn_version": __version__}
    # Serialised in memory first: torch's file writer turns a full disk into an opaque error.
    save_buffer(path, lambda f: torch.save({**header, **payload}, f))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with weights_only=True; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say which, without the traceback
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    if not isinstance(payload, dict) or payload.get("kind") != "tinycnn-checkpoint":
        raise CheckpointError(f"{path}: not a tinycnn checkpoint")
    if payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format')}, this tinycnn reads format {FORMAT}"
        )
    return payload


def normalization_payload(norm: Normalization | None) -> dict[str, Any]:
    """The normalisation as checkpoint-safe values."""
    if norm is None:
        return {"kind": "none"}
    return {
        "kind": norm.kind,
        "mean_image": norm.mean_image,
        "channel_mean": norm.channel_mean,
        "channel_std": norm.channel_std,
    }


def normalization_from_payload(payload: dict[str, Any]) -> Normalization | None:
    if payload["kind"] == "none":
        return None
    if payload["kind"] == "channel":
        return Normalization.channel(payload["channel_mean"], payload["channel_std"])
    return Normalization.from_mean_image(payload["mean_image"])


def model_from_checkpoint(payload: dict[str, Any]) -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (on the CPU, eval mode)."""
    from tinycnn.models import create_model

    model = create_model(payload["model"]["name"], **payload["model"]["options"])
    model.load_state_dict(payload["model"]["state"])
    return model.eval()

"""Self-describing checkpoints, written atomically and loaded with ``weights_only=True``.

A checkpoint holds everything needed to rebuild and use the model without the run folder: model
name and options, weights, class list and names, the normalisation, the eval crop size, the
resolved config, the position in training (epoch, iteration), optimiser and RNG states, and the
metrics at that point. Only tensors, numbers, strings, lists and dicts are stored, so loading
runs no pickled code.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from tinycnn import __version__
from tinycnn.atomic import save_buffer
from tinycnn.data.normalization import Normalization
from tinycnn.errors import CheckpointError, ConfigError, DamagedCheckpointError, TinycnnError

FORMAT = 1
# What inference needs from a checkpoint (training also reads optimizer, accumulator, ...).
INFERENCE_FIELDS = ("model", "classes", "names", "normalization", "input_size", "config")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write payload to path through a temporary file and a rename (never half a file).

    OutputError (naming path and the reason) when the disk is full or the folder not writable.
    """
    header = {"format": FORMAT, "kind": "tinycnn-checkpoint", "tinycnn_version": __version__}
    # Serialised in memory first: torch's file writer turns a full disk into an opaque error.
    save_buffer(path, lambda f: torch.save({**header, **payload}, f))
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU with weights_only=True; CheckpointError if it is not one.

    The error is one line that says what the file is instead: not a PyTorch file, a damaged
    one (an entry whose bytes fail their CRC-32, e.g. flipped bits in a tensor), a pickled
    object (e.g. a whole model from ``torch.save(model)``), a bare state dict, another format.
    """
    return _read(Path(path), digest=False)[0]


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], str]:
    """load_checkpoint's payload and the sha256 of the very bytes it came from.

    The file is opened once, so a checkpoint replaced meanwhile (a training run copying a better
    epoch to best.pt) can neither mix two versions nor be named by the other's digest.
    """
    return _read(Path(path), digest=True)


def _read(path: Path, digest: bool) -> tuple[dict[str, Any], str]:
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    # One open file for every read: checkpoints are replaced by a rename, never written in place,
    # so the bytes hashed, checked and loaded are one version's, and never all in memory at once.
    try:
        with path.open("rb") as file:
            return _read_file(path, file, digest)
    except OSError as exc:
        raise CheckpointError(f"{path}: not readable ({exc.strerror or exc})") from None


def _read_file(path: Path, file: BinaryIO, digest: bool) -> tuple[dict[str, Any], str]:
    sha256 = ""
    if digest:
        hasher = hashlib.sha256()
        while chunk := file.read(1 << 20):
            hasher.update(chunk)
        sha256 = hasher.hexdigest()
    try:  # is_zipfile lets some damaged end records through as BadZipFile
        archive = zipfile.is_zipfile(file)
    except _DAMAGED as exc:
        raise DamagedCheckpointError(
            f"{path}: not a readable checkpoint ({_first_line(exc)})"
        ) from None
    if not archive:  # every torch.save since 1.6 is a zip archive
        raise DamagedCheckpointError(
            f"{path}: not a readable checkpoint (not a PyTorch zip archive: truncated, or "
            "another kind of file)"
        )
    _verify_entries(path, file)
    file.seek(0)
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused a class: a pickled object
        raise CheckpointError(f"{path}: {_pickled_object(exc)}") from None
    except Exception as exc:  # a damaged archive: say which, without the traceback
        raise DamagedCheckpointError(
            f"{path}: not a readable checkpoint ({_first_line(exc)})"
        ) from None
    if not isinstance(payload, dict) or payload.get("kind") != "tinycnn-checkpoint":
        raise CheckpointError(f"{path}: not a tinycnn checkpoint{_what_it_is(payload)}")
    if payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {payload.get('format')}, this tinycnn reads format {FORMAT}"
        )
    return payload, sha256


# What zipfile raises on damaged headers: besides BadZipFile, a flipped bit in an entry's name
# is a UnicodeDecodeError (a ValueError), one in its flags an "encrypted" RuntimeError, and
# impossible sizes or offsets OSError, EOFError or NotImplementedError (a compression method).
_DAMAGED = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, ValueError, RuntimeError)


def _verify_entries(path: Path, file: BinaryIO) -> None:
    """CheckpointError naming the first entry of the archive (path, open as file) whose bytes
    fail their CRC-32.

    torch.load reads tensor bytes without checking them, so flipped bits on a disk or in a copy
    would load as wrong weights in silence. The check reads the bytes once more, at about 3 GB/s:
    ~0.01 s for 27 MB (1.2 to 1.6 times torch.load's own time), ~0.06 s for 200 MB (0.4 times),
    on 2 busy CPU cores (bench/checkpoint_verify.py).
    """
    try:
        with zipfile.ZipFile(file) as archive:
            for entry in archive.infolist():
                # CRC 0 on a non-empty entry: written without checksums (torch's
                # serialization config save.compute_crc32 = False), so nothing to check.
                if entry.CRC == 0 and entry.file_size:
                    continue
                try:
                    with archive.open(entry) as data:
                        while data.read(1 << 20):  # zipfile checks the CRC at the end
                            pass
                except zipfile.BadZipFile as exc:
                    why = _first_line(exc)
                    if "CRC" in why:
                        why = "its bytes fail their CRC-32 check: changed since it was written"
                    raise DamagedCheckpointError(
                        f"{path}: damaged checkpoint (entry {entry.filename}: {why})",
                        "use another checkpoint, or a sound copy of this one",
                    ) from None
    except _DAMAGED as exc:
        raise DamagedCheckpointError(
            f"{path}: not a readable checkpoint ({_first_line(exc)})"
        ) from None


def _pickled_object(exc: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", _ANSI.sub("", str(exc)))
    if not found:
        return "not a readable checkpoint (its pickled data is damaged or holds objects)"
    return (
        f"not a tinycnn checkpoint (a pickled {found.group(1)} object, e.g. a whole model saved "
        "with torch.save(model); tinycnn does not unpickle objects, for safety); use a "
        "checkpoint written by tinycnn train"
    )


def _what_it_is(payload: object) -> str:
    if (
        isinstance(payload, dict)
        and payload
        and all(isinstance(v, torch.Tensor) for v in payload.values())
    ):
        return (
            " (a bare state dict: it lacks the model name, classes and normalisation that "
            "tinycnn needs)"
        )
    return f" (a {type(payload).__name__} without tinycnn's header)"


def _first_line(exc: Exception) -> str:
    text = _ANSI.sub("", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_state(model: nn.Module, state: dict[str, Any], where: str) -> None:
    """CheckpointError naming every missing, unexpected and misshapen tensor of state.

    where: names the checkpoint in the message, e.g. "run/checkpoints/best.pt".
    """
    own = model.state_dict()
    name = getattr(model, "tinycnn_name", "the model")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"shape of {k} is {_shape(state[k])} in the checkpoint, {_shape(v)} in {name}"
        for k, v in own.items()
        if k in state and _shape(state[k]) != _shape(v)
    ]
    problems = [
        *([f"missing keys: {_names(missing)}"] if missing else []),
        *([f"unexpected keys: {_names(unexpected)}"] if unexpected else []),
        *shapes[:3],
        *([f"{len(shapes) - 3} more shapes differ"] if len(shapes) > 3 else []),
    ]
    if problems:
        listed = "; ".join(problems)
        raise CheckpointError(f"{where}: its weights do not fit model {name}: {listed}")


def check_classes(trained: list[str], classes: list[str], path: str | Path, where: str) -> None:
    """ConfigError when the data's class list is not the one the checkpoint at ``path`` was
    trained on; ``trained``, ``classes``: wnids in order; ``where`` names the data."""
    difference = class_difference(trained, classes)
    if difference:
        raise ConfigError(
            f"{path}: trained on a different class list than {where} ({difference}); use data "
            "prepared from the same dataset"
        )


def class_difference(trained: list[str], classes: list[str]) -> str:
    """How a model's class list differs from the data's (wnids, in order), in words; "" if not."""
    if trained == classes:
        return ""
    if len(trained) != len(classes):
        return f"{len(trained)} classes vs {len(classes)}"
    if set(trained) == set(classes):
        return "same classes, different order"
    differ = sorted(set(classes) - set(trained))
    return f"{len(differ)} classes differ, e.g. {differ[0]}"


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _names(keys: list[str], shown: int = 5) -> str:
    more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
    return ", ".join(keys[:shown]) + more


def normalization_payload(norm: Normalization | None) -> dict[str, Any]:
    """The normalisation as checkpoint-safe values."""
    if norm is None:
        return {"kind": "none"}
    return {
        "kind": norm.kind,
        "mean_image": norm.mean_image,
        "channel_mean": norm.channel_mean,
        "channel_std": norm.channel_std,
        "scale": norm.scale,
    }


def normalization_from_payload(payload: dict[str, Any]) -> Normalization | None:
    scale = payload.get("scale", 1.0)  # checkpoints from before data.scale: 1
    if payload["kind"] == "none":
        return None if scale == 1.0 else Normalization("none", scale=scale)
    if payload["kind"] == "channel":
        return Normalization.channel(payload["channel_mean"], payload["channel_std"], scale)
    return Normalization.from_mean_image(payload["mean_image"], scale)


def model_from_checkpoint(payload: dict[str, Any], path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights (on the CPU, eval mode).

    path: names the checkpoint in errors. CheckpointError when a field is missing, the model
    cannot be built (an unknown name or option), or the weights do not fit it (check_state).
    """
    from tinycnn.models import create_model

    absent = [f for f in INFERENCE_FIELDS if f not in payload]
    spec = payload.get("model")
    if not absent and not (isinstance(spec, dict) and {"name", "options", "state"} <= set(spec)):
        absent = ["model.name, model.options or model.state"]
    if absent:
        raise CheckpointError(f"{path}: damaged tinycnn checkpoint, missing {', '.join(absent)}")
    try:
        model = create_model(spec["name"], **spec["options"])
    except TinycnnError as exc:  # e.g. a model of a newer tinycnn
        raise CheckpointError(f"{path}: cannot rebuild its model ({exc})") from None
    check_state(model, spec["state"], str(path))
    model.load_state_dict(spec["state"])
    return model.eval()

"""Export a checkpoint as one self-contained file for serving: ONNX or TorchScript.

Contract of the exported model, in both formats:
    input  ``images``: uint8 (N, 64, 64, 3), RGB, HWC, 0-255 (a 64x64 PIL image as
           ``np.asarray``, or rows of the cache); N is dynamic.
    output ``logits``: float32 (N, num_classes), classes in the checkpoint's (wnid) order.
The preprocessing is inside the graph: centre crop to the model's input size at offset
(64 - size) // 2 (as ``center_crop``), the checkpoint's normalisation (the mean image at the crop
location, Caffe semantics, or per-channel mean/std on the 0-255 scale), NCHW, fp32 forward. So the
file's logits are tinycnn's evaluation logits (``tta="center"``); ``export_model`` measures that
on real or random images before it publishes the file.

The class list travels with the file: ONNX ``metadata_props`` ``classes`` and ``names`` (JSON
lists) and ``input_spec``, and the contract in the model's ``doc_string``; TorchScript extra files
``classes.json``, ``names.json``, ``input_spec.txt`` and ``metadata.json`` (all of it), read
with ``torch.jit.load(path, _extra_files={name: ""})``.

Exporters, as of torch 2.13: ONNX goes through ``torch.onnx.export(dynamo=True)``, the
torch.export-based default (it needs onnxscript), with the batch as a ``torch.export.Dim``; the
legacy TorchScript-based ONNX exporter (``dynamo=False``) still exists but is deprecated.
TorchScript goes through ``torch.jit.trace``: the graph has no data-dependent control flow, and
``torch.jit.script`` cannot compile the models' formatted error messages. torch.jit itself is
deprecated upstream (its warnings are silenced here), so prefer ONNX for new deployments.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tinycnn import __version__
from tinycnn.atomic import atomic_path, write_into
from tinycnn.checkpoint import load_checkpoint
from tinycnn.data.augment import resize_matrix
from tinycnn.data.cache import load_cache
from tinycnn.data.decode import IMAGE_SIZE
from tinycnn.data.normalization import Normalization
from tinycnn.errors import CacheError, ConfigError, ExportError
from tinycnn.inference import LoadedModel, load_model
from tinycnn.members import resolve_checkpoint
from tinycnn.runtime import make_runtime

FORMATS = ("onnx", "torchscript")
# Max |logit difference| allowed, relative to the largest reference logit (at least 1): float32
# kernels differ by ~1e-6; a preprocessing mistake (crop offset, mean) moves logits far more.
RELATIVE_TOLERANCE = 1e-3
CHECK_IMAGES = 8  # random images checked when the caller gives none
CHECK_BATCH = 500  # images per forward pass in the check, as evaluation's default
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


@dataclass
class ExportReport:
    path: Path
    format: str  # onnx | torchscript
    input_spec: str  # the contract in one line
    max_abs_logit_diff: float  # exported vs PyTorch fp32 evaluation, over the checked images
    images_checked: int
    tolerance: float  # the largest difference allowed


class Preprocessed(nn.Module):
    """uint8 (N, H, W, 3) images -> centre crop, normalise, NCHW -> the model's fp32 logits."""

    def __init__(
        self,
        model: nn.Module,
        norm: Normalization | None,
        size: int,
        image_size: int = IMAGE_SIZE,
        resize: int | None = None,
    ) -> None:
        """Wrap an eval-mode CPU fp32 model.

        Args:
            model: takes (N, 3, size, size) float32, returns (N, C) logits.
            norm: the checkpoint's normalisation; a mean image must be (image_size, image_size, 3).
            size: the crop side the model was trained on.
            image_size: side of the square uint8 input images.
            resize: the side the crop is resized to for the model (progressive resizing), or
                None; done as two matrix products, the numbers of ``resize_views``.
        """
        super().__init__()
        if not 0 < size <= image_size:
            raise ConfigError(f"crop size {size} does not fit {image_size}x{image_size} images")
        self.model = model
        self.size = size
        self.top = (image_size - size) // 2  # floor, as center_crop and Caffe's test crop
        kind = norm.kind if norm is not None else "none"
        # Static flags, not tensors of ones and zeros: the exported graph has only the ops needed.
        self.subtract = kind != "none"
        self.divide = kind == "channel"
        self.multiply = norm.scale if norm is not None and norm.scale != 1.0 else None
        if kind == "channel":
            self.register_buffer("shift", norm.channel_mean.clone())  # (3,), 0-255 scale
            self.register_buffer("scale", norm.channel_std.clone())  # (3,)
        elif kind == "mean_image":
            norm._check_fits(image_size, image_size)
            crop = slice(self.top, self.top + size)
            # Caffe subtracts the full mean image before cropping: the crop of the mean is the same.
            self.register_buffer("shift", norm.mean_image[crop, crop, :].clone())  # (size, size, 3)
        self.resize = resize is not None and resize != size
        if self.resize:
            self.register_buffer("rows", resize_matrix(size, resize).T.contiguous())  # (r, size)
            self.register_buffer("cols", resize_matrix(size, resize))  # (size, r)

    def forward(self, images: Tensor) -> Tensor:
        """(N, C) float32 logits of uint8 images (N, H, W, 3)."""
        end = self.top + self.size
        x = images[:, self.top : end, self.top : end, :].to(torch.float32)
        if self.subtract:
            x = x - self.shift
        if self.divide:
            x = x / self.scale
        if self.multiply is not None:
            x = x * self.multiply
        x = x.permute(0, 3, 1, 2)
        if self.resize:
            x = self.rows @ (x @ self.cols)
        return self.model(x)


def export_model(
    checkpoint: str | Path,
    fmt: str,
    out: str | Path,
    *,
    check_images: np.ndarray | None = None,
) -> ExportReport:
    """Export a checkpoint with its preprocessing, checked; returns an ExportReport.

    Args:
        checkpoint: a tinycnn checkpoint file, or a run folder (its best.pt) or RUN@last.
        fmt: "onnx" or "torchscript".
        out: the file to write (replaced if it exists; never a folder). OutputError when it cannot
            be written (disk full, read-only folder); nothing is left behind.
        check_images: (N, 64, 64, 3) uint8 images to compare logits on (default: 8 random ones).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out).expanduser()
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give a file path for the exported model")
    if fmt == "onnx":
        _require_onnx()
    # fp32 without channels_last: the reference is the plain model; keep the caller's threads.
    runtime = make_runtime("cpu", "fp32", channels_last=False, threads=torch.get_num_threads())
    loaded = load_model(resolve_checkpoint(checkpoint), runtime)
    image_size = loaded.image_side  # the side of the images it was trained on
    images = _check_array(check_images, image_size)
    wrapper = Preprocessed(
        loaded.model, loaded.norm, loaded.input_size, image_size, loaded.resize
    ).eval()
    spec = _input_spec(image_size, len(loaded.classes))
    write, run = (
        (_write_onnx, _run_onnx) if fmt == "onnx" else (_write_torchscript, _run_torchscript)
    )
    # A batch of 2, not 1: the exporters specialise a size-1 dimension to a constant.
    example = torch.zeros((2, image_size, image_size, 3), dtype=torch.uint8)

    with atomic_path(out) as tmp:
        # Check the very file that will be published, before publishing it.
        write(wrapper, example, tmp, _metadata(loaded, spec))
        exported = run(tmp, images)
        reference = loaded.logits(torch.from_numpy(images), tta="center").numpy()
        diff, tolerance = _compare(exported, reference, out)
    return ExportReport(out, fmt, spec, diff, len(images), tolerance)


def format_report(report: ExportReport) -> str:
    """Two lines for the CLI: what was written, and how closely it matches evaluation."""
    return (
        f"exported {report.path} ({report.format}): {report.input_spec}\n"
        f"checked on {report.images_checked} images: max |logit diff| vs PyTorch fp32 "
        f"{report.max_abs_logit_diff:.2e} (tolerance {report.tolerance:.1e})"
    )


def find_check_images(
    checkpoint: str | Path, data: str | Path | None = None, count: int = 100
) -> tuple[np.ndarray | None, str]:
    """Real images to check an export on, and a line saying which they are.

    Args:
        checkpoint: as for export_model.
        data: a prepared cache whose val split to use; None: the checkpoint's training cache.
        count: how many val images at most (the first ones).
    Returns: (the images, (N, S, S, 3) uint8, or None where no cache is found: export_model's
        random ones), and where they come from.
    """
    if count < 1:
        raise ConfigError(f"--check-count {count}: check on at least 1 image")
    checkpoint = resolve_checkpoint(checkpoint)
    # A damaged checkpoint without these fields is reported by export_model, in one line.
    named = bool(data)
    if not data:  # the training cache, where it still is; data named must be a cache
        config = load_checkpoint(checkpoint).get("config")
        data = (config or {}).get("data", {}).get("cache")
        if not data or not (Path(data) / "manifest.json").is_file():
            no_cache = "no cache found: pass --data CACHE to check on real ones"
            return None, f"{CHECK_IMAGES} random images ({no_cache})"
    try:
        return _val_images(checkpoint, data, count)
    except CacheError as exc:  # the training cache, found damaged: no reason to stop an export
        if named:
            raise
        return None, f"{CHECK_IMAGES} random images (the training cache is damaged: {exc})"


def _val_images(checkpoint: Path, data: str | Path, count: int) -> tuple[np.ndarray, str]:
    cache = load_cache(data)
    side = load_checkpoint(checkpoint).get("image_size", cache.image_size)
    if cache.image_size != side:  # its images could not be what the export takes
        raise ConfigError(
            f"--data {data}: its images are {cache.image_size}x{cache.image_size}, and "
            f"{checkpoint} was trained on {side}x{side} ones; check the export on a cache of "
            "those (the one it trained on), or leave --data out"
        )
    val = cache.split("val")
    count = min(count, len(val))
    return val.images[:count], f"the first {count} val images of {data}"


def _require_onnx() -> None:
    """ConfigError naming the first missing ONNX package and the install command."""
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            raise ConfigError(
                f"ONNX export needs the {name} package: pip install 'tinycnn[export]'"
            ) from None


def _check_array(images: np.ndarray | None, image_size: int) -> np.ndarray:
    """The images to check on as a contiguous uint8 (N, S, S, 3) array, or ConfigError."""
    if images is None:
        rng = np.random.default_rng(0)  # deterministic: the same check on every run
        return rng.integers(0, 256, (CHECK_IMAGES, image_size, image_size, 3), dtype=np.uint8)
    expected = (image_size, image_size, 3)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ConfigError(f"check_images must be a uint8 numpy array, got {kind}")
    if images.ndim != 4 or images.shape[1:] != expected or len(images) == 0:
        raise ConfigError(
            f"check_images must have shape (N >= 1, {', '.join(map(str, expected))}), "
            f"got {images.shape}"
        )
    # A copy only when needed: torch refuses to wrap the cache's read-only memory maps cleanly.
    return np.require(images, requirements=["C_CONTIGUOUS", "WRITEABLE"])


def _input_spec(image_size: int, num_classes: int) -> str:
    return (
        f"images uint8[N, {image_size}, {image_size}, 3] (RGB, HWC, 0-255) -> "
        f"logits float32[N, {num_classes}]"
    )


def _metadata(loaded: LoadedModel, spec: str) -> dict[str, str]:
    """What travels with the exported file, as strings (ONNX metadata_props / extra files)."""
    norm = loaded.norm.kind if loaded.norm is not None else "none"
    if loaded.norm is not None and loaded.norm.scale != 1.0:
        norm += f", then x {loaded.norm.scale:g}"
    return {
        "classes": json.dumps(loaded.classes),
        "names": json.dumps(loaded.names),
        "input_spec": spec,
        "preprocessing": (
            f"centre crop {loaded.input_size}x{loaded.input_size}, normalisation {norm}, "
            + (f"resized to {loaded.resize}x{loaded.resize}, " if loaded.resize else "")
            + "inside the graph"
        ),
        "tinycnn_version": __version__,
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence upstream deprecation notices and log lines the user cannot act on."""
    onnx_log = logging.getLogger("torch.onnx")  # "torchvision is not installed" lines
    level = onnx_log.level
    onnx_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # The models' input-size check compares shapes that the fixed crop makes constant.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            yield
    finally:
        onnx_log.setLevel(level)


def _write_onnx(wrapper: nn.Module, example: Tensor, path: Path, meta: dict[str, str]) -> None:
    """Export with a dynamic batch, add the contract and class list, save to path."""
    batch = torch.export.Dim("batch")
    try:
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=["images"],
                output_names=["logits"],
                dynamic_shapes={"images": {0: batch}},
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter's errors are long: keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {first}") from exc
    proto = program.model_proto
    proto.doc_string = (
        f"tinycnn {meta['tinycnn_version']} image classifier. {meta['input_spec']}; "
        f"preprocessing: {meta['preprocessing']}. Class order: metadata 'classes' (wnids), "
        "display names: metadata 'names' (JSON lists)."
    )
    proto.graph.input[0].doc_string = meta["input_spec"]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_into(path, proto.SerializeToString())  # a full disk: OutputError from atomic_path


def _run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """(N, C) float32 logits of the ONNX file at path under onnxruntime on the CPU."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # share the CPU as torch does
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batches = [
        session.run(["logits"], {"images": images[lo : lo + CHECK_BATCH]})[0]
        for lo in range(0, len(images), CHECK_BATCH)
    ]
    return np.concatenate(batches)


def _write_torchscript(
    wrapper: nn.Module, example: Tensor, path: Path, meta: dict[str, str]
) -> None:
    """Trace (batch stays dynamic: no op reads it) and save with the class list as extra files."""
    extra = {
        "classes.json": meta["classes"],
        "names.json": meta["names"],
        "input_spec.txt": meta["input_spec"],
        "metadata.json": json.dumps(meta),
    }
    with _quiet_exporter(), torch.no_grad():
        try:
            traced = torch.jit.trace(wrapper, example)
        except Exception as exc:
            raise ExportError(f"TorchScript trace failed: {type(exc).__name__}: {exc}") from exc
        # Into memory, then a Python write: torch.jit.save to a path aborts the whole process
        # when the disk fills up.
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files=extra)
    write_into(path, buffer.getbuffer())


def _run_torchscript(path: Path, images: np.ndarray) -> np.ndarray:
    """(N, C) float32 logits of the TorchScript file at path, loaded afresh on the CPU."""
    with _quiet_exporter(), torch.inference_mode():
        module = torch.jit.load(str(path), map_location="cpu")
        batches = [
            module(torch.from_numpy(images[lo : lo + CHECK_BATCH])).numpy()
            for lo in range(0, len(images), CHECK_BATCH)
        ]
    return np.concatenate(batches)


def _compare(exported: np.ndarray, reference: np.ndarray, out: Path) -> tuple[float, float]:
    """(max |difference|, tolerance); ExportError when the exported model disagrees."""
    if exported.shape != reference.shape:
        raise ExportError(
            f"{out}: exported logits have shape {exported.shape}, evaluation {reference.shape}"
        )
    diff = float(np.abs(exported.astype(np.float64) - reference).max())
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(np.abs(reference).max()))
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{out}: exported logits differ from evaluation by {diff:.3g} (> {tolerance:.3g}); "
            "the exported preprocessing does not match, nothing was written"
        )
    return diff, tolerance

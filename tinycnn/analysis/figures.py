"""The report's figures as PNG bytes: matplotlib plots (the object API on the Agg canvas, so no
window ever opens and no global pyplot state is touched) and image grids composed in numpy.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure
from PIL import Image

from tinycnn.analysis.classes import short_name

# Split -> line style of its curve; one colour per run.
_STYLES = {"train": "-", "val": "--", "tune": ":"}


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def png_of(array: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


def curves_figure(curves: dict[str, list[dict]]) -> bytes:
    """Loss and top-1 error per epoch: one colour per run, line style per split, shared x axis."""
    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, error_ax = fig.subplots(1, 2, sharex=True)
    colours = _colours(len(curves))
    for (run, rows), colour in zip(curves.items(), colours, strict=True):
        for split, style in _STYLES.items():
            for ax, key in ((loss_ax, f"{split}_loss"), (error_ax, f"{split}_top1_error")):
                points = [(r["epoch"], r[key]) for r in rows if key in r]
                if points:
                    x, y = zip(*points, strict=True)
                    scale = 100 if key.endswith("error") else 1
                    ax.plot(
                        x,
                        np.array(y) * scale,
                        style,
                        color=colour,
                        marker=".",
                        label=f"{run} {split}",
                    )
    loss_ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss")
    error_ax.set(xlabel="epoch", ylabel="top-1 error (%)", title="Top-1 error")
    error_ax.set_ylim(bottom=0)
    error_ax.legend(fontsize=8, loc="upper right")
    for ax in (loss_ax, error_ax):
        ax.grid(alpha=0.3)
    return _png(fig)


def _colours(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


def tsne_scatter(points: np.ndarray, labels: np.ndarray, names: list[str]) -> bytes:
    """The embedded codes as dots coloured by true class; a legend when there are few classes."""
    fig = Figure(figsize=(8, 7), layout="constrained")
    ax = fig.subplots()
    present = np.unique(labels)
    colours = _colours(len(present))
    for cls, colour in zip(present, colours, strict=True):
        mine = labels == cls
        # A label starting with "_" is left out of a legend: a zero-width space keeps it in.
        label = short_name(names[cls])
        label = f"\u200b{label}" if label.startswith("_") else label
        ax.scatter(points[mine, 0], points[mine, 1], s=8, color=colour, label=label)
    if len(present) <= 20:
        ax.legend(fontsize=8, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    ax.set(
        title=f"t-SNE of penultimate-layer codes ({len(points)} val images)", xticks=[], yticks=[]
    )
    return _png(fig)


def image_map(images: np.ndarray, layout: np.ndarray, side: int, cell: int) -> np.ndarray:
    """(side * cell, side * cell, 3) uint8: image layout[i] in grid cell i (white where -1)."""
    canvas = np.full((side * cell, side * cell, 3), 255, dtype=np.uint8)
    for i, row in enumerate(layout):
        if row < 0:
            continue
        y, x = divmod(i, side)
        thumb = Image.fromarray(images[row]).resize((cell, cell), Image.Resampling.BILINEAR)
        canvas[y * cell : (y + 1) * cell, x * cell : (x + 1) * cell] = np.asarray(thumb)
    return canvas


def filter_grid(
    weight: np.ndarray, pixels: int = 48, gap: int = 4, columns: int = 16
) -> np.ndarray:
    """(H, W, 3) uint8 grid of first-layer filters (out, 3, k, k), each enlarged to pixels^2.

    Each filter is stretched to the full 0-255 range on its own (as in the paper's Figure 4),
    so the pattern shows, not the magnitude. Single-channel filters are shown in grey.
    """
    out, channels, k, _ = weight.shape
    filters = weight.transpose(0, 2, 3, 1)
    if channels != 3:
        filters = np.repeat(filters.mean(axis=3, keepdims=True), 3, axis=3)
    low = filters.min(axis=(1, 2, 3), keepdims=True)
    span = filters.max(axis=(1, 2, 3), keepdims=True) - low
    scaled = (filters - low) / np.where(span > 0, span, 1)
    step = max(1, pixels // k)
    big = scaled.repeat(step, axis=1).repeat(step, axis=2)  # nearest neighbour: crisp cells
    columns = min(columns, out)
    rows = -(-out // columns)
    side = k * step
    grid = np.full((rows * (side + gap) + gap, columns * (side + gap) + gap, 3), 1.0)
    for i in range(out):
        r, c = divmod(i, columns)
        y, x = gap + r * (side + gap), gap + c * (side + gap)
        grid[y : y + side, x : x + side] = big[i]
    return (grid * 255).round().astype(np.uint8)


def confusion_figure(matrix: np.ndarray, order: np.ndarray, names: list[str]) -> bytes:
    """Row-normalised confusion, classes in ``order``, diagonal left out so the errors show."""
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    shown = rates[np.ix_(order, order)].astype(float)
    np.fill_diagonal(shown, np.nan)
    n = len(order)
    size = 9 if n > 40 else min(9, max(6, 0.2 * n + 2.5))
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.subplots()
    top = np.nanmax(shown) if n > 1 and np.nanmax(shown) > 0 else 1
    image = ax.imshow(
        shown, cmap="magma_r", norm=PowerNorm(0.5, vmin=0, vmax=top), interpolation="nearest"
    )
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class")
    if n <= 40:
        labels = [short_name(names[i]) for i in order]
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
    else:
        ax.set(xticks=[], yticks=[])
    ax.set(xlabel="predicted class", ylabel="true class")
    return _png(fig)


def ensemble_figure(members: list[dict], combined: dict) -> bytes:
    """Each member's val top-1 error as a bar, the ensemble's as a line across them."""
    fig = Figure(figsize=(max(5, 0.6 * len(members) + 3), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(members))
    errors = [100 * m["val_top1_error"] for m in members]
    ax.bar(x, errors, color="#8da0cb", label="member")
    ax.axhline(
        100 * combined["val_top1_error"],
        color="#d95f02",
        lw=2,
        label=f"ensemble {100 * combined['val_top1_error']:.1f}%",
    )
    ax.set_xticks(x, [m["label"] for m in members], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="val top-1 error (%)", title="Members against their ensemble")
    low = min([*errors, 100 * combined["val_top1_error"]])
    ax.set_ylim(max(0, low - 10), max(errors) + 5)
    ax.legend(fontsize=8)
    return _png(fig)

"""The paper's Figure 2: a t-SNE embedding of the last hidden layer's codes, and an image map that
puts each image on a grid cell near its embedded position.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import Tensor, nn

from tinycnn import distributed
from tinycnn.errors import ConfigError
from tinycnn.inference import LoadedModel


def classifier_layer(model: nn.Module) -> tuple[str, nn.Linear]:
    """(name, module) of the layer that turns codes into logits: the model's last nn.Linear."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ConfigError(
            f"{type(model).__name__} has no fully connected layer: no penultimate codes to embed"
        )
    return found[-1]


def penultimate_codes(loaded: LoadedModel, images_u8: Tensor, batch_size: int = 250) -> Tensor:
    """(N, D) float32 inputs of the classifier layer (paper8: the 400-d codes) for uint8 images.

    A forward pre-hook on the classifier records its input while the model runs its normal
    centre-crop inference, so any model whose last nn.Linear is the classifier works.
    """
    _, layer = classifier_layer(loaded.model)
    codes: list[Tensor] = []

    def record(_module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        codes.append(inputs[0].detach().float().flatten(1).cpu())

    handle = layer.register_forward_pre_hook(record)
    try:
        loaded.logits(images_u8, batch_size=batch_size)
    finally:
        handle.remove()
    local = torch.cat(codes) if codes else torch.empty(0, layer.in_features)
    # Under torchrun the hook saw this rank's share only: gather the codes as the logits are.
    d = distributed.current()
    return distributed.gather_rows(local.to(loaded.runtime.device), len(images_u8), d).cpu()


def sample_rows(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """About count rows spread evenly over the classes (seeded), sorted; all rows if fewer."""
    if count >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    # Round-robin over classes in a random order: every class gets count / classes rows.
    rank = np.zeros(len(labels), dtype=np.int64)
    seen: dict[int, int] = {}
    for row in order:
        cls = int(labels[row])
        rank[row] = seen.get(cls, 0)
        seen[cls] = rank[row] + 1
    chosen = order[np.argsort(rank[order], kind="stable")[:count]]
    return np.sort(chosen)


def embed(codes: np.ndarray, seed: int) -> tuple[np.ndarray, dict]:
    """(N, 2) t-SNE positions of (N, D) codes (scikit-learn, seeded), and how it was run.

    Codes are first reduced to 50 dimensions by PCA (standard practice before t-SNE: it removes
    noise and cuts the cost of the neighbour search). One thread: with other work on the
    machine, OpenMP's busy-waiting made two threads 3x slower than one on 2 cores, and one
    thread embeds 2,000 codes in about 20 s.
    """
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    n = len(codes)
    if n < 5:
        raise ConfigError(f"t-SNE needs at least 5 images, got {n}")
    x = codes.astype(np.float32)
    dims = min(50, x.shape[1], n)
    if x.shape[1] > dims:
        with threadpool_limits(1):
            x = PCA(dims, random_state=seed).fit_transform(x)
    perplexity = float(min(30.0, (n - 1) / 3))
    tsne = TSNE(2, perplexity=perplexity, init="pca", random_state=seed, n_jobs=1)
    with threadpool_limits(1):
        points = tsne.fit_transform(x)
    info = {
        "images": n,
        "code_dims": int(codes.shape[1]),
        "pca_dims": int(dims),
        "perplexity": perplexity,
        "implementation": "scikit-learn TSNE (Barnes-Hut, 1 thread)",
        "seconds": time.perf_counter() - start,
    }
    return points.astype(np.float32), info


def grid_layout(points: np.ndarray, side: int) -> np.ndarray:
    """For a side x side grid, the point shown in each cell (row-major), -1 where none.

    Cells are matched to points one-to-one by the assignment that minimises the total squared
    distance between a point's (normalised) position and its cell, so that neighbours in the
    embedding stay neighbours on the grid.
    """
    from scipy.optimize import linear_sum_assignment

    span = points.max(axis=0) - points.min(axis=0)
    unit = (points - points.min(axis=0)) / np.where(span > 0, span, 1)
    ys, xs = np.mgrid[0:side, 0:side]
    # Row 0 at the top, as the scatter plot's y axis points up.
    cells = np.stack([(xs.ravel() + 0.5) / side, 1 - (ys.ravel() + 0.5) / side], axis=1)
    cost = ((unit[:, None, :] - cells[None, :, :]) ** 2).sum(axis=2)
    point_rows, cell_rows = linear_sum_assignment(cost)
    layout = np.full(side * side, -1, dtype=np.int64)
    layout[cell_rows] = point_rows
    return layout

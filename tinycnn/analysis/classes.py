"""Per-class analysis of predictions: accuracy per class, the best and worst classes with example
images (the paper's Figures 5-6), the most confused pairs, a confusion ordering that puts
confused classes together, and the training images the model finds hardest to believe.
"""

from __future__ import annotations

import numpy as np
import torch

from tinycnn.metrics import top_hits


def short_name(name: str) -> str:
    """The first of a WordNet synset's comma-separated names ("goldfish, Carassius auratus")."""
    return name.split(",")[0].strip()


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows the true class, columns the predicted one."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def per_class_table(
    probs: np.ndarray, labels: np.ndarray, classes: list[str], names: list[str]
) -> list[dict]:
    """One row per class: accuracy (top-1, top-5), count, and where its errors go.

    probs: (N, C) probabilities; labels: (N,) class indices.
    """
    predicted = probs.argmax(axis=1)
    _, hit5 = top_hits(torch.from_numpy(probs), torch.from_numpy(labels).long())
    in_top5 = hit5.numpy()  # by the rule of the summary's top-5 error
    matrix = confusion_matrix(predicted, labels, len(classes))
    rows = []
    for c, (wnid, name) in enumerate(zip(classes, names, strict=True)):
        mine = labels == c
        count = int(mine.sum())
        errors = matrix[c].copy()
        errors[c] = 0
        worst = int(errors.argmax())
        rows.append(
            {
                "class": c,
                "wnid": wnid,
                "name": short_name(name),
                "count": count,
                "top1_accuracy": float(matrix[c, c] / count) if count else None,
                "top5_accuracy": float(in_top5[mine].mean()) if count else None,
                "most_confused_with": short_name(names[worst]) if errors[worst] else None,
                "most_confused_count": int(errors[worst]),
            }
        )
    return rows


def best_and_worst(table: list[dict], k: int = 5) -> tuple[list[dict], list[dict]]:
    """The k classes with the highest and the k with the lowest top-1 accuracy.

    Ties are broken by top-5 accuracy, then by class index, so the choice is reproducible; with
    fewer than 2k classes the two lists split them (the best get the odd one) and share none.
    """
    scored = [r for r in table if r["top1_accuracy"] is not None]
    ranked = sorted(scored, key=lambda r: (-r["top1_accuracy"], -r["top5_accuracy"], r["class"]))
    k_best = min(k, (len(ranked) + 1) // 2)
    k_worst = min(k, len(ranked) - k_best)
    worst = ranked[len(ranked) - k_worst :][::-1] if k_worst else []
    return ranked[:k_best], worst


def class_examples(
    predicted: np.ndarray, labels: np.ndarray, cls: int, count: int, seed: int
) -> list[int]:
    """Rows of class cls to show: wrong ones and right ones in proportion to the class's rates,
    at least one of each kind that exists, seeded."""
    rng = np.random.default_rng(seed + cls)
    rows = np.flatnonzero(labels == cls)
    right = rng.permutation(rows[predicted[rows] == cls])
    wrong = rng.permutation(rows[predicted[rows] != cls])
    if not len(rows):
        return []
    n_wrong = round(count * len(wrong) / len(rows))
    at_least = 1 if len(wrong) else 0
    n_wrong = min(len(wrong), max(n_wrong, at_least), count - (1 if len(right) else 0))
    n_right = min(len(right), count - n_wrong)
    return [int(r) for r in np.concatenate([right[:n_right], wrong[:n_wrong]])]


def confused_pairs(matrix: np.ndarray, k: int = 10) -> list[tuple[int, int]]:
    """The k class pairs (a, b), a < b, with the most errors between them in both directions."""
    symmetric = matrix + matrix.T
    a, b = np.triu_indices(len(matrix), k=1)
    counts = symmetric[a, b]
    order = np.lexsort((b, a, -counts))  # most errors first; ties by class index
    return [(int(a[i]), int(b[i])) for i in order[:k] if counts[i] > 0]


def confusion_order(matrix: np.ndarray) -> np.ndarray:
    """A class order that puts classes confused with each other side by side.

    Average-linkage hierarchical clustering of the symmetrised, row-normalised confusion
    (distance 1 - similarity), leaves in optimal order (scipy's ``optimal_ordering``).
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    n = len(matrix)
    if n < 3:
        return np.arange(n)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    similarity = rates + rates.T
    np.fill_diagonal(similarity, 0)
    top = similarity.max()
    distance = 1 - similarity / top if top > 0 else np.ones_like(similarity)
    np.fill_diagonal(distance, 0)
    tree = linkage(squareform(distance, checks=False), "average", optimal_ordering=True)
    return leaves_list(tree)


def pair_examples(
    predicted: np.ndarray, labels: np.ndarray, true: int, guess: int, count: int
) -> list[int]:
    """Up to count rows of class true predicted as guess (first ones, in row order)."""
    rows = np.flatnonzero((labels == true) & (predicted == guess))
    return [int(r) for r in rows[:count]]


def highest_loss(probs: np.ndarray, labels: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """The k rows (of ``rows``) with the highest cross-entropy loss -log p(label), worst first."""
    p_label = probs[rows, labels[rows]]
    loss = -np.log(np.clip(p_label, 1e-12, None))
    order = np.lexsort((rows, -loss))  # highest loss first; ties by row
    return rows[order[:k]]

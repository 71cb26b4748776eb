"""``tinycnn report``: the paper's figures and tables for runs and their ensemble, as one folder:
``index.html`` (opens from disk, no server or network), the figures as PNG files beside it, every
number in ``report.json``, and ``ambiguous.txt`` (training images to drop with
``train --exclude``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from tinycnn import __version__, distributed
from tinycnn.analysis import classes as cls
from tinycnn.analysis import figures, html, tsne
from tinycnn.analysis.experiments import Member, expand_study, load_members, training_curves
from tinycnn.analysis.scores import ensemble_row, score_members, train_probabilities
from tinycnn.atomic import FolderBuild, write_bytes, write_text
from tinycnn.config import config_from_dict
from tinycnn.data.cache import Cache, load_cache
from tinycnn.ensembles import DEFAULT_PROB_CACHE, ProbabilityCache
from tinycnn.errors import ConfigError
from tinycnn.inference import LoadedModel
from tinycnn.run_plan import training_rows
from tinycnn.runtime import Runtime, make_runtime

# About 35 s of t-SNE on 2 CPU cores (scikit-learn Barnes-Hut), plus the forward pass.
DEFAULT_TSNE_IMAGES = 2000
DEFAULT_AMBIGUOUS = 100
EXAMPLES_PER_CLASS = 8
CONFUSED_PAIRS = 8
EXAMPLES_PER_DIRECTION = 4


@dataclass
class Report:
    out: Path  # the report folder
    index: Path  # out / "index.html"
    data: dict  # what report.json holds
    seconds: float


class _Job:
    """What every section needs: the cache, the probability store, the seed, whether to show
    progress bars; and the writer of the report's files (atomic) and image thumbnails."""

    def __init__(
        self, out: Path, cache: Cache, store: ProbabilityCache, seed: int, progress: bool
    ) -> None:
        self.out = out
        self.cache = cache
        self.store = store
        self.seed = seed
        self.progress = progress
        self.files: list[str] = []
        self._images: dict[str, np.ndarray] = {}

    def bar(self, label: str) -> str | None:
        """A progress bar label, or None for no bar."""
        return label if self.progress else None

    def write(self, name: str, data: bytes) -> str:
        write_bytes(self.out / name, data)
        self.files.append(name)
        return name

    def thumbnail(self, split: str, row: int) -> str:
        """images/SPLIT-ROW.png for a cache image (64x64, as stored), written once."""
        name = f"images/{split}-{row}.png"
        if name not in self.files:
            if split not in self._images:
                self._images[split] = self.cache.split(split).images
            self.write(name, figures.png_of(np.asarray(self._images[split][row])))
        return name


def _tsne_section(model: LoadedModel, count: int, job: _Job) -> dict:
    start = time.perf_counter()
    cache, seed = job.cache, job.seed
    val = cache.split("val")
    rows = tsne.sample_rows(val.labels, count, seed)
    images = np.asarray(val.images[rows])
    codes = tsne.penultimate_codes(model, torch.from_numpy(images)).numpy()
    if not distributed.current().main:
        # Under torchrun every rank took its share of the pass above; the embedding (~20 s of a
        # core for 2,000 codes) and the figures are rank 0's alone: the others write no page.
        return {}
    points, info = tsne.embed(codes, seed)
    labels = val.labels[rows].astype(np.int64)
    side = int(np.sqrt(min(len(rows), 900)))
    layout = tsne.grid_layout(points, side)
    cell = int(np.clip(1536 // side, 32, 64))
    info.update(
        model=str(model.path),
        layer=tsne.classifier_layer(model.model)[0],
        scatter=job.write("figures/tsne.png", figures.tsne_scatter(points, labels, cache.names)),
        image_map=job.write(
            "figures/tsne_images.png", figures.png_of(figures.image_map(images, layout, side, cell))
        ),
        grid=side,
        points=[
            [float(x), float(y), int(c), int(r)]
            for (x, y), c, r in zip(points, labels, rows, strict=True)
        ],
        total_seconds=time.perf_counter() - start,
    )
    return info


def _filters_section(model: LoadedModel, job: _Job) -> dict:
    conv = next(
        ((name, m) for name, m in model.model.named_modules() if isinstance(m, torch.nn.Conv2d)),
        None,
    )
    if conv is None:
        return {"layer": None}
    name, layer = conv
    weight = layer.weight.detach().float().cpu().numpy()
    grid = figures.filter_grid(weight)
    return {
        "layer": name,
        "shape": list(weight.shape),
        "figure": job.write("figures/filters.png", figures.png_of(grid)),
    }


def _class_sections(probs, labels, job: _Job) -> dict:
    """Per-class table, best and worst classes with examples, confused pairs, confusion image."""
    cache, seed = job.cache, job.seed
    names = cache.names
    predicted = probs.argmax(axis=1)
    table = cls.per_class_table(probs, labels, cache.classes, names)
    best, worst = cls.best_and_worst(table)

    def examples(row: dict) -> dict:
        chosen = cls.class_examples(predicted, labels, row["class"], EXAMPLES_PER_CLASS, seed)
        shown = [_example(job, "val", r, labels, predicted, names) for r in chosen]
        return {**row, "examples": shown}

    matrix = cls.confusion_matrix(predicted, labels, len(cache.classes))
    pairs = []
    for a, b in cls.confused_pairs(matrix, CONFUSED_PAIRS):
        directions = []
        for true, guess in ((a, b), (b, a)):
            rows = cls.pair_examples(predicted, labels, true, guess, EXAMPLES_PER_DIRECTION)
            directions.append(
                {
                    "true": cls.short_name(names[true]),
                    "predicted": cls.short_name(names[guess]),
                    "count": int(matrix[true, guess]),
                    "examples": [_example(job, "val", r, labels, predicted, names) for r in rows],
                }
            )
        pairs.append({"total": int(matrix[a, b] + matrix[b, a]), "directions": directions})
    order = cls.confusion_order(matrix)
    return {
        "per_class": table,
        "best": [examples(r) for r in best],
        "worst": [examples(r) for r in worst],
        "confused_pairs": pairs,
        "confusion": {
            "order": [cache.classes[i] for i in order],
            "matrix": matrix.tolist(),
            "figure": job.write(
                "figures/confusion.png", figures.confusion_figure(matrix, order, names)
            ),
        },
    }


def _example(job: _Job, split: str, row: int, labels, predicted, names) -> dict:
    return {
        "image": job.thumbnail(split, row),
        "file": job.cache.split(split).files[row],
        "label": cls.short_name(names[labels[row]]),
        "predicted": cls.short_name(names[predicted[row]]),
        "correct": bool(labels[row] == predicted[row]),
    }


def _ambiguous_section(model: LoadedModel, count: int, scan: int, job: _Job) -> dict:
    """The training images with the highest loss under a model, among those it trained on.

    scan: how many of them to score (0: all), a seeded sample spread evenly over the classes.
    """
    start = time.perf_counter()
    cache = job.cache
    labels = np.asarray(cache.split("train").labels, np.int64)
    rows = _trained_rows(model, cache)
    trained = len(rows)
    if scan and scan < len(rows):
        rows = rows[tsne.sample_rows(labels[rows], scan, job.seed)]
    probs = np.zeros((len(labels), len(cache.classes)), np.float32)  # scored rows filled in
    probs[rows] = train_probabilities(model, cache, job.store, rows, job.progress)
    worst = cls.highest_loss(probs, labels, rows, count)
    files = cache.split("train").files
    predicted = probs.argmax(axis=1)
    images = []
    for row in worst:
        item = _example(job, "train", int(row), labels, predicted, cache.names)
        item.update(
            loss=float(-np.log(max(probs[row, labels[row]], 1e-12))),
            label_probability=float(probs[row, labels[row]]),
        )
        images.append(item)
    text = "".join(f"{files[r]}\n" for r in worst)
    return {
        "model": str(model.path),
        "scanned": len(rows),
        "training_images": trained,
        "list": job.write("ambiguous.txt", text.encode("utf-8")),
        "images": images,
        "seconds": time.perf_counter() - start,
    }


def _trained_rows(model: LoadedModel, cache: Cache) -> np.ndarray:
    """The rows of the train split the model trained on: less its tuning split and the images
    its data.exclude list left out (a ConfigError naming the list where it cannot be read)."""
    try:
        return training_rows(config_from_dict(model.config), cache)[0]
    except ConfigError as exc:
        raise ConfigError(
            f"{model.path}: the ambiguous images are drawn from the images it trained on, and "
            f"which those were is not known here: {exc}"
        ) from None


def _timed(timings: dict, name: str, work):
    start = time.perf_counter()
    result = work()
    timings[name] = round(time.perf_counter() - start, 3)
    return result


def _summary(members: list[str], found: list[Member], rows: list[dict], combined, job: _Job):
    """report.json's first part: what was reported on, the experiments table, the curves."""
    ensemble = ensemble_row(rows, combined)
    data = {
        "tinycnn_version": __version__,
        "created": datetime.now().isoformat(timespec="seconds"),
        "data": str(job.cache.path),
        "classes": len(job.cache.classes),
        "val_images": len(job.cache.split("val")),
        "members": list(members),
        "experiments": rows,
        "ensemble": ensemble,
        "ensemble_gain": (min(r["val_top1_error"] for r in rows) - ensemble["val_top1_error"]),
        "curves": training_curves(found),
        "curves_figure": None,
    }
    if any(data["curves"].values()):
        data["curves_figure"] = job.write(
            "figures/curves.png", figures.curves_figure(data["curves"])
        )
    if len(rows) > 1:
        data["ensemble_figure"] = job.write(
            "figures/ensemble.png", figures.ensemble_figure(rows, ensemble)
        )
    return data


def build_report(
    members: list[str],
    cache_dir: str | Path,
    out: str | Path,
    *,
    tsne_images: int = DEFAULT_TSNE_IMAGES,
    ambiguous: int = DEFAULT_AMBIGUOUS,
    scan_train: int = 0,
    seed: int = 0,
    runtime: Runtime | None = None,
    prob_cache: Path | None = DEFAULT_PROB_CACHE,
    progress: bool = False,
) -> Report:
    """Write the analysis report of runs (and their ensemble) into ``out``; returns a Report.

    members: run folders or checkpoints with snapshot selections, as for ``ensemble``; a study
        folder (tinycnn experiment's) stands for its runs, and its table leads section 1.
    tsne_images: val images embedded by t-SNE (spread evenly over classes); bounds its cost.
    ambiguous: how many of the highest-loss training images to list in ambiguous.txt.
    scan_train: training images scored for the ambiguous list (0: all; fewer bounds the cost).
    progress: progress bars for the passes over images.
    """
    if tsne_images < 5:
        raise ConfigError(f"--tsne-images {tsne_images}: t-SNE needs at least 5 images")
    if ambiguous < 1 or scan_train < 0:
        raise ConfigError(
            f"--ambiguous {ambiguous} / --scan-train {scan_train}: list at least 1 image, "
            "scan 0 (all) or more"
        )
    start = time.perf_counter()
    out = Path(out)
    runtime = runtime or make_runtime()
    # Built beside out and moved in at the end: a failure (a full disk) leaves nothing there.
    with FolderBuild(out) as build:
        job = _Job(build.tmp, load_cache(cache_dir), ProbabilityCache(prob_cache), seed, progress)
        data = _sections(members, runtime, tsne_images, ambiguous, scan_train, job)
        data["timings"]["total"] = round(time.perf_counter() - start, 3)
        if distributed.current().main:  # the other ranks' passes are shared, nothing to write
            write_text(build.tmp / "report.json", json.dumps(data, indent=1) + "\n")
            write_text(build.tmp / "index.html", html.page(data))
            build.publish()
    return Report(out, out / "index.html", data, time.perf_counter() - start)


def _sections(
    members: list[str],
    runtime: Runtime,
    tsne_images: int,
    ambiguous: int,
    scan_train: int,
    job: _Job,
) -> dict:
    """Every section's data, its files written through job; timings per section."""
    timings: dict[str, float] = {}
    members, study = expand_study(members)
    found = _timed(timings, "load", lambda: load_members(members))
    rows, combined, best = _timed(
        timings,
        "predict",
        lambda: score_members(found, runtime, job.cache, job.store, job.progress),
    )
    data = _summary(members, found, rows, combined, job)
    data["study"] = study
    data["tsne"] = _timed(timings, "tsne", lambda: _tsne_section(best, tsne_images, job))
    data["filters"] = _timed(timings, "filters", lambda: _filters_section(best, job))
    data.update(_timed(timings, "classes", lambda: _class_sections(*combined["val"], job)))
    data["ambiguous"] = _timed(
        timings, "ambiguous", lambda: _ambiguous_section(best, ambiguous, scan_train, job)
    )
    data["timings"] = timings
    return data

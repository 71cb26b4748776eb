"""Validation error against training compute: results/curves.csv -> results/val-error-vs-pflop.png.

Usage:
  python results/plot.py --add NAME RUN_DIR   # copy a run's evaluations into curves.csv
  python results/plot.py                      # draw the figure from curves.csv

curves.csv keeps, for each named run, every evaluation of its metrics.jsonl: iteration,
cumulative training PFLOP, input size, and the tuning and official-val top-1 errors. The
figure marks the paper's figures (one model 58.2%, the 3-model ensemble 56.7% val error) and the
compute-to-accuracy targets (70% error within 0.5 PFLOP, 56.7% within 1.5, 50% within 3).
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CURVES = HERE / "curves.csv"
FIGURE = HERE / "val-error-vs-pflop.png"
COLUMNS = ["name", "iteration", "train_pflop", "input_size", "tune_top1_error", "val_top1_error"]
TARGETS = [(0.5, 0.70), (1.5, 0.567), (3.0, 0.50)]  # (PFLOP, val top-1 error) of issue 11


def read_curves() -> list[dict]:
    if not CURVES.exists():
        return []
    with CURVES.open(newline="") as f:
        return list(csv.DictReader(f))


def add_run(name: str, run: Path) -> int:
    """Replace NAME's rows in curves.csv by RUN's evaluations; returns how many."""
    rows = [r for r in read_curves() if r["name"] != name]
    added = 0
    for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
        metrics = json.loads(line)  # a partial (time-budget) row is only ever the run's last
        rows.append(
            {
                "name": name,
                "iteration": metrics["iteration"],
                "train_pflop": f"{metrics['train_pflop']:.4f}",
                "input_size": metrics.get("input_size", ""),
                "tune_top1_error": f"{metrics.get('tune_top1_error', float('nan')):.4f}",
                "val_top1_error": f"{metrics['val_top1_error']:.4f}",
            }
        )
        added += 1
    with CURVES.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return added


def draw() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[tuple[float, float]]] = {}
    for row in read_curves():
        curves.setdefault(row["name"], []).append(
            (float(row["train_pflop"]), 100 * float(row["val_top1_error"]))
        )
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, points in curves.items():
        points.sort()
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name)
    ax.axhline(58.2, color="grey", linestyle=":", linewidth=1, label="paper: one model (58.2%)")
    ax.axhline(56.7, color="black", linestyle="--", linewidth=1, label="paper: 3-model ensemble")
    for pflop, error in TARGETS:
        ax.plot([pflop], [100 * error], marker="*", color="red", markersize=10, linestyle="")
    ax.plot([], [], marker="*", color="red", linestyle="", label="targets (PFLOP, error)")
    ax.set_xlabel("training compute (PFLOP = 1e15 FLOPs)")
    ax.set_ylabel("official val top-1 error (%)")
    ax.set_ylim(35, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FIGURE)
    print(f"wrote {FIGURE}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", nargs=2, metavar=("NAME", "RUN_DIR"))
    args = parser.parse_args()
    if args.add:
        name, run = args.add
        print(f"{add_run(name, Path(run))} evaluations of {run} as {name!r} in {CURVES}")
    else:
        draw()


if __name__ == "__main__":
    main()

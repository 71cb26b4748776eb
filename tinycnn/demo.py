"""``tinycnn demo``: the whole job on generated data, so anyone can see tinycnn work in a minute."""

from __future__ import annotations

from pathlib import Path

from tinycnn.data.cache import summarize
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic

DEMO_TOP = "tiny-imagenet-synth"


def run_demo(out: str | Path = "tinycnn-demo", *, seed: int = 0, progress: bool = True) -> str:
    """Generate the demo dataset (once), prepare its cache; returns a printable report.

    Layout of ``out``: ``data/tiny-imagenet-synth/`` (official layout, real JPEGs) and ``cache/``.
    """
    out = Path(out)
    data = out / "data" / DEMO_TOP
    if not (data / "wnids.txt").is_file():
        make_synthetic(
            out / "data",
            classes=10,
            train_per_class=100,
            val_per_class=20,
            test_count=50,
            seed=seed,
            top_folder=DEMO_TOP,
        )
    result = prepare(data, out / "cache", progress=progress)
    state = "prepared" if result.rebuilt else "up to date"
    return f"demo data: {data}\ncache ({state}): {out / 'cache'}\n" + summarize(
        result.manifest, out / "cache"
    )

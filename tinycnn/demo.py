"""``tinycnn demo``: the whole job on generated data, so anyone can see tinycnn work in a minute.

Layout of the output folder: ``data/tiny-imagenet-synth/`` (official layout, real JPEGs),
``cache/`` (the prepared arrays), ``run/`` (a trained model with its metrics and checkpoints) and
``report/`` (the analysis report of the run: ``report/index.html``).
Running the demo again reuses what is complete and resumes what is not.
"""

from __future__ import annotations

import json
from pathlib import Path

from tinycnn.analysis import build_report
from tinycnn.config import load_config
from tinycnn.data.cache import summarize
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic
from tinycnn.training import read_metrics, train

DEMO_TOP = "tiny-imagenet-synth"

# A small model and a modern short recipe: about 20 s on a 2-core laptop CPU.
DEMO_TRAINING = [
    "model.name=cnn5",
    "model.conv_channels=[32, 64, 64]",
    'model.init="kaiming"',
    'data.normalization="channel"',
    'optim.name="nesterov"',
    "optim.lr=0.05",
    "optim.weight_decay=5e-4",
    'schedule.name="cosine"',
    "schedule.warmup_epochs=1",
    "augment.tint=10.0",
    "augment.contrast=0.1",
    "train.epochs=8",
    "train.batch_size=64",
]


def run_demo(out: str | Path = "tinycnn-demo", *, seed: int = 0, progress: bool = True) -> str:
    """Generate the demo dataset (once), prepare it, train a small CNN; returns a report."""
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
    prepared = prepare(data, out / "cache", progress=progress)
    state = "prepared now" if prepared.rebuilt else "up to date"
    lines = [
        f"demo data: {data}",
        f"cache: {state}",
        summarize(prepared.manifest, out / "cache"),
        "",
    ]
    run = out / "run"
    cfg = load_config(
        None, [f"data.cache={json.dumps(str(out / 'cache'))}", *DEMO_TRAINING, f"train.seed={seed}"]
    )
    done = read_metrics(run)
    result = None
    if not done:
        result = train(cfg, run, progress=progress)
    elif len(done) < cfg.train.epochs:
        result = train(None, run, resume=True, progress=progress)
    if result is not None and result.stopped != "finished":
        # Saved and resumable: the next `tinycnn demo` continues where this one stopped.
        raise KeyboardInterrupt("demo training stopped; run the demo again to resume it")
    metrics = read_metrics(run)
    lines.append(
        f"trained cnn5 on {prepared.manifest['splits']['train']['count']} images, "
        f"{len(prepared.manifest['classes'])} classes (chance: "
        f"{1 / len(prepared.manifest['classes']):.0%} accuracy); run folder {run}"
    )
    lines.append("epoch  train loss  val top-1 error  val top-5 error")
    for row in metrics:
        lines.append(
            f"{row['epoch']:>5}  {row['train_loss']:>10.3f}  "
            f"{row['val_top1_error']:>15.1%}  {row['val_top5_error']:>15.1%}"
        )
    final = metrics[-1]
    lines.append(
        f"val accuracy: {1 - final['val_top1_error']:.1%} top-1, "
        f"{1 - final['val_top5_error']:.1%} top-5"
    )
    lines.append(f"report: {_report(run, out / 'cache', out / 'report')} (open it in a browser)")
    return "\n".join(lines)


def _report(run: Path, cache: Path, out: Path) -> Path:
    """The run's analysis report, written unless one newer than the run's best.pt is there."""
    index = out / "index.html"
    best = run / "checkpoints" / "best.pt"
    if index.is_file() and index.stat().st_mtime_ns >= best.stat().st_mtime_ns:
        return index
    # No probability cache: the demo's data is tiny, and ~/.cache stays clean.
    return build_report([str(run)], cache, out, prob_cache=None).index

"""``tinycnn demo``: the whole job on generated data, so anyone can see tinycnn work in minutes.

Layout of the output folder: ``data/tiny-imagenet-synth/`` (official layout, real JPEGs),
``cache/`` (the prepared arrays), ``run/`` (a trained model with its metrics and checkpoints) and
``report/`` (the analysis report of the run: ``report/index.html``).
Running the demo again reuses what is complete and resumes what is not; a folder made with
another --seed is refused (its data and run are that seed's).
"""

from __future__ import annotations

import time
from pathlib import Path

from tinycnn.analysis import build_report
from tinycnn.atomic import write_text
from tinycnn.config import load_config, set_string
from tinycnn.data.prepare import prepare
from tinycnn.data.synthetic import make_synthetic
from tinycnn.errors import ConfigError
from tinycnn.run_folder import read_resolved_config
from tinycnn.training import read_metrics, train

DEMO_TOP = "tiny-imagenet-synth"

# A small model and a modern short recipe; the demo prints how long it took.
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


def run_demo(
    out: str | Path = "tinycnn-demo", *, seed: int = 0, progress: bool = True, say=print
) -> dict:
    """Generate the demo dataset (once), prepare it, train a small CNN and write its report.

    Each step is announced through ``say`` as it happens (progress bars too unless progress is
    False). Returns {"val_top1_error", "val_top5_error", "epochs", "seconds", "paths"}.
    """
    start = time.perf_counter()
    out = Path(out)
    _check_seed(out, seed)
    data = _generate(out, seed, say)
    prepared = prepare(data, out / "cache", progress=progress)
    counts = {name: split["count"] for name, split in prepared.manifest["splits"].items()}
    state = "prepared" if prepared.rebuilt else "up to date"
    say(
        f"cache {out / 'cache'}: {state}, {counts['train']:,} train / {counts['val']:,} val / "
        f"{counts.get('test', 0):,} test images"
    )
    run = out / "run"
    _train_run(run, out / "cache", seed, progress, say)
    report = _report(run, out / "cache", out / "report")
    final = read_metrics(run)[-1]
    chance = 1 - 1 / len(prepared.manifest["classes"])
    seconds = time.perf_counter() - start
    say(
        f"result: val top-1 error {final['val_top1_error']:.1%}, top-5 "
        f"{final['val_top5_error']:.1%} after {final['epoch']} epochs (chance: "
        f"{chance:.1%} top-1 error); {seconds:.0f} s in all"
    )
    paths = {
        "data": (out / "data", "the generated dataset"),
        "cache": (out / "cache", "its prepared uint8 arrays"),
        "run": (run, "config.toml, metrics.jsonl, checkpoints/"),
        "report": (out / "report", f"open {report} in a browser"),
    }
    say("wrote:")
    for folder, what in paths.values():
        say(f"  {folder!s:<32} {_size(folder):>8}  {what}")
    say(NEXT_STEPS)
    return {
        "val_top1_error": final["val_top1_error"],
        "val_top5_error": final["val_top5_error"],
        "epochs": final["epoch"],
        "seconds": seconds,
        "paths": {name: folder for name, (folder, _) in paths.items()},
    }


def _check_seed(out: Path, seed: int) -> None:
    """ConfigError when out holds a demo made with another seed: reusing its data and run would
    report that seed's results as this one's."""
    made = {}
    if (out / "data" / "seed.txt").is_file():
        made["data"] = (out / "data" / "seed.txt").read_text().strip()
    if (out / "run" / "config.toml").is_file():
        made["run"] = str(read_resolved_config(out / "run")["train"]["seed"])
    for what, other in made.items():
        if other != str(seed):
            raise ConfigError(
                f"{out}: its {what} was made with --seed {other}, not {seed}; give another "
                f"--out, or --seed {other} to go on with it"
            )


def _generate(out: Path, seed: int, say) -> Path:
    """The demo dataset's folder, generated unless a complete one is there."""
    data = out / "data" / DEMO_TOP
    if not (data / "wnids.txt").is_file():
        say(f"generating 10 classes of 64x64 images in the official layout: {data}")
        make_synthetic(
            out / "data",
            classes=10,
            train_per_class=100,
            val_per_class=20,
            test_count=50,
            seed=seed,
            top_folder=DEMO_TOP,
        )
        write_text(out / "data" / "seed.txt", f"{seed}\n")
    return data


def _train_run(run: Path, cache: Path, seed: int, progress: bool, say) -> None:
    """Train the demo's run, resume an unfinished one, or say that it is already trained."""
    cfg = load_config(None, [set_string("data.cache", cache), *DEMO_TRAINING, f"train.seed={seed}"])
    done = read_metrics(run) if (run / "metrics.jsonl").is_file() else []
    result = None
    if len(done) >= cfg.train.epochs:
        say(f"run {run}: already trained ({len(done)} epochs)")
    elif (run / "config.toml").is_file():  # stopped, even within its first epoch
        result = train(None, run, resume=True, progress=progress)
    else:
        result = train(cfg, run, progress=progress)
    if result is not None and result.stopped != "finished":
        # Saved and resumable: the next `tinycnn demo` continues where this one stopped.
        raise KeyboardInterrupt("demo training stopped; run the demo again to resume it")


NEXT_STEPS = """next, on the real data (1.4 GB of disk for the cache):
  tinycnn fetch --out data/tiny     # or: tinycnn prepare tiny-imagenet-200.zip --out data/tiny
  tinycnn train --data data/tiny --config configs/quick.toml --out runs/quick
  tinycnn report runs/quick --data data/tiny --out reports/quick"""


def _size(folder: Path) -> str:
    """Disk use of a folder's files, in a readable unit."""
    total = float(sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()))
    for unit in ("B", "kB", "MB", "GB"):
        if total < 1000 or unit == "GB":
            return f"{total:.0f} {unit}" if unit == "B" else f"{total:.1f} {unit}"
        total /= 1000
    return ""


def _report(run: Path, cache: Path, out: Path) -> Path:
    """The run's analysis report, written unless one newer than the run's best.pt is there."""
    index = out / "index.html"
    best = run / "checkpoints" / "best.pt"
    if index.is_file() and index.stat().st_mtime_ns >= best.stat().st_mtime_ns:
        return index
    # No probability cache: the demo's data is tiny, and ~/.cache stays clean.
    return build_report([str(run)], cache, out, prob_cache=None).index

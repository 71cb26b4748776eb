"""The ``tinycnn`` command: argparse subcommands, each a thin call into the library.

Errors raised on purpose (TinycnnError) print as one line without a traceback and exit 1;
Ctrl-C and SIGTERM exit 130/143 (128 + the signal) after the library has cleaned up (no
half-written output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tinycnn import __version__
from tinycnn.errors import ConfigError, Interrupted, TinycnnError


def _cmd_prepare(args: argparse.Namespace) -> int:
    from tinycnn.data.cache import summarize
    from tinycnn.data.prepare import prepare

    result = prepare(
        args.src,
        args.out,
        workers=args.workers,
        resize=args.resize,
        skip_bad=args.skip_bad,
        force=args.force,
        progress=not args.quiet,
        size=args.size,
        classes=args.classes,
    )
    if result.rebuilt:
        images = sum(s["count"] for s in result.manifest["splits"].values())
        if result.reason.startswith("the old cache"):
            print(f"{result.path}: rebuilt because {result.reason}", file=sys.stderr)
        print(
            f"prepared {images} images in {result.seconds:.1f} s "
            f"({images / max(result.seconds, 1e-9):,.0f} images/s)"
        )
    else:
        print(f"{result.path}: up to date with {args.src} (nothing to do; --force rebuilds)")
    if not args.quiet:
        print(summarize(result.manifest, result.path))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    import time

    from tinycnn.data.cache import read_manifest, summarize, verify_cache

    manifest = read_manifest(Path(args.cache))
    if args.verify:
        start = time.perf_counter()
        verify_cache(args.cache)
        gigabytes = sum(manifest["files"].values()) / 1e9
        verified = (
            f"verified {len(manifest['checksums'])} files ({gigabytes:.2f} GB) in "
            f"{time.perf_counter() - start:.1f} s: every sha256 matches the manifest"
        )
    print(json.dumps(manifest, indent=1) if args.json else summarize(manifest, args.cache))
    if args.verify:
        print(verified, file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from tinycnn.data.cache import summarize
    from tinycnn.data.fetch import download
    from tinycnn.data.prepare import prepare

    out = Path(args.out)
    archive = (
        Path(args.archive)
        if args.archive
        else out.parent / (args.url.rstrip("/").rsplit("/", 1)[-1] or "download.zip")
    )
    got = download(
        args.url, archive, sha256=args.sha256, md5=args.md5, size=args.size, progress=not args.quiet
    )
    print(f"{got.path}: {got.size:,} bytes, sha256 {got.sha256}")
    result = prepare(got.path, out, workers=args.workers, progress=not args.quiet)
    if not args.quiet:
        print(summarize(result.manifest, result.path))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from tinycnn import distributed
    from tinycnn.config import load_config
    from tinycnn.training import checkpoint_config, train

    if args.resume:
        if args.config or args.set or args.init_from or args.exclude or args.out:
            raise ConfigError(
                "--resume continues a run with its own config.toml; it takes no "
                "--config, --set, --init-from, --exclude or --out (--data only where its "
                "cache moved)"
            )
        result = train(
            None,
            args.resume,
            resume=True,
            progress=not args.quiet,
            stop_at_iteration=args.stop_at,
            data=args.data,
        )
    else:
        if not args.out:
            raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
        overrides = list(args.set)
        if args.data:
            overrides.insert(0, f"data.cache={json.dumps(args.data)}")
        if args.exclude:
            overrides.append(f"data.exclude={json.dumps(str(Path(args.exclude).resolve()))}")
        if args.config or not args.init_from:
            cfg = load_config(args.config, overrides)
        else:  # --init-from without --config: the checkpoint's settings, with --set changes
            base = checkpoint_config(args.init_from)
            cfg = load_config(None, _as_overrides(base) + overrides)
        result = train(
            cfg,
            args.out,
            init_from=args.init_from,
            progress=not args.quiet,
            stop_at_iteration=args.stop_at,
        )
    last = result.metrics[-1] if result.metrics else None
    if last and distributed.current().main:  # under torchrun: one summary, rank 0's
        print(
            f"{result.stopped}: {result.run_dir} after {result.iteration} iterations; val "
            f"top-1 error {last['val_top1_error']:.2%}, top-5 {last['val_top5_error']:.2%}"
        )
    if result.stopped == "interrupted":
        if distributed.current().main:
            print(f"resume with: tinycnn train --resume {result.run_dir}", file=sys.stderr)
        if result.signal is None and args.stop_at is not None:  # the pause asked for
            return 0
        return 128 + (result.signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    return 0


def _iteration_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of iterations >= 1")
    return value


def _as_overrides(cfg) -> list[str]:
    from tinycnn.config import _toml_value, config_to_dict

    return [
        f"{section}.{key}={_toml_value(value)}"
        for section, values in config_to_dict(cfg).items()
        for key, value in values.items()
    ]


def _cmd_models(args: argparse.Namespace) -> int:
    from tinycnn.models import list_models

    models = list_models()
    # Columns as wide as their widest entry, so that no name or count pushes the rest along.
    name_width = max(len("name"), *(len(info.name) for info in models))
    params_width = max(len("params"), *(len(f"{info.params:,}") for info in models))
    print(f"{'name':<{name_width}} {'params':>{params_width}}  {'input':>5}  description")
    for info in models:
        print(
            f"{info.name:<{name_width}} {info.params:>{params_width},}  "
            f"{info.default_input:>5}  {info.description}"
        )
    return 0


def _runtime(args: argparse.Namespace):
    """The device and precision of args; under torchrun, the process group joined too."""
    from tinycnn import distributed
    from tinycnn.runtime import agree_precision, make_runtime

    runtime = make_runtime(args.device, args.precision)
    distributed.init(runtime.device)
    return agree_precision(runtime)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from tinycnn.data.cache import load_cache
    from tinycnn.evaluation import evaluate, evaluations_json, format_evaluations

    results = evaluate(
        args.checkpoints,
        args.data,
        split=args.split,
        tta=args.tta,
        batch_size=args.batch_size,
        runtime=_runtime(args),
        progress=not (args.json or args.quiet),
    )
    if args.json:
        print(evaluations_json(results))
    else:
        cache = load_cache(args.data)
        print(format_evaluations(results, dict(zip(cache.classes, cache.names, strict=True))))
    return 0


def _cmd_ensemble(args: argparse.Namespace) -> int:
    import warnings

    from tinycnn.ensembles import ProbabilityCacheWarning, ensemble, format_result, save_result

    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProbabilityCacheWarning)
        result = ensemble(
            args.members,
            args.data,
            split=args.split,
            tta=args.tta,
            weights=weights,
            greedy=args.greedy,
            select_on=args.select_on,
            runtime=_runtime(args),
            prob_cache=None if args.no_cache else Path(args.prob_cache),
            progress=not (args.json or args.quiet),
        )
    for warning in caught:  # one line each, as errors are, instead of Python's two
        print(f"tinycnn: warning: {warning.message}", file=sys.stderr)
    # Files only where the user asked (--out): like evaluate, a look at the numbers writes
    # nothing, and never replaces an earlier ensemble's files in the working folder.
    out = save_result(result, args.out) if args.out else None
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(format_result(result))
    if out is not None:  # beside --json's one object, on stderr
        saved = f"saved {out / 'probabilities.npy'} and {out / 'ensemble.json'}"
        print(saved, file=sys.stderr if args.json else sys.stdout)
    elif not args.json:
        print("nothing saved (--out DIR saves probabilities.npy and ensemble.json)")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from tinycnn.ensembles import load_predictor
    from tinycnn.prediction import (
        exit_code,
        format_report,
        predict_files,
        report_json,
        write_submission,
    )

    if not args.submission and not args.images:
        raise ConfigError("say what to predict: --submission FILE (with --data) or --images PATH")
    if args.submission and not args.data:
        raise ConfigError("--submission needs --data CACHE (its test split is predicted)")
    weights = [float(w) for w in args.weights.split(",")] if args.weights else None
    predictor = load_predictor(args.members, tta=args.tta, weights=weights, runtime=_runtime(args))
    if args.submission:
        progress = not (args.json or args.quiet)
        lines = write_submission(predictor, args.data, args.submission, progress=progress)
        print(f"wrote {args.submission}: {lines} lines (test image<TAB>wnid)", file=sys.stderr)
    if not args.images:
        return 0
    report = predict_files(predictor, args.images, top=args.top, max_pixels=args.max_pixels)
    print(report_json(report) if args.json else format_report(report))
    return exit_code(report)


def _cmd_export(args: argparse.Namespace) -> int:
    from tinycnn.export import export_model, format_report

    images, source = _check_images(args)
    print(format_report(export_model(args.checkpoint, args.format, args.out, check_images=images)))
    print(f"check images: {source}")
    return 0


def _check_images(args: argparse.Namespace):
    """Real images to check an export on: --data's val split, else the training cache's."""
    from tinycnn.checkpoint import load_checkpoint
    from tinycnn.data.cache import load_cache
    from tinycnn.members import resolve_checkpoint

    checkpoint = resolve_checkpoint(args.checkpoint)
    # A damaged checkpoint without these fields is reported by export_model, in one line.
    config = load_checkpoint(checkpoint).get("config") if not args.data else {}
    cache_dir = args.data or (config or {}).get("data", {}).get("cache")
    if not cache_dir or not (Path(cache_dir) / "manifest.json").is_file():
        return None, "8 random images (no cache found: pass --data CACHE to check on real ones)"
    val = load_cache(cache_dir).split("val")
    count = min(args.check_count, len(val))
    return val.images[:count], f"the first {count} val images of {cache_dir}"


def _add_inference_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="prepared cache folder")
    p.add_argument("--split", default="val", help="val (default), train or tune")
    p.add_argument(
        "--tta",
        default="center",
        choices=["center", "flip", "10crop"],
        help="test-time views: centre crop, + its mirror, or Caffe's 10 crops",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _cmd_report(args: argparse.Namespace) -> int:
    import warnings

    from tinycnn.analysis import build_report
    from tinycnn.ensembles import ProbabilityCacheWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProbabilityCacheWarning)
        report = build_report(
            args.members,
            args.data,
            args.out,
            tsne_images=args.tsne_images,
            ambiguous=args.ambiguous,
            scan_train=args.scan_train,
            seed=args.seed,
            runtime=_runtime(args),
            prob_cache=None if args.no_cache else Path(args.prob_cache),
            progress=not args.quiet,
        )
    for warning in caught:
        print(f"tinycnn: warning: {warning.message}", file=sys.stderr)
    print(f"report written in {report.seconds:.0f} s: {report.index}")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from tinycnn import distributed
    from tinycnn.studies import format_table, run_experiments

    rows = run_experiments(
        args.configs,
        args.data,
        args.out,
        epochs_scale=args.epochs_scale,
        budget_pflop=args.budget_pflop,
        holdout_per_class=args.holdout_per_class,
        report=not args.no_report,
        progress=not args.quiet,
    )
    if distributed.current().main:  # under torchrun, rank 0 speaks for the job
        print(format_table(rows), end="")
        print(f"wrote {Path(args.out) / 'table.md'} and table.json")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tinycnn.demo import run_demo

    run_demo(args.out, seed=args.seed, progress=not args.quiet)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinycnn",
        description=("Train, ensemble and analyse CNN classifiers on Tiny ImageNet."),
    )
    parser.add_argument("--version", action="version", version=f"tinycnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="decode a dataset once into a memory-mapped cache")
    p.add_argument(
        "src",
        help="Tiny ImageNet folder, .zip or .tar.gz, or your own train/CLASS/*.jpg + "
        "val/CLASS/*.jpg folder or archive",
    )
    p.add_argument("--out", required=True, help="cache folder to create or refresh")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores)")
    p.add_argument(
        "--resize",
        action="store_true",
        help="centre-crop and resize images that are not SIZE x SIZE (always on for your own "
        "class-per-folder data)",
    )
    p.add_argument("--size", type=int, default=64, help="side of the cached images (default 64)")
    p.add_argument(
        "--classes",
        metavar="FILE|official",
        help="keep only these classes (a file of class ids, one per line, or 'official': the "
        "200 of Tiny ImageNet); the rest are dropped and counted",
    )
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="skip unreadable images (each is listed in the manifest)",
    )
    p.add_argument("--force", action="store_true", help="rebuild even if up to date")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=_cmd_prepare)

    p = sub.add_parser("info", help="summarise a prepared cache")
    p.add_argument("cache", help="cache folder")
    p.add_argument("--json", action="store_true", help="print the raw manifest")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every file's sha256 against the manifest (reads the whole cache)",
    )
    p.set_defaults(func=_cmd_info)

    from tinycnn.data.fetch import OFFICIAL_URL

    p = sub.add_parser("fetch", help="download the official zip (resumable, verified), prepare it")
    p.add_argument("--url", default=OFFICIAL_URL, help=f"archive URL (default {OFFICIAL_URL})")
    p.add_argument("--out", required=True, help="cache folder to create")
    p.add_argument("--archive", help="where to keep the download (default: beside --out)")
    p.add_argument("--sha256", help="expected sha256 of the archive")
    p.add_argument("--md5", help="expected md5 (the official zip's is checked by default)")
    p.add_argument("--size", type=int, help="expected size in bytes")
    p.add_argument("--workers", type=int, default=None, help="decode processes (default: cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("train", help="train a model (config TOML + --set overrides)")
    p.add_argument(
        "--data", help="prepared cache folder (sets data.cache; with --resume: where it moved)"
    )
    p.add_argument("--config", help="TOML config, e.g. configs/paper/paper8_l2_5e-4.toml")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.epochs=10 (repeatable)",
    )
    p.add_argument("--out", help="run folder to create")
    p.add_argument(
        "--exclude",
        metavar="FILE",
        help="leave out the training images listed in FILE (e.g. a report's ambiguous.txt)",
    )
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run exactly")
    p.add_argument(
        "--stop-at",
        type=_iteration_count,
        metavar="ITERATIONS",
        help="pause once the run has done this many iterations in all (at the next progress "
        "update): a checkpoint as after Ctrl-C, exit status 0; --resume continues it",
    )
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from a checkpoint's weights with new hyperparameters",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="error rates, per-class accuracy, confusion")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT|RUN_DIR[@SELECTION]")
    _add_inference_options(p)
    p.add_argument("--batch-size", type=int, default=500)
    p.set_defaults(func=_cmd_evaluate)

    from tinycnn.paths import PROB_CACHE

    p = sub.add_parser("ensemble", help="average the probabilities of models and snapshots")
    p.add_argument(
        "members",
        nargs="+",
        metavar="CHECKPOINT|RUN_DIR[@SELECTION]",
        help="e.g. run1@last:3 run2@every:10000 model.pt",
    )
    _add_inference_options(p)
    p.add_argument("--weights", help="comma-separated member weights (default: equal)")
    p.add_argument(
        "--greedy",
        action="store_true",
        help="choose members greedily (with replacement) on --select-on",
    )
    p.add_argument("--select-on", default="tune", help="split for --greedy (default: tune)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="save probabilities.npy and ensemble.json in DIR (default: nothing is written)",
    )
    p.add_argument(
        "--prob-cache",
        default=str(PROB_CACHE),
        help="where member probabilities are cached (by checkpoint sha256 and data content; "
        "TINYCNN_CACHE moves the default; if unwritable: a warning, no caching)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not cache member probabilities")
    p.set_defaults(func=_cmd_ensemble)

    p = sub.add_parser("predict", help="a test-split submission, or top-5 for image files")
    p.add_argument(
        "members",
        nargs="+",
        metavar="CHECKPOINT|RUN_DIR[@SELECTION]",
        help="one model, or several (their probabilities are averaged)",
    )
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--submission", metavar="FILE", help="write test_K.JPEG<TAB>wnid lines")
    p.add_argument("--data", help="prepared cache whose test split --submission predicts")
    p.add_argument("--tta", default="center", choices=["center", "flip", "10crop"])
    p.add_argument("--weights", help="comma-separated member weights (default: equal)")
    p.add_argument("--top", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument(
        "--max-pixels",
        type=int,
        default=50_000_000,
        help="refuse larger images before decoding them, reported as not predicted (default "
        "50000000: 50 megapixels, a few hundred MB to decode; 0: no limit but Pillow's)",
    )
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("export", help="ONNX or TorchScript with the preprocessing built in")
    p.add_argument("checkpoint", help="checkpoint file, or a run folder (its best.pt), RUN@last")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument(
        "--data",
        help="cache whose val images check the export (default: the checkpoint's training cache)",
    )
    p.add_argument("--check-count", type=int, default=100, help="images to check (default 100)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("experiment", help="train several presets (resumable), tabulate them")
    p.add_argument(
        "configs", nargs="+", metavar="CONFIG", help="TOML presets, e.g. configs/paper/*.toml"
    )
    p.add_argument("--data", required=True, help="prepared cache folder")
    p.add_argument("--out", required=True, help="study folder: one run folder per config")
    p.add_argument(
        "--epochs-scale",
        type=float,
        default=1.0,
        help="multiply every preset's epochs (quick studies)",
    )
    p.add_argument(
        "--budget-pflop",
        type=float,
        default=0.0,
        metavar="P",
        help="shrink every preset's whole schedule (epochs, lr steps, warm-up, snapshots) to P "
        "PFLOP of training",
    )
    p.add_argument(
        "--holdout-per-class",
        type=int,
        metavar="N",
        help="hold out N training images per class as every run's tuning split (the paper's "
        "val; default: each preset's own)",
    )
    p.add_argument("--no-report", action="store_true", help="skip the analysis report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_experiment)

    p = sub.add_parser("models", help="list the registered models")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("demo", help="the whole job on generated demo data")
    p.add_argument("--out", default="tinycnn-demo", help="output folder (default ./tinycnn-demo)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("report", help="the paper's figures and tables as one HTML page")
    p.add_argument(
        "members",
        nargs="+",
        metavar="CHECKPOINT|RUN_DIR[@SELECTION]",
        help="runs or snapshots as for ensemble; several are also reported as their ensemble",
    )
    p.add_argument("--data", required=True, help="prepared cache folder (its val split)")
    p.add_argument("--out", required=True, help="folder for index.html, report.json, figures")
    p.add_argument(
        "--tsne-images",
        type=int,
        default=2000,
        metavar="N",
        help="val images embedded by t-SNE (default 2000: about half a minute on 2 cores)",
    )
    p.add_argument(
        "--ambiguous",
        type=int,
        default=100,
        metavar="K",
        help="highest-loss training images listed in ambiguous.txt (default 100)",
    )
    p.add_argument(
        "--scan-train",
        type=int,
        default=0,
        metavar="N",
        help="training images scored for ambiguous.txt: 0 (default) all of them (on a CPU, "
        "minutes: 100,000 took 7.5 min for configs/quick.toml's model on 2 cores), else a "
        "seeded sample of N spread over the classes",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the t-SNE and example choices")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument(
        "--prob-cache",
        default=str(PROB_CACHE),
        help="where member probabilities are cached (as for ensemble)",
    )
    p.add_argument("--no-cache", action="store_true", help="do not cache member probabilities")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_report)
    return parser


def _raise_interrupt(signum: int, _frame) -> None:
    raise Interrupted(signum)


# Commands whose model passes torchrun shards over the ranks (predict_logits gathers the logits).
SHARDED = ("evaluate", "ensemble", "predict", "report")


@contextlib.contextmanager
def _as_rank(args: argparse.Namespace) -> Iterator[None]:
    """Under torchrun, a sharded command's ranks other than 0 compute their shares and write
    nothing the user sees: their output files go to a temporary folder, their stdout nowhere.
    Every rank computes every member afresh (no probability cache): a cache hit on one rank
    and not another would leave the others waiting in a gather."""
    rank = os.environ.get("RANK", "0")
    if args.command not in SHARDED or int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        yield
        return
    if "no_cache" in vars(args):
        args.no_cache = True
    if rank == "0":
        yield
        return
    with tempfile.TemporaryDirectory(prefix=f"tinycnn-rank{rank}-") as scratch:
        for name in ("out", "submission"):
            if getattr(args, name, None):
                setattr(args, name, str(Path(scratch) / Path(getattr(args, name)).name))
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tinycnn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so cleanup code (temporary folders, checkpoints) runs.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with _as_rank(args):
            return args.func(args)
    except TinycnnError as exc:
        print(f"tinycnn: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `tinycnn info --json | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as exc:
        print(
            f"tinycnn: interrupted ({str(exc) or 'Ctrl-C'}); nothing half-written was kept",
            file=sys.stderr,
        )
        return 128 + (exc.signum if isinstance(exc, Interrupted) else signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if "tinycnn.distributed" in sys.modules:  # under torchrun: leave the group cleanly
            sys.modules["tinycnn.distributed"].shutdown()

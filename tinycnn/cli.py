"""The ``tinycnn`` command: argparse subcommands, each a thin call into the library.

Errors raised on purpose (TinycnnError) print as one line without a traceback and exit 1;
Ctrl-C and SIGTERM exit 130/143 (128 + the signal) after the library has cleaned up (no
half-written output).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from tinycnn import cli_args, cli_ranks
from tinycnn.errors import ConfigError, CropError, Interrupted, TinycnnError


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

    from tinycnn.data.cache import load_cache, read_manifest, summarize, verify_cache

    if args.verify:  # every file, each damaged one named (the small files' check would stop first)
        manifest = read_manifest(Path(args.cache))
        start = time.perf_counter()
        verify_cache(args.cache)
        gigabytes = sum(manifest["files"].values()) / 1e9
        verified = (
            f"verified {len(manifest['checksums'])} files ({gigabytes:.2f} GB) in "
            f"{time.perf_counter() - start:.1f} s: every sha256 matches the manifest"
        )
    else:
        manifest = load_cache(args.cache).manifest  # checks the small files (labels, boxes, ...)
    print(json.dumps(manifest, indent=1) if args.json else summarize(manifest, args.cache))
    if args.verify:
        print(verified, file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from tinycnn.data.cache import summarize
    from tinycnn.data.fetch import archive_path, download
    from tinycnn.data.prepare import prepare

    out = Path(args.out)
    archive = Path(args.archive) if args.archive else archive_path(args.url, out.parent)
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
    from tinycnn.config import load_config, set_string
    from tinycnn.training import checkpoint_config, train

    if args.resume:
        if args.config or args.init_from or args.exclude or args.out:
            raise ConfigError(
                "--resume continues a run with its own config.toml; it takes no "
                "--config, --init-from, --exclude or --out (--data only where its cache "
                "moved, --set only for what a resumed run may change: train.max_minutes, ...)"
            )
        result = train(
            None,
            args.resume,
            resume=True,
            progress=not args.quiet,
            stop_at_iteration=args.stop_at,
            data=args.data,
            changes=args.set,
        )
    else:
        if not args.out:
            raise ConfigError("--out RUN_DIR is required (or --resume RUN_DIR)")
        overrides = list(args.set)
        cli_args.check_no_double(args)
        if args.data:
            overrides.insert(0, set_string("data.cache", args.data))
        if args.exclude:
            overrides.append(set_string("data.exclude", Path(args.exclude).resolve()))
        # --init-from without --config: the checkpoint's settings, with --set changes
        base = checkpoint_config(args.init_from) if args.init_from and not args.config else None
        cfg = load_config(args.config, overrides, base=base)
        try:
            result = train(
                cfg,
                args.out,
                init_from=args.init_from,
                progress=not args.quiet,
                stop_at_iteration=args.stop_at,
            )
        except CropError as exc:
            if base is None:
                raise
            raise _init_from_crop_error(exc, cfg.augment.crop, args) from None
    last = result.metrics[-1] if result.metrics else None
    paused = result.stopped == "interrupted" and result.signal is None and args.stop_at is not None
    if last and distributed.current().main:  # under torchrun: one summary, rank 0's
        stopped = f"paused (--stop-at {args.stop_at})" if paused else result.stopped
        print(
            f"{stopped}: {result.run_dir} after {result.iteration} iterations; val "
            f"top-1 error {last['val_top1_error']:.2%}, top-5 {last['val_top5_error']:.2%}"
        )
    if result.stopped == "interrupted":
        if distributed.current().main:
            print(f"resume with: tinycnn train --resume {result.run_dir}", file=sys.stderr)
        if paused:  # the pause asked for
            return 0
        return 128 + (result.signal or signal.SIGINT)  # 130 for Ctrl-C, 143 for SIGTERM
    return 0


def _init_from_crop_error(exc: CropError, crop: int, args: argparse.Namespace) -> ConfigError:
    """A crop that does not fit, for a run whose base is its --init-from checkpoint's settings:
    there is no config to remove it from, and without a --set of its own it is the checkpoint's."""
    side = exc.image_side
    own = any(o.partition("=")[0].strip() == "augment.crop" for o in args.set)
    whose = "" if own else f" ({args.init_from}'s: without --config its settings are the base)"
    return ConfigError(
        f"augment.crop = {crop}{whose} does not fit this cache's {side}x{side} images: "
        f"{exc.why}; give one that does: --set augment.crop={exc.fitted}"
    )


def _cmd_models(args: argparse.Namespace) -> int:
    from tinycnn.models import format_models, list_models

    print(format_models(list_models()))
    return 0


def _runtime(args: argparse.Namespace):
    """The device and precision of args; under torchrun, the process group joined too."""
    from tinycnn import distributed
    from tinycnn.runtime import agree_precision, make_runtime, resolve_device

    resolve_device(args.device, "--device")  # its errors name the option typed
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


@contextlib.contextmanager
def _cache_warnings_in_one_line() -> Iterator[None]:
    """The probability cache's warnings (e.g. an unwritable cache) printed after the block, one
    line each as errors are, instead of Python's two."""
    import warnings

    from tinycnn.ensembles import ProbabilityCacheWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ProbabilityCacheWarning)
        yield
    for warning in caught:
        print(f"tinycnn: warning: {warning.message}", file=sys.stderr)


def _weights(text: str | None) -> list[float] | None:
    """--weights W1,W2,...: one number a member (None: not given)."""
    if not text:
        return None
    weights = []
    for item in text.split(","):
        try:
            weights.append(float(item))
        except ValueError:
            raise ConfigError(
                f"--weights {text}: {item.strip()!r} is not a number (one number a member, "
                "separated by commas, e.g. 1,1,2)"
            ) from None
    return weights


def _cmd_ensemble(args: argparse.Namespace) -> int:
    from tinycnn.atomic import check_writable
    from tinycnn.ensembles import ensemble, format_result, save_result

    weights = _weights(args.weights)
    if args.select_on and not args.greedy:
        raise ConfigError(
            f"--select-on {args.select_on} chooses members for --greedy; add --greedy"
        )
    if args.out:
        check_writable(args.out, folder=True)  # before the members are scored
    with _cache_warnings_in_one_line():
        result = ensemble(
            args.members,
            args.data,
            split=args.split,
            tta=args.tta,
            weights=weights,
            greedy=args.greedy,
            select_on=args.select_on or "tune",
            runtime=_runtime(args),
            prob_cache=None if args.no_cache else Path(args.prob_cache),
            progress=not (args.json or args.quiet),
        )
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
    if args.data and not args.submission:
        raise ConfigError(f"--data {args.data} is read only for --submission FILE; add one")
    weights = _weights(args.weights)
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
    from tinycnn.export import export_model, find_check_images, format_report

    images, source = find_check_images(args.checkpoint, args.data, args.check_count)
    print(format_report(export_model(args.checkpoint, args.format, args.out, check_images=images)))
    print(f"check images: {source}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from tinycnn.analysis import build_report

    with _cache_warnings_in_one_line():
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
    print(f"report written in {report.seconds:.0f} s: {report.index}")
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from tinycnn import distributed
    from tinycnn.studies import run_experiments
    from tinycnn.study_table import format_table

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
    """The ``tinycnn`` parser, each command bound to its handler above."""
    return cli_args.build_parser(
        {
            "prepare": _cmd_prepare,
            "info": _cmd_info,
            "fetch": _cmd_fetch,
            "train": _cmd_train,
            "evaluate": _cmd_evaluate,
            "ensemble": _cmd_ensemble,
            "predict": _cmd_predict,
            "export": _cmd_export,
            "experiment": _cmd_experiment,
            "models": _cmd_models,
            "demo": _cmd_demo,
            "report": _cmd_report,
        }
    )


def _raise_interrupt(signum: int, _frame) -> None:
    raise Interrupted(signum)


def run() -> NoReturn:
    """The process's entry (the ``tinycnn`` script, ``python -m tinycnn``): main's status as the
    exit status; a process of a torchrun job exits without the interpreter's teardown
    (``distributed.exit_process`` says why)."""
    code = main()
    if "tinycnn.distributed" in sys.modules and sys.modules["tinycnn.distributed"].joined():
        sys.modules["tinycnn.distributed"].exit_process(code)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tinycnn`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so cleanup code (temporary folders, checkpoints) runs.
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        sharded = cli_ranks.sharded(args.command)
        with cli_ranks.rank_scratch(sharded) as scratch:
            return args.func(cli_ranks.rank_args(args, scratch) if sharded else args)
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

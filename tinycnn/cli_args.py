"""The ``tinycnn`` command's arguments: one function per command, the options several commands
share as parent parsers, their choices taken from the library (tinycnn.choices).

Nothing heavy is imported here: ``tinycnn -h`` and ``tinycnn info`` start without torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import NamedTuple

from tinycnn import __version__
from tinycnn.choices import PRECISIONS, TTA_VIEWS
from tinycnn.cli_types import count, iteration_count, md5, seed, sha256, whole
from tinycnn.data.fetch import OFFICIAL_URL
from tinycnn.errors import ConfigError
from tinycnn.paths import PROB_CACHE

MEMBERS = "CHECKPOINT|RUN_DIR[@SELECTION]"


def _quiet(help: str = "no progress bars") -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-q", "--quiet", action="store_true", help=help)
    return parent


def _tta(help: str | None = None) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--tta", default="center", choices=tuple(TTA_VIEWS), help=help)
    return parent


class _Shared(NamedTuple):
    """Parent parsers (argparse ``parents=``) of the options several commands take."""

    quiet: argparse.ArgumentParser  # -q: no progress bars
    runtime: argparse.ArgumentParser  # --device, --precision
    json: argparse.ArgumentParser  # --json: one JSON object on stdout
    inference: list[argparse.ArgumentParser]  # evaluate's and ensemble's common options

    @classmethod
    def make(cls) -> _Shared:
        runtime = argparse.ArgumentParser(add_help=False)
        runtime.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
        runtime.add_argument(
            "--precision",
            default="auto",
            choices=PRECISIONS,
            help="auto (default): bf16 where this machine is faster in it, but fp32 for a "
            "model trained in fp32; fp32 or bf16: every model in that one",
        )
        json = argparse.ArgumentParser(add_help=False)
        json.add_argument("--json", action="store_true", help="print one JSON object")
        data = argparse.ArgumentParser(add_help=False)
        data.add_argument("--data", required=True, help="prepared cache folder")
        data.add_argument("--split", default="val", help="val (default), train or tune")
        views = "test-time views: centre crop, + its mirror, or Caffe's 10 crops"
        quiet = _quiet()
        return cls(quiet, runtime, json, [data, _tta(views), runtime, json, quiet])


def _add_prob_cache(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--prob-cache", default=str(PROB_CACHE), help=help)
    p.add_argument("--no-cache", action="store_true", help="do not cache member probabilities")


def _add_prepare(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prepare",
        parents=[_quiet("no progress bar or summary")],
        help="decode a dataset once into a memory-mapped cache",
    )
    p.add_argument(
        "src",
        help="Tiny ImageNet folder, .zip or .tar.gz, or your own train/CLASS/*.jpg + "
        "val/CLASS/*.jpg folder or archive",
    )
    p.add_argument("--out", required=True, help="cache folder to create or refresh")
    p.add_argument("--workers", type=count, default=None, help="decode processes (default: cores)")
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
    return p


def _add_info(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser("info", help="summarise a prepared cache")
    p.add_argument("cache", help="cache folder")
    p.add_argument("--json", action="store_true", help="print the raw manifest")
    p.add_argument(
        "--verify",
        action="store_true",
        help="check every file's sha256 against the manifest (reads the whole cache)",
    )
    return p


def _add_fetch(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "fetch",
        parents=[shared.quiet],
        help="download the official zip (resumable, verified), prepare it",
    )
    p.add_argument("--url", default=OFFICIAL_URL, help=f"archive URL (default {OFFICIAL_URL})")
    p.add_argument("--out", required=True, help="cache folder to create")
    p.add_argument("--archive", help="where to keep the download (default: beside --out)")
    p.add_argument("--sha256", type=sha256, help="expected sha256 of the archive")
    p.add_argument(
        "--md5", type=md5, help="expected md5 (the official zip's is checked by default)"
    )
    p.add_argument("--size", type=count, help="expected size in bytes")
    p.add_argument("--workers", type=count, default=None, help="decode processes (default: cores)")
    return p


def _add_train(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", parents=[shared.quiet], help="train a model (config TOML + --set overrides)"
    )
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
        type=iteration_count,
        metavar="ITERATIONS",
        help="pause once the run has done this many iterations in all (at the next progress "
        "update): a checkpoint as after Ctrl-C, exit status 0; --resume continues it",
    )
    p.add_argument(
        "--init-from",
        metavar="CHECKPOINT",
        help="start from a checkpoint's weights with new hyperparameters",
    )
    return p


def _add_evaluate(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "evaluate", parents=shared.inference, help="error rates, per-class accuracy, confusion"
    )
    p.add_argument("checkpoints", nargs="+", metavar=MEMBERS)
    p.add_argument("--batch-size", type=count, default=500)
    return p


def _add_ensemble(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "ensemble",
        parents=shared.inference,
        help="average the probabilities of models and snapshots",
    )
    p.add_argument(
        "members", nargs="+", metavar=MEMBERS, help="e.g. run1@last:3 run2@every:10000 model.pt"
    )
    p.add_argument("--weights", help="comma-separated member weights (default: equal)")
    p.add_argument(
        "--greedy",
        action="store_true",
        help="choose members greedily (with replacement) on --select-on",
    )
    p.add_argument("--select-on", help="split for --greedy (default: tune)")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="save probabilities.npy and ensemble.json in DIR (default: nothing is written)",
    )
    _add_prob_cache(
        p,
        "where member probabilities are cached (by checkpoint sha256 and data content; "
        "TINYCNN_CACHE moves the default; if unwritable: a warning, no caching)",
    )
    return p


def _add_predict(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "predict",
        parents=[_tta(), shared.runtime, shared.json, _quiet("no progress bar")],
        help="a test-split submission, or top-5 for image files",
    )
    p.add_argument(
        "members",
        nargs="+",
        metavar=MEMBERS,
        help="one model, or several (their probabilities are averaged)",
    )
    p.add_argument("--images", nargs="+", metavar="PATH", help="image files or folders")
    p.add_argument("--submission", metavar="FILE", help="write test_K.JPEG<TAB>wnid lines")
    p.add_argument("--data", help="prepared cache whose test split --submission predicts")
    p.add_argument("--weights", help="comma-separated member weights (default: equal)")
    p.add_argument("--top", type=count, default=5, help="classes to show per image (default 5)")
    p.add_argument(
        "--max-pixels",
        type=whole,
        default=50_000_000,
        help="refuse larger images before decoding them, reported as not predicted (default "
        "50000000: 50 megapixels, a few hundred MB to decode; 0: no limit but Pillow's)",
    )
    return p


def _add_export(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="ONNX or TorchScript with the preprocessing built in")
    p.add_argument("checkpoint", help="checkpoint file, or a run folder (its best.pt), RUN@last")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument(
        "--data",
        help="cache whose val images check the export (default: the checkpoint's training cache)",
    )
    p.add_argument("--check-count", type=int, default=100, help="images to check (default 100)")
    return p


def _add_experiment(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "experiment",
        parents=[shared.quiet],
        help="train several presets (resumable), tabulate them",
    )
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
    return p


def _add_models(sub, shared: _Shared) -> argparse.ArgumentParser:
    return sub.add_parser("models", help="list the registered models")


def _add_demo(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser("demo", parents=[shared.quiet], help="the whole job on generated demo data")
    p.add_argument("--out", default="tinycnn-demo", help="output folder (default ./tinycnn-demo)")
    p.add_argument("--seed", type=seed, default=0, help="seed of the generated data")
    return p


def _add_report(sub, shared: _Shared) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "report",
        parents=[shared.runtime, shared.quiet],
        help="the paper's figures and tables as one HTML page",
    )
    p.add_argument(
        "members",
        nargs="+",
        metavar=MEMBERS,
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
    p.add_argument("--seed", type=seed, default=0, help="seed of the t-SNE and example choices")
    _add_prob_cache(p, "where member probabilities are cached (as for ensemble)")
    return p


# In the order ``tinycnn -h`` lists them.
COMMANDS = {
    "prepare": _add_prepare,
    "info": _add_info,
    "fetch": _add_fetch,
    "train": _add_train,
    "evaluate": _add_evaluate,
    "ensemble": _add_ensemble,
    "predict": _add_predict,
    "export": _add_export,
    "experiment": _add_experiment,
    "models": _add_models,
    "demo": _add_demo,
    "report": _add_report,
}


def build_parser(
    handlers: Mapping[str, Callable[[argparse.Namespace], int]],
) -> argparse.ArgumentParser:
    """The ``tinycnn`` parser; handlers: command name -> the function it runs (``args.func``)."""
    parser = argparse.ArgumentParser(
        prog="tinycnn",
        description="Train, ensemble and analyse CNN classifiers on Tiny ImageNet.",
    )
    parser.add_argument("--version", action="version", version=f"tinycnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    shared = _Shared.make()
    for name, add in COMMANDS.items():
        add(sub, shared).set_defaults(func=handlers[name])
    return parser


def check_no_double(args: argparse.Namespace) -> None:
    """ConfigError where an option and a --set name one setting (one had silently won)."""
    keys = {item.partition("=")[0].strip() for item in args.set}
    for option, key in (("data", "data.cache"), ("exclude", "data.exclude")):
        if getattr(args, option) and key in keys:
            raise ConfigError(f"--{option} and --set {key} both set {key}; give one of them")
    if args.init_from and "train.init_from" in keys:
        raise ConfigError("--init-from and --set train.init_from both set it; give one of them")

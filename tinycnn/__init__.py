"""tinycnn: train, ensemble and analyse CNN classifiers on Tiny ImageNet.

The public API is listed in ``__all__``. Heavy modules (torch) are imported lazily, so that
``import tinycnn`` and the data tools stay fast.

Layers, lowest first; a module imports only from its own layer or those below it, never from
above, not even inside a function, and within a layer ``a -> b`` means b may import a, never the
reverse. A folder (``data/``) is one unit: its modules import each other freely. This file (the
version and the error names; the public functions are looked up by name, not imported) counts
as layer 1. This is the one list of the layers (README.md and CONTRIBUTING.md point here): a new
module goes into it; tests/test_layers.py checks every import against it.

1. errors, atomic, paths, choices,       one error family; atomic writes; where caches live;
   faults, cores, toml_text              the names a user picks from (TTA views, precisions);
                                         the kill tests' pause points; the CPU cores this process
                                         may use; TOML strings and values written exactly
2. data/                                 files -> cache: sources (tar_stream reads .tar.gz),
                                         layouts, decode (the workers)
                                         and decode_pool (their pool), prepare, cache (its
                                         files' checksums: checksums), splits,
                                         synthetic data (synthetic_images draws it), fetch;
                                         batched augmentation (its settings: augment_config)
                                         and normalisation
3. config, models/, distributed,         typed configs; the model registry (and Conv3x3's kernels,
   runtime, compute, crops, ema          timed per machine: models/kernel_choice); torchrun's
                                         process group, shares and gathers; device and precision;
                                         training FLOPs; the training crop fitted to data and model;
                                         the weights' moving average
4. checkpoint, run_folder, resume        self-describing checkpoints; a run folder's lock and logs;
                                         a resumed run's folder brought back to its resume point
5. inference, metrics, advice            a loaded model, batched logits and TTA views, Predictor;
                                         error rates, per-class accuracy; the not-learning warning
6. optim, schedule, run_plan,            optimisers; iteration -> lr, input side, FLOPs; the checked
   compile_choice -> step_model ->       plan of a run; where train.compile = "auto" compiles;
   session -> steps, epochs, timing,     what a step calls (DDP, compiled); a run's state; one
   run_start -> training                 step, an epoch's end, the wall clock; a run's start (its
                                         folder, or its resume's plan); train(): the loop
7. members, prob_cache ->                member specs, the probability cache; evaluate();
   evaluation -> ensembles               ensemble()
8. prediction, export, analysis/,        submissions and image files; ONNX/TorchScript; the report;
   study_table -> studies                a study's table (runs, the paper's ensembles); tinycnn
                                         experiment: presets trained and tabulated
9. demo, cli_types -> cli_args,         the demo; the command line, a thin layer over the above:
   cli_ranks -> cli -> __main__          its argument types and arguments, a sharded command's
                                         ranks under torchrun, then parse and call;
                                         python -m tinycnn
"""

from __future__ import annotations

from importlib import import_module

from tinycnn.errors import CacheError, ConfigError, DataError, DownloadError, TinycnnError

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it from here

# Public name -> the module that defines it (imported on first use).
_LAZY = {
    "prepare": "tinycnn.data.prepare",
    "load_cache": "tinycnn.data.cache",
    "make_synthetic": "tinycnn.data.synthetic",
    "download": "tinycnn.data.fetch",
    "load_config": "tinycnn.config",
    "RunConfig": "tinycnn.config",
    "train": "tinycnn.training",
    "RunResult": "tinycnn.training",
    "create_model": "tinycnn.models",
    "list_models": "tinycnn.models",
    "load_model": "tinycnn.inference",
    "evaluate": "tinycnn.evaluation",
    "ensemble": "tinycnn.ensembles",
    "export_model": "tinycnn.export",
    "write_submission": "tinycnn.prediction",
    "predict_files": "tinycnn.prediction",
    "build_report": "tinycnn.analysis",
    "run_experiments": "tinycnn.studies",
}

__all__ = [
    "CacheError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "TinycnnError",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tinycnn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

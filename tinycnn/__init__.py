"""tinycnn: train, ensemble and analyse CNN classifiers on Tiny ImageNet.

The public API is listed in ``__all__``. Heavy modules (torch) are imported lazily, so that
``import tinycnn`` and the data tools stay fast.
"""

from __future__ import annotations

from importlib import import_module

from tinycnn.errors import CacheError, ConfigError, DataError, DownloadError, TinycnnError

__version__ = "0.1.0"

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
    "ensemble": "tinycnn.ensemble",
    "export_model": "tinycnn.export",
    "write_submission": "tinycnn.prediction",
    "predict_files": "tinycnn.prediction",
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

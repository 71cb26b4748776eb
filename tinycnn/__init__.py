"""tinycnn: train, ensemble and analyse CNN classifiers on Tiny ImageNet.

The public API is listed in ``__all__``. Heavy modules (torch) are imported lazily, so that
``import tinycnn`` and the data tools stay fast.
"""

from __future__ import annotations

from tinycnn.errors import CacheError, ConfigError, DataError, DownloadError, TinycnnError

__version__ = "0.1.0"

__all__ = [
    "CacheError",
    "ConfigError",
    "DataError",
    "DownloadError",
    "TinycnnError",
    "__version__",
    "download",
    "load_cache",
    "make_synthetic",
    "prepare",
]


def __getattr__(name: str):
    # Lazy re-exports: keep `import tinycnn` cheap (worker processes import it too).
    if name == "prepare":
        from tinycnn.data.prepare import prepare

        return prepare
    if name == "load_cache":
        from tinycnn.data.cache import load_cache

        return load_cache
    if name == "make_synthetic":
        from tinycnn.data.synthetic import make_synthetic

        return make_synthetic
    if name == "download":
        from tinycnn.data.fetch import download

        return download
    raise AttributeError(f"module 'tinycnn' has no attribute {name!r}")

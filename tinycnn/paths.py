"""Where tinycnn keeps its own files (without importing anything heavy)."""

from __future__ import annotations

import os
from pathlib import Path

# tinycnn's own caches; TINYCNN_CACHE moves them. Optional: unwritable means uncached.
CACHE_ROOT = Path(os.environ.get("TINYCNN_CACHE", Path.home() / ".cache" / "tinycnn"))
# Member probabilities of ensembles, keyed by checkpoint sha256 and the data's content (see
# ensemble.ProbabilityCache).
PROB_CACHE = CACHE_ROOT / "probs"
# The conv kernels timed fastest per layer shape on this machine (models/kernel_choice.py).
KERNEL_CACHE = CACHE_ROOT / "kernels"
# Where train.compile = "auto" measured compiled training steps faster (compile_choice.py).
COMPILE_CACHE = CACHE_ROOT / "compile"

"""Where tinycnn keeps its own files (without importing anything heavy)."""

from __future__ import annotations

import os
from pathlib import Path

# Member probabilities of ensembles, keyed by checkpoint sha256 and the data's content (see
# ensemble.ProbabilityCache); TINYCNN_CACHE moves it. Optional: unwritable means uncached.
PROB_CACHE = Path(os.environ.get("TINYCNN_CACHE", Path.home() / ".cache" / "tinycnn")) / "probs"

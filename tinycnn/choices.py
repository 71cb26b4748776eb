"""Names a user picks from, kept free of heavy imports: the command line offers them as argparse
choices without loading torch, and the library checks its arguments against the same tuples."""

from __future__ import annotations

# Test-time views -> crops per image: the centre crop, + its mirror, or Caffe's 10 crops.
TTA_VIEWS = {"center": 1, "flip": 2, "10crop": 10}
PRECISIONS = ("auto", "bf16", "fp32")  # auto: bf16 autocast where measured faster (runtime.py)

"""The public Python API: every name in tinycnn.__all__ resolves, and importing stays light."""

from __future__ import annotations

import subprocess
import sys

import tinycnn


def test_every_public_name_resolves() -> None:
    for name in tinycnn.__all__:
        assert getattr(tinycnn, name) is not None, name


def test_import_does_not_load_torch() -> None:
    code = "import sys, tinycnn; tinycnn.prepare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

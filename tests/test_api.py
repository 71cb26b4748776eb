"""The public Python API: every name in tinycnn.__all__ resolves, and importing stays light."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types

import pytest

import tinycnn


@pytest.mark.parametrize("name", tinycnn.__all__)
def test_every_public_name_is_what_it_says_after_importing_every_module(name: str) -> None:
    # Importing a submodule binds it on the package: a module named like a public function
    # (tinycnn/train.py once) replaces the function. Import them all first, then look.
    for module in sorted(set(tinycnn._LAZY.values())):
        importlib.import_module(module)
    value = getattr(tinycnn, name)  # AttributeError if the name does not resolve
    if name == "__version__":
        assert re.fullmatch(r"\d+\.\d+\.\d+", value), value
    elif name in tinycnn._LAZY:
        assert not isinstance(value, types.ModuleType), f"tinycnn.{name} is a module"
        assert callable(value) and value.__name__ == name
        assert value.__module__.startswith(tinycnn._LAZY[name])  # or a submodule of it
    else:
        assert issubclass(value, tinycnn.TinycnnError)
    assert name in dir(tinycnn)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        tinycnn.trian  # noqa: B018


def test_import_does_not_load_torch() -> None:
    code = "import sys, tinycnn; tinycnn.prepare; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

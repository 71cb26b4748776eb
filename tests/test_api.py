"""The public Python API: every name in tinycnn.__all__ resolves, and importing stays light."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import types
from pathlib import Path

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


def _subclasses(cls: type) -> set[type]:
    return {cls, *(sub for direct in cls.__subclasses__() for sub in _subclasses(direct))}


def test_every_error_class_is_defined_in_errors_py() -> None:
    root = Path(tinycnn.__file__).parent
    for path in sorted(root.rglob("*.py")):
        if path.name == "__main__.py":  # runs the command line
            continue
        module = ".".join(path.relative_to(root.parent).with_suffix("").parts)
        importlib.import_module(module.removesuffix(".__init__"))
    homes = {cls.__name__: cls.__module__ for cls in _subclasses(tinycnn.TinycnnError)}
    assert {name: home for name, home in homes.items() if home != "tinycnn.errors"} == {}
    # Documented where it is raised: training's __all__ names it.
    assert importlib.import_module("tinycnn.training").TrainingDivergedError.__module__ == (
        "tinycnn.errors"
    )

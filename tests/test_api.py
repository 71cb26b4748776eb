"""The public Python API (tinycnn/__init__.py): every name in __all__ resolves and is callable after
the others ran, no module is named like a public function, and importing stays light."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import tinycnn
from tests.helpers import QUICK

ROOT = Path(__file__).resolve().parents[1]


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


def test_every_public_function_is_callable_after_the_others_ran(
    cache: Path, tmp_path: Path, synth_sources: dict[str, Path]
) -> None:
    # train first: it imports the modules behind evaluate, ensemble and the rest, which must
    # not replace the package's functions of the same names.
    cfg = tinycnn.load_config(None, [f"data.cache={json.dumps(str(cache))}", *QUICK])
    result = tinycnn.train(cfg, tmp_path / "a", progress=False)
    assert isinstance(result, tinycnn.RunResult) and result.metrics[-1]["iteration"] == 6
    cfg.train.seed = 1
    other = tinycnn.train(cfg, tmp_path / "b", progress=False)
    [evaluation] = tinycnn.evaluate(result.run_dir, cache)  # a single path is accepted
    assert evaluation.top1_error == result.metrics[-1]["val_top1_error"]
    both = tinycnn.ensemble([result.run_dir, other.run_dir], cache, prob_cache=None)
    assert len(both.members) == 2
    assert tinycnn.ensemble(result.run_dir, cache, prob_cache=None).ensemble["top1_error"] == (
        evaluation.top1_error
    )
    loaded = tinycnn.load_model(result.run_dir / "checkpoints" / "best.pt")
    assert loaded.classes == tinycnn.load_cache(cache).classes
    submission = tmp_path / "submission.tsv"
    assert tinycnn.write_submission(loaded, cache, submission) == 8
    images = sorted((synth_sources["folder"] / "test" / "images").iterdir())[:2]
    report = tinycnn.predict_files(loaded, images)
    assert len(report.rows) == 2
    exported = tinycnn.export_model(
        result.run_dir / "checkpoints" / "best.pt", "onnx", tmp_path / "a.onnx", check_images=None
    )
    assert Path(exported.path).is_file()
    assert [m.name for m in tinycnn.list_models()][:1] and tinycnn.create_model("cnn5")
    for name in ("train", "evaluate", "ensemble", "prepare", "predict_files", "export_model"):
        assert callable(getattr(tinycnn, name)), name


def test_dir_lists_the_public_api_and_each_function_says_what_it_returns() -> None:
    assert set(tinycnn.__all__) <= set(dir(tinycnn))
    for name in tinycnn.__all__:
        obj = getattr(tinycnn, name)
        if callable(obj) and not isinstance(obj, type):
            doc = obj.__doc__ or ""
            assert re.search(r"return|yield", doc, re.IGNORECASE), f"{name}: {doc[:60]!r}"


def test_no_module_shares_a_name_with_a_public_function() -> None:
    modules = {p.stem for p in (ROOT / "tinycnn").glob("*.py")}
    modules |= {p.name for p in (ROOT / "tinycnn").iterdir() if p.is_dir()}
    assert not modules & set(tinycnn.__all__)

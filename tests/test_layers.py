"""The layers: every import of the package against the table in tinycnn/__init__.py, and no cycle.

The table is read from that docstring: numbered layers, lowest first; ``a -> b`` within a layer
means b may import a, never the reverse; ``data/`` names a folder, whose modules are one unit.
Every import counts: at module level, inside a function, under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import tinycnn

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinycnn"


def _package_files() -> dict[str, Path]:
    """Module name ("tinycnn.data.cache", "tinycnn.data" for its __init__) -> file."""
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _module_name(path: Path, root: Path = ROOT) -> str:
    """tinycnn/data/cache.py -> "tinycnn.data.cache"; tinycnn/data/__init__.py -> "tinycnn.data"."""
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def _unit(module: str) -> str:
    """The table's name for a module: "config", "data/" for tinycnn.data.cache, "" for tinycnn."""
    parts = module.split(".")[1:]
    if not parts:
        return ""
    if len(parts) > 1 or (PACKAGE / parts[0]).is_dir():
        return parts[0] + "/"
    return parts[0]


def layer_table(docstring: str) -> dict[str, tuple[int, int]]:
    """Table name -> (layer, position left to right between its layer's "->"), from the
    numbered lines of the docstring; the module column ends at the first run of two spaces."""
    layers: list[str] = []
    for line in docstring.splitlines():
        start = re.match(r"(\d+)\. ", line)
        if start:
            assert int(start[1]) == len(layers) + 1, f"layer {start[1]} after {len(layers)}"
            layers.append("")
        elif not (layers and re.match(r" {3}\S", line)):
            continue  # prose, or the description column alone
        layers[-1] += " " + re.split(r"\s{2,}", line[len("1. ") :].strip())[0]
    assert layers, "no numbered layers in tinycnn/__init__.py's docstring"
    table = {}
    for number, text in enumerate(layers, 1):
        for position, group in enumerate(text.split("->")):
            for name in group.split(","):
                name = name.strip()
                assert re.fullmatch(r"\w+/?", name), f"layer {number}: cannot read {name!r}"
                assert name not in table, f"{name} is in layers {table[name][0]} and {number}"
                table[name] = (number, position)
    return table


def _table() -> dict[str, tuple[int, int]]:
    table = layer_table(tinycnn.__doc__ or "")
    table[""] = (1, 0)  # tinycnn/__init__.py itself: the version and the error names
    return table


def imports_with_lines(path: Path, modules: set[str], root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every tinycnn module a file imports, at module level or inside
    functions; relative imports resolved. ``from a import b`` counts a and, if a module, a.b."""
    package = _module_name(path, root)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *filter(None, [base])])
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.append((node.lineno, name))
    return found


def layer_violations(
    path: Path, modules: set[str], table: dict[str, tuple[int, int]], root: Path = ROOT
) -> list[str]:
    """One line per import of ``path`` that goes up the table: file, line and both layers."""
    importer = _module_name(path, root)
    here = _unit(importer)
    if here not in table:
        return []  # test_the_layer_table_names_every_module_and_nothing_else names it
    layer, position = table[here]
    targets: dict[tuple[int, str], str] = {}  # (line, unit) -> the line's most precise module
    for line, target in imports_with_lines(path, modules, root):
        there = _unit(target)
        if there != here and there in table and len(target) > len(targets.get((line, there), "")):
            targets[(line, there)] = target
    found = []
    for (line, there), target in targets.items():
        their_layer, their_position = table[there]
        if their_layer > layer:
            why = ""
        elif their_layer == layer and their_position > position:
            why = f", right of {here or 'tinycnn'}'s '->'"
        else:
            continue
        found.append(
            f"{path.relative_to(root)}:{line} imports {target} (layer {their_layer}{why}) "
            f"into {importer} (layer {layer})"
        )
    return found


def unlisted(modules: set[str], table: dict[str, tuple[int, int]]) -> list[str]:
    """The modules and folders of the package the table does not name."""
    return sorted({_unit(m) for m in modules} - set(table))


def test_the_layer_table_names_every_module_and_nothing_else() -> None:
    modules, table = set(_package_files()), _table()
    missing = unlisted(modules, table)
    assert not missing, f"modules in no layer of tinycnn/__init__.py's docstring: {missing}"
    stale = sorted(set(table) - {_unit(m) for m in modules})
    assert not stale, f"tinycnn/__init__.py's layer table names no such module: {stale}"


def test_every_import_goes_down_the_layer_table() -> None:
    files, table = _package_files(), _table()
    violations = [v for p in files.values() for v in layer_violations(p, set(files), table)]
    assert not violations, "imports up the layers of tinycnn/__init__.py:\n" + "\n".join(violations)


@pytest.mark.parametrize(
    ("where", "source", "message"),
    [
        (
            "data/cache.py",
            "from tinycnn.training import train",
            "tinycnn/data/cache.py:1 imports tinycnn.training (layer 6) "
            "into tinycnn.data.cache (layer 2)",
        ),
        (
            "data/cache.py",
            "def load():\n    from tinycnn.models import create_model",
            "tinycnn/data/cache.py:2 imports tinycnn.models (layer 3) "
            "into tinycnn.data.cache (layer 2)",
        ),
        (
            "data/augment.py",
            "from ..models import conv",
            "tinycnn/data/augment.py:1 imports tinycnn.models.conv (layer 3) "
            "into tinycnn.data.augment (layer 2)",
        ),
        (
            "session.py",
            "if TYPE_CHECKING:\n    import tinycnn.steps",
            "tinycnn/session.py:2 imports tinycnn.steps (layer 6, right of session's '->') "
            "into tinycnn.session (layer 6)",
        ),
        (
            "models/conv.py",
            "from tinycnn import checkpoint",
            "tinycnn/models/conv.py:1 imports tinycnn.checkpoint (layer 4) "
            "into tinycnn.models.conv (layer 3)",
        ),
        ("training.py", "from tinycnn.steps import train_step", None),
        ("data/cache.py", "from tinycnn import __version__", None),
        ("data/prepare.py", "from tinycnn.data.cache import load_cache", None),
        ("crops.py", "from tinycnn.models import create_model", None),  # same layer, no arrow
        ("ensembles.py", "from tinycnn.evaluation import evaluate", None),
        ("cli.py", "import numpy\nfrom tinycnn import analysis", None),
    ],
)
def test_the_layer_check_names_file_line_and_both_layers(
    tmp_path: Path, where: str, source: str, message: str | None
) -> None:
    # An import planted in a module of a scratch package: the check must see it where it hides.
    path = tmp_path / "tinycnn" / where
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    found = layer_violations(path, set(_package_files()), _table(), root=tmp_path)
    assert found == ([message] if message else [])


def test_a_module_missing_from_the_table_is_named() -> None:
    modules = set(_package_files()) | {"tinycnn.scratch", "tinycnn.plots.figures"}
    assert unlisted(modules, _table()) == ["plots/", "scratch"]


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (
            "1. errors, atomic  the error family\n2. data/ models/  two",
            "cannot read 'data/ models/'",
        ),
        ("1. errors  one\n3. data/  three", "layer 3 after 1"),
        ("1. errors  one\n2. errors  again", "errors is in layers 1 and 2"),
    ],
)
def test_an_unreadable_table_is_an_error_that_quotes_it(line: str, complaint: str) -> None:
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        layer_table(line)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The tinycnn modules a file imports, at module level or inside functions."""
    return {name for _, name in imports_with_lines(path, modules) if name != "tinycnn"}


def test_the_package_has_no_import_cycle() -> None:
    files = {}
    for path in (ROOT / "tinycnn").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        files[name.removesuffix(".__init__")] = path
    graph = {m: _imports(p, set(files)) - {m} for m, p in files.items()}
    graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in graph.items()}
    cycles = []

    def visit(module: str, stack: list[str], state: dict[str, int]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*stack[stack.index(target) :], target]))
            elif target not in state:
                visit(target, stack, state)
        stack.pop()
        state[module] = 2

    state: dict[str, int] = {}
    for module in sorted(graph):
        if module not in state:
            visit(module, [], state)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports, cycles: {cycles}")
    assert not cycles


# The modules tested through the module that uses them, and the file their tests are in; every
# other module M has its own tests/test_M.py (CONTRIBUTING.md): a new module gets one, or a line
# here.
TESTED_IN = {
    "analysis/classes.py": "test_report.py",
    "analysis/experiments.py": "test_report.py",
    "analysis/figures.py": "test_report.py",
    "analysis/html.py": "test_report.py",
    "analysis/html_sections.py": "test_report.py",
    "analysis/scores.py": "test_report.py",
    "analysis/tsne.py": "test_report.py",
    "choices.py": "test_inference.py",  # the TTA views and precisions
    "cli_args.py": "test_cli.py",
    "cli_ranks.py": "test_distributed.py",  # the commands sharded under torchrun
    "cli_types.py": "test_cli.py",
    "cores.py": "test_runtime.py",
    "data/augment_config.py": "test_augment.py",
    "data/normalization.py": "test_augment.py",
    "data/sources.py": "test_layout.py",
    "data/synthetic_images.py": "test_synthetic.py",
    "data/tar_stream.py": "test_layout.py",
    "data/tiny_imagenet.py": "test_layout.py",
    "errors.py": "test_cli.py",  # one line and a non-zero exit for each kind of error
    "faults.py": "test_resume.py",
    "models/fast.py": "test_models.py",
    "models/init.py": "test_models.py",
    "models/paper.py": "test_models.py",
    "models/registry.py": "test_models.py",
    "models/resnet.py": "test_models.py",
    "paths.py": "test_kernel_choice.py",  # TINYCNN_CACHE moving the caches
    "prob_cache.py": "test_ensembles.py",
    "run_start.py": "test_resume.py",
}


def test_every_module_s_tests_are_where_contributing_says() -> None:
    tests = ROOT / "tests"
    modules = {
        str(path.relative_to(PACKAGE)): path
        for path in _package_files().values()
        if not path.name.startswith("__")
    }
    for module, file in TESTED_IN.items():
        assert module in modules, f"TESTED_IN names no such module: tinycnn/{module}"
        assert (tests / file).is_file(), f"TESTED_IN: tinycnn/{module}'s tests/{file} is missing"
        own = tests / f"test_{Path(module).stem}.py"
        assert not own.exists(), f"tinycnn/{module} has {own.name}: drop it from TESTED_IN"
    untested = [
        m for m in sorted(modules)
        if m not in TESTED_IN and not (tests / f"test_{Path(m).stem}.py").is_file()
    ]  # fmt: skip
    assert not untested, f"modules without tests/test_M.py or a TESTED_IN line: {untested}"

"""The README and CONTRIBUTING.md against what they describe: CI's command, the CLI, the files, the
measured figures, and the README's Python code run as written (the one test here that trains)."""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "CONTRIBUTING.md")


def _text(name: str) -> str:
    return (ROOT / name).read_text(encoding="utf-8")


def _section(markdown: str, heading: str) -> str:
    return markdown.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _bash_lines(markdown: str) -> list[str]:
    """The command lines of the bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            if line:
                lines.append(line)
    return lines


def _inline_code(markdown: str) -> list[str]:
    prose = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)
    return [" ".join(span.split()) for span in re.findall(r"`([^`]+)`", prose)]


@cache
def _help(command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "tinycnn", command, "-h"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"tinycnn {command} -h: {done.stderr}"
    return done.stdout


def test_the_set_up_is_two_commands_and_the_second_is_what_ci_runs() -> None:
    [block] = re.findall(r"```bash\n(.*?)```", _section(_text("README.md"), "Set-up"), re.DOTALL)
    demo, tests = block.strip().splitlines()
    assert demo.startswith("pip install ") and demo.endswith("&& tinycnn demo"), demo
    assert "python -m pytest" in tests, tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, f"README's test command is not a line of .ci/run: {tests}"
    # near the top: the set-up is the first section
    assert _text("README.md").split("\n## ", 2)[1].startswith("Set-up")


@pytest.mark.parametrize("name", DOCS)
def test_every_tinycnn_command_shown_exists_with_its_flags(name: str) -> None:
    markdown = _text(name)
    commands = [*_bash_lines(markdown), *_inline_code(markdown)]
    checked = 0
    for line in commands:
        for part in re.split(r"&&|\|\||[|;]", line):
            found = re.search(r"(?:^|\s)tinycnn\s+([a-z]+)\b(.*)", part)
            if not found:
                continue
            command, rest = found.groups()
            text = _help(command)  # fails when the command does not exist
            for flag in re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", rest):
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), (
                    f"{name}: `tinycnn {command} {flag}` is not in `tinycnn {command} -h`"
                )
            checked += 1
    assert checked >= (10 if name == "README.md" else 0)


@pytest.mark.parametrize("name", DOCS)
def test_every_file_named_exists(name: str) -> None:
    pattern = r"(?<![\w/.~-])((?:configs|results|bench|tinycnn|tests|\.ci)/[\w./-]*\w)"
    named = set(re.findall(pattern, _text(name)))
    assert named
    missing = sorted(p for p in named if "*" not in p and not (ROOT / p).exists())
    assert not missing, f"{name} names files that do not exist: {missing}"


def test_the_results_figures_come_from_the_results_files() -> None:
    results = _section(_text("README.md"), "Results")
    sources = [ROOT / "results" / "results.csv", *(ROOT / "results").glob("*.md")]
    sources += (ROOT / "configs").rglob("*.toml")
    corpus = "\n".join(p.read_text(encoding="utf-8") for p in sources)
    prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", results, flags=re.DOTALL))
    figures = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", prose))
    assert len(figures) > 20, figures
    invented = sorted(
        f for f in figures if not re.search(rf"(?<![\d.]){re.escape(f)}(?!\d)", corpus)
    )
    assert not invented, f"README Results: figures in no results/ or configs/ file: {invented}"


def test_the_readme_names_the_paper_and_points_to_the_one_layer_list() -> None:
    readme = _text("README.md")
    assert 'Yao and Miller, "Tiny ImageNet Classification with Convolutional' in readme
    assert "published study" not in readme
    assert "tinycnn/__init__.py" in _section(readme, "Contributing")
    docstring = (ROOT / "tinycnn" / "__init__.py").read_text(encoding="utf-8").split('"""')[1]
    assert "one list of the layers" in docstring
    for name in DOCS:  # the layers are listed there alone
        assert "errors, atomic" not in _text(name) and "errors and atomic writes" not in _text(name)


def _python_blocks(markdown: str, heading: str) -> list[str]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_readme_from_python_section_runs(tmp_path: Path, monkeypatch) -> None:
    blocks = _python_blocks((ROOT / "README.md").read_text(encoding="utf-8"), "From Python")
    assert blocks, "README.md has a '## From Python' section with a python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("\n".join(blocks), "README.md", "exec"), namespace)
    assert 0 <= namespace["result"].top1_error <= 1

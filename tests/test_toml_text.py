"""toml_text.py: every value a run's config.toml holds is written so that tomllib (the
reference reader) reads back exactly that value."""

from __future__ import annotations

import sys

import pytest

from tinycnn.errors import ConfigError
from tinycnn.toml_text import toml_string, toml_value

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        0,
        -3,
        2**63 - 1,
        1.5,
        1e-08,
        -0.25,
        1 / 3,  # all 17 digits: a resumed run compares its settings exactly
        0.1 + 0.2,
        "",
        "plain",
        'quote " and backslash \\ and \\u',
        "newline\nand tab\tand delete\x7f and escape\x1b",
        "é, 🙂 (outside the BMP)",
        [1, 2.5, "x"],
        [],
        {"dropout": 0.5, "widths": [8, 16], "name": "cnn5"},
    ],
)
def test_a_written_value_reads_back_as_itself(value) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_strings_are_basic_strings_with_nothing_raw_that_toml_refuses() -> None:
    text = toml_string("a\nb")
    assert text == '"a\\u000ab"' and "\n" not in text


def test_a_value_toml_cannot_hold_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="cannot write None"):
        toml_value(None)

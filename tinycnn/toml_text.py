"""TOML text written exactly: the strings and values of a run's resolved config.toml (tomllib
reads TOML; nothing in the standard library writes it)."""

from __future__ import annotations

from typing import Any

from tinycnn.errors import ConfigError


def toml_string(text: str) -> str:
    """A TOML basic string holding ``text`` exactly: backslashes, quotes and control characters
    (which TOML refuses raw: a newline in a path had made a run folder that could not resume)
    escaped; everything else as it is."""
    escaped = (
        "\\" + c if c in '\\"' else f"\\u{ord(c):04x}" if ord(c) < 0x20 or ord(c) == 0x7F else c
        for c in text
    )
    return '"' + "".join(escaped) + '"'


def toml_value(value: Any) -> str:
    """A TOML value: booleans, numbers, strings, arrays and inline tables, nested."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {value!r} ({type(value).__name__}) to TOML")

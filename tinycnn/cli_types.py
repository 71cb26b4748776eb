"""Argument types of the command line: each turns one option's text into its value, or an
argparse.ArgumentTypeError that the parser prints with the option's name (exit status 2)."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """A whole number >= 1 (processes, a batch's images)."""
    return _at_least(text, 1)


def whole(text: str) -> int:
    """A whole number >= 0 (a limit where 0 means none)."""
    return _at_least(text, 0)


def _at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= {low}")
    return value


def sha256(text: str) -> str:
    """A sha256 digest: 64 hex digits (checked before a download, not after it)."""
    return _hex_digest(text, "sha256", 64)


def md5(text: str) -> str:
    """An md5 digest: 32 hex digits (checked before a download, not after it)."""
    return _hex_digest(text, "md5", 32)


def _hex_digest(text: str, name: str, digits: int) -> str:
    digest = text.strip().lower()
    if len(digest) != digits or any(c not in "0123456789abcdef" for c in digest):
        message = f"{text!r} is not a valid {name} digest ({digits} hex digits)"
        raise argparse.ArgumentTypeError(message)
    return digest


def seed(text: str) -> int:
    """A random seed: a whole number in [0, 2**32 - 1] (what numpy and scikit-learn take)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in [0, 2**32 - 1]")
    return value


def iteration_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of iterations >= 1")
    return value

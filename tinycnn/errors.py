"""The one error family of tinycnn: every message names the file, line or value at fault."""

from __future__ import annotations


class TinycnnError(Exception):
    """Base of every error tinycnn raises on purpose; the CLI prints it without a traceback."""


class DataError(TinycnnError):
    """The dataset on disk is missing, malformed or unreadable."""


class CacheError(TinycnnError):
    """A prepared cache is missing, incomplete, or does not match what was asked for."""


class DownloadError(TinycnnError):
    """A download failed, or its size or checksum is wrong."""


class ConfigError(TinycnnError):
    """A configuration value is unknown, of the wrong type, or impossible."""


class OutputError(TinycnnError):
    """An output file cannot be written (disk full, permission denied, read-only file system)."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a command; the CLI exits 128 + the signal number."""

    def __init__(self, signum: int, again: bool = False) -> None:
        self.signum = signum
        name = {2: "Ctrl-C", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        super().__init__(f"{name} again" if again else name)

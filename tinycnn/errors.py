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


class CropError(ConfigError):
    """A set augment.crop that the cache's images (or the model) cannot take."""

    def __init__(self, image_side: int, why: str, message: str, fitted: int | None = None) -> None:
        super().__init__(message)
        self.image_side, self.why, self.fitted = image_side, why, fitted  # fitted: one that fits


class OutputError(TinycnnError):
    """An output file cannot be written (disk full, permission denied, read-only file system)."""


class CheckpointError(TinycnnError):
    """A checkpoint is missing, unreadable, or not a tinycnn checkpoint."""


class DamagedCheckpointError(CheckpointError):
    """A checkpoint's bytes are damaged (cut short, changed): ``problem`` says how, without the
    advice, which depends on what the checkpoint was to be used for."""

    def __init__(self, problem: str, advice: str = "") -> None:
        super().__init__(f"{problem}; {advice}" if advice else problem)
        self.problem = problem


class RunFolderError(TinycnnError):
    """A run folder is in use by another process, or one of its files is damaged."""


class TrainingDivergedError(TinycnnError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ExportError(TinycnnError):
    """An export failed, or the exported model disagrees with tinycnn's evaluation."""


class ImageTooLargeError(TinycnnError):
    """An image has more pixels than the limit; it was not decoded."""


class EmptyFileError(TinycnnError):
    """A file to read holds no bytes."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped a command; the CLI exits 128 + the signal number."""

    def __init__(self, signum: int, again: bool = False) -> None:
        self.signum = signum
        name = {2: "Ctrl-C", 15: "SIGTERM"}.get(signum, f"signal {signum}")
        super().__init__(f"{name} again" if again else name)

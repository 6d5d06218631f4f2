"""User-facing errors: what the commands print as one ``error:`` / ``fix:`` block instead of a traceback."""

from __future__ import annotations


class KPError(Exception):
    """Base of every error caused by what the user gave (arguments, files, models), not by a bug.

    Args:
        message: What is wrong, naming the argument, file or model.
        fix: What to change, where we know it.
    """

    def __init__(self, message: str, *, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message if self.fix is None else f"{self.message} (fix: {self.fix})"


class ConfigError(KPError, ValueError):
    """An argument or config value that is out of range, inconsistent with another, or of the wrong kind."""


class MissingFileError(KPError, FileNotFoundError):
    """A data file, folder or checkpoint that does not exist."""


class ModelLoadError(KPError, OSError):
    """A model or tokenizer that cannot be loaded (unknown name, offline without a cached copy, bad folder)."""


class MissingExtraError(KPError, ImportError):
    """An optional dependency (``pip install 'kp_lightning[<extra>]'``) that is not installed."""

"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""
from __future__ import annotations

from pathlib import Path


class StrokesegError(Exception):
    """Base class: the message is the whole one-line explanation shown to the user."""


class ConfigError(StrokesegError):
    """A configuration value or override is invalid."""


class InputError(StrokesegError):
    """A file is missing, unreadable or inconsistent; the message names the file and the fault."""

    def __init__(self, path: Path | str, fault: str):
        self.path = str(path)
        self.fault = fault
        super().__init__(f"{self.path}: {fault}")

    def __reduce__(self):  # survives being raised inside a worker process
        return (InputError, (self.path, self.fault))


class StageOrderError(StrokesegError):
    """A stage was run before the stage whose outputs it needs."""

"""Errors a user can act on. The CLI prints their message in one line and exits non-zero."""
from __future__ import annotations

from pathlib import Path


class SinusAnomalyError(Exception):
    """Base class of every expected failure (bad input, failed registration, bad dataset)."""


class PathError(SinusAnomalyError):
    """A problem with one file or folder: the message is ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageError(PathError):
    """An input image that cannot be used."""


class RegistrationError(PathError):
    """Registration to the reference head failed or landed implausibly."""

    def __init__(self, path: str | Path, problem: str):
        super().__init__(path, f"registration to the reference head failed: {problem}")
        self.problem = problem


class BundleError(PathError):
    """A model bundle that cannot be used."""


class DatasetError(SinusAnomalyError):
    """A labels table, manifest or dataset folder that cannot be used."""


class OutputError(PathError):
    """An output file or folder that cannot be created or written (read-only, a file in the way,
    disk full, another process writing it)."""

"""Every exception class of the project. The CLI prints the message of any of them in one line and exits
with code 2; all derive from :class:`SinusAnomalyError`. Plain Python: the Slicer module imports this
before torch is installed."""
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

    def __reduce__(self):  # rebuilt from (path, problem), so it crosses to and from worker processes
        return self.__class__, (self.path, self.problem)


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


class InvalidValueError(SinusAnomalyError, ValueError):
    """A value outside its documented range, type or shape (a learning rate, a label other than 0/1,
    a NaN score): the message names the value and what it must be."""


class ConfigError(SinusAnomalyError):
    """A configuration file that cannot be used."""


class DeviceError(SinusAnomalyError):
    """The requested compute device is not available."""


class StageInputError(SinusAnomalyError):
    """A training stage's input is missing or was made from something else (stale)."""


class CheckpointError(PathError):
    """A checkpoint that cannot be used; the message names the file."""


class TrainingError(SinusAnomalyError):
    """Training cannot go on (e.g. the loss became NaN or infinite)."""


class ModelError(SinusAnomalyError, ValueError):
    """A network that cannot be built as asked, or weights that do not fit it."""


class PretextError(SinusAnomalyError, ValueError):
    """A pretext model that cannot be built as asked, or a batch it cannot take."""


class PretrainedWeightsError(PathError):
    """A pretrained-weights file that cannot be loaded into the encoder; the message names the file."""


class ResultError(SinusAnomalyError, ValueError):
    """A classify result folder that cannot be loaded; the message names the file and the problem."""


class UnsupportedPythonError(SinusAnomalyError, RuntimeError):
    """The running Python is outside the versions the requirement table covers."""


class PythonSlicerNotFoundError(SinusAnomalyError, FileNotFoundError):
    """Slicer's ``PythonSlicer`` launcher is neither on PATH nor next to the running interpreter."""

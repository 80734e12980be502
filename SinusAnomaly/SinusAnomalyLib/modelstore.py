"""Where model bundles live: the shipped default bundle, the per-user models folder, the bundles
to choose from (the Slicer module's selector), and resolving a bundle by name or path.

Light on purpose (no torch; SimpleITK through reference, which Slicer has): the Slicer GUI lists bundles before torch is installed.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import BundleError
from .reference import resources_dir

BUNDLE_SUFFIX = ".sabundle"
MODELS_ENV = "SINUS_ANOMALY_MODELS"
# The model the extension ships (trained on synthetic heads by `sinus-anomaly train-default`,
# docs/default-model.md); it sits in the module's Resources so Slicer's installer carries it.
DEFAULT_BUNDLE = resources_dir() / "Models" / f"synthetic-default{BUNDLE_SUFFIX}"
DEFAULT_BUNDLE_LABEL = "Default (synthetic heads, not a clinical device)"  # how choices name it


def default_bundle() -> Path | None:
    """The shipped default bundle, or None where this installation lacks it."""
    return DEFAULT_BUNDLE if DEFAULT_BUNDLE.is_file() else None


def is_default_bundle(path: str | Path) -> bool:
    """Whether ``path`` is the shipped default bundle (the same file)."""
    return DEFAULT_BUNDLE.is_file() and Path(path).resolve() == DEFAULT_BUNDLE.resolve()


def models_folder() -> Path:
    """The per-user models folder: ``$SINUS_ANOMALY_MODELS`` or ``~/.sinus-anomaly/models``."""
    override = os.environ.get(MODELS_ENV)
    return Path(override).expanduser() if override else Path.home() / ".sinus-anomaly" / "models"


def list_bundles(folder: str | Path | None = None) -> list[Path]:
    """Bundles (``*.sabundle`` files) in ``folder`` (default: the models folder), sorted by name."""
    folder = Path(folder) if folder is not None else models_folder()
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(BUNDLE_SUFFIX)),
                  key=lambda p: p.name.lower())


def bundle_choices(folder: str | Path | None = None) -> list[tuple[str, Path]]:
    """The bundles to choose from, as (label, path): the shipped default first (labelled
    :data:`DEFAULT_BUNDLE_LABEL`) where this installation has it, then the bundles in ``folder``
    (default: the models folder) under their file names, sorted by name. Empty when there are none."""
    default = default_bundle()
    choices = [(DEFAULT_BUNDLE_LABEL, default)] if default is not None else []
    return choices + [(path.name, path) for path in list_bundles(folder) if not is_default_bundle(path)]


def resolve_bundle(name_or_path: str | Path) -> Path:
    """A path as given if it exists, else the bundle of that name in the models folder."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    for candidate in (models_folder() / path.name, models_folder() / f"{path.name}{BUNDLE_SUFFIX}"):
        if candidate.is_file():
            return candidate
    raise BundleError(path, f"no such bundle file, and none of that name in the models folder {models_folder()}")

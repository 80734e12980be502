"""The manifests of a prepared dataset: one CSV row per extracted sinus, naming where its crop is.

``manifest.csv`` lists the labelled sinuses (:class:`ManifestRow`, :data:`MANIFEST_COLUMNS`);
``unlabelled_manifest.csv`` the sinuses of the unlabelled set (:class:`UnlabelledRow`,
:data:`UNLABELLED_COLUMNS`: no label, no split). Row ``i`` of each describes row ``i`` of its crop
array (``crops.npy``, ``unlabelled_crops.npy``); :mod:`.dataset` writes those arrays and checks
that they agree with the manifests. Both are written atomically; an unknown registration quality
is an empty cell.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

from .errors import DatasetError
from .fileio import write_csv_atomic
from .splits import Sample

MANIFEST_FILE = "manifest.csv"
UNLABELLED_MANIFEST_FILE = "unlabelled_manifest.csv"
MANIFEST_COLUMNS = (
    "sample_id", "patient", "side", "label", "anomaly_type", "image",
    "crop_file", "crop_key", "crop_index", "registration_quality",
)
UNLABELLED_COLUMNS = ("sample_id", "patient", "side", "image", "crop_file", "crop_key", "crop_index", "registration_quality")


@dataclass(frozen=True)
class ManifestRow:
    """One extracted, labelled sinus; ``crop_index`` is its row in ``crops.npy``."""

    sample_id: str
    patient: str
    side: str
    label: int
    anomaly_type: str
    image: str
    crop_file: str  # scans/<patient>/crops.npz, relative to the dataset folder
    crop_key: str  # array name inside crop_file
    crop_index: int
    registration_quality: float | None

    @property
    def sample(self) -> Sample:
        return Sample(self.patient, self.side, self.label, self.anomaly_type)


@dataclass(frozen=True)
class UnlabelledRow:
    """One extracted sinus of the unlabelled set; ``crop_index`` is its row in ``unlabelled_crops.npy``."""

    sample_id: str
    patient: str
    side: str
    image: str
    crop_file: str
    crop_key: str
    crop_index: int
    registration_quality: float | None
    label: ClassVar[int] = -1  # unknown: code serving crops with their labels serves these with -1


def _write_rows(path: Path, columns: Sequence[str], rows: Sequence) -> None:
    """Write the ``columns`` attributes of ``rows`` as a CSV, atomically (``None`` as an empty cell)."""
    write_csv_atomic(path, columns, ([getattr(r, c) if getattr(r, c) is not None else "" for c in columns] for r in rows))


def _read_rows(path: Path, columns: Sequence[str], what: str) -> list[dict]:
    """The rows of the CSV at ``path`` as dictionaries; DatasetError naming ``what`` when a column is missing."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: {what} lacks column(s) {', '.join(missing)}")
        return list(reader)


def _optional_float(text: str) -> float | None:
    """A manifest's registration quality: empty when unknown."""
    return float(text) if text else None


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> None:
    """Write ``manifest.csv`` atomically (an unknown registration quality is an empty cell)."""
    _write_rows(path, MANIFEST_COLUMNS, rows)


def load_manifest(path: str | Path) -> list[ManifestRow]:
    """Read ``manifest.csv``; raise :class:`DatasetError` for a missing or malformed file."""
    path = Path(path)
    try:
        return [
            ManifestRow(
                sample_id=r["sample_id"], patient=r["patient"], side=r["side"], label=int(r["label"]),
                anomaly_type=r["anomaly_type"], image=r["image"], crop_file=r["crop_file"],
                crop_key=r["crop_key"], crop_index=int(r["crop_index"]),
                registration_quality=_optional_float(r["registration_quality"]),
            )
            for r in _read_rows(path, MANIFEST_COLUMNS, "manifest")
        ]
    except FileNotFoundError:
        raise DatasetError(f"{path}: manifest does not exist (run 'sinus-anomaly prepare')") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise DatasetError(f"{path}: manifest cannot be read: {exc}") from exc


def write_unlabelled_manifest(path: Path, rows: Sequence[UnlabelledRow]) -> None:
    """Write ``unlabelled_manifest.csv`` atomically."""
    _write_rows(path, UNLABELLED_COLUMNS, rows)


def read_unlabelled_manifest(path: Path) -> list[UnlabelledRow]:
    """Read ``unlabelled_manifest.csv``: DatasetError for a missing column; a missing file
    (FileNotFoundError) and unreadable values (OSError, ValueError, csv.Error) are left to the
    caller, which says how the dataset came to lack them (:func:`.dataset.load_unlabelled`)."""
    return [UnlabelledRow(r["sample_id"], r["patient"], r["side"], r["image"], r["crop_file"], r["crop_key"],
                          int(r["crop_index"]), _optional_float(r["registration_quality"]))
            for r in _read_rows(path, UNLABELLED_COLUMNS, "unlabelled manifest")]

"""Dataset preparation: labels table -> cached sinus crops, one crop array, manifest and splits.

``prepare_dataset(images_dir, labels_csv, out_dir)`` extracts both maxillary sinuses of every
listed patient once, caches them per scan (so an interrupted or repeated run resumes), and writes
the files training reads::

    DATASET/
      scans/<patient>/extraction.json  extraction summary + "cache" block (source image, size,
                                       mtime, library version, reference hash): if any of these
                                       changed the scan is extracted again
      scans/<patient>/crops.npz        float16 arrays "left" and "right" (64^3, right mirrored);
                                       both sides are cached even if the labels list one, so
                                       labelling the other side later needs no new extraction
      crops.npy                        float16 (N, 64, 64, 64), one crop per manifest row, in
                                       manifest order; open with np.load(mmap_mode="r")
      manifest.csv                     one row per extracted, labelled sinus (MANIFEST_COLUMNS)
      splits.json                      patient-level test set, folds, label fractions (splits.py)
      failures.csv                     scans (or single sinuses not in view) left out in the last run, and why
      dataset.json                     parameters, counts per split/label/type; written last, so
                                       its presence marks a complete, consistent dataset

The labels CSV has one row per sinus with columns ``patient, side, label, anomaly_type`` and an
optional ``image`` (file or DICOM folder, relative to the images folder). Without it the image of
patient P is the single entry of the images folder named P.nii.gz, P.nii, P.nrrd, P.nhdr, P.mha,
P.mhd or a DICOM folder P.

Every file is written atomically; ``crops.npz`` is written last for its scan (after the stale one
is removed), so a scan's cache is either complete or absent and Ctrl-C loses at most the scan in
progress.
"""
from __future__ import annotations

import csv
import json
import logging
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import __version__
from .errors import DatasetError, OutputError, SinusAnomalyError
from .extraction import MIN_COVERAGE, extract_sinuses
from .fileio import atomic_path, check_output_folder, locked_output_folder, write_csv_atomic, write_json_atomic
from .labels import LabelledSinus, read_labels
from .reference import SIDES, load_reference
from .splits import DEFAULT_FRACTIONS, Sample, Splits, fraction_key, fraction_percent, load_splits, make_splits, save_splits

logger = logging.getLogger(__name__)

MANIFEST_COLUMNS = (
    "sample_id", "patient", "side", "label", "anomaly_type", "image",
    "crop_file", "crop_key", "crop_index", "registration_quality",
)
FAILURE_COLUMNS = ("patient", "image", "error")
CROP_SHAPE = (64, 64, 64)
CROP_DTYPE = np.float16
CACHE_FORMAT = 1

SCANS_DIR = "scans"
SCAN_CROPS = "crops.npz"
SCAN_SUMMARY = "extraction.json"
CROPS_FILE = "crops.npy"
MANIFEST_FILE = "manifest.csv"
SPLITS_FILE = "splits.json"
FAILURES_FILE = "failures.csv"
DATASET_FILE = "dataset.json"


def image_signature(image: Path) -> dict:
    """Size and modification time of an image file (or of all files of a DICOM folder)."""
    if image.is_dir():
        files = [f for f in image.rglob("*") if f.is_file()]
        stats = [f.stat() for f in files]
        return {
            "files": len(files),
            "size": sum(s.st_size for s in stats),
            "mtime_ns": max((s.st_mtime_ns for s in stats), default=0),
        }
    stat = image.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _cache_block(image: Path) -> dict:
    """What a cached scan must match to be reused: same image, unchanged, same library and reference."""
    return {
        "format": CACHE_FORMAT,
        "image": str(image),
        "signature": image_signature(image),
        "library_version": __version__,
        "reference_sha256": load_reference().sha256,
    }


def cached_scan_is_complete(scan_dir: Path, image: Path) -> bool:
    """True when ``scan_dir`` holds both crops and a summary made from ``image`` as it is now."""
    crops_path, summary_path = scan_dir / SCAN_CROPS, scan_dir / SCAN_SUMMARY
    if not crops_path.is_file() or not summary_path.is_file():
        return False
    try:
        cached = json.loads(summary_path.read_text(encoding="utf-8")).get("cache")
        with np.load(crops_path) as crops:
            keys = set(crops.files)
    except (OSError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, AttributeError):
        return False
    return cached == _cache_block(image) and keys == set(SIDES)


def extract_scan(image: Path, scan_dir: Path) -> dict:
    """Extract both sinuses of ``image`` into ``scan_dir``; return the extraction summary.

    The stale ``crops.npz`` goes first and the new one is written last, so a failure or an
    interruption at any point leaves the scan without crops, i.e. not complete.
    Raises :class:`SinusAnomalyError` for a scan that cannot be used.
    """
    check_output_folder(scan_dir)  # OutputError naming it, before the registration
    (scan_dir / SCAN_CROPS).unlink(missing_ok=True)
    cache = _cache_block(image)  # taken before reading, so a change during extraction is redone
    result = extract_sinuses(image)
    crops = {}
    for side, array in result.arrays().items():
        if array.shape != CROP_SHAPE:
            raise ValueError(f"extraction returned a {side} crop of shape {array.shape}, expected {CROP_SHAPE}")
        crops[side] = np.asarray(array, dtype=CROP_DTYPE)
    if set(crops) != set(SIDES):
        raise ValueError(f"extraction returned sides {sorted(crops)}, expected {list(SIDES)}")
    summary = result.summary()
    for side in SIDES:  # the crops live in crops.npz here, not in the NIfTI files `extract` writes
        summary[side] = {**summary.get(side, {}), "crop_file": SCAN_CROPS, "crop_key": side}
    write_json_atomic(scan_dir / SCAN_SUMMARY, {**summary, "cache": cache})
    with atomic_path(scan_dir / SCAN_CROPS) as tmp:
        np.savez_compressed(tmp, **crops)
    return summary


def _registration_quality(summary: dict) -> float | None:
    """The registration quality an extraction summary reports, None if it reports none."""
    quality = (summary.get("registration") or {}).get("quality")
    return None if quality is None else float(quality)


# --------------------------------------------------------------------------- manifest

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


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> None:
    """Write ``manifest.csv`` atomically (an unknown registration quality is an empty cell)."""
    write_csv_atomic(path, MANIFEST_COLUMNS, (
        [getattr(r, c) if getattr(r, c) is not None else "" for c in MANIFEST_COLUMNS] for r in rows
    ))


def load_manifest(path: str | Path) -> list[ManifestRow]:
    """Read ``manifest.csv``; raise :class:`DatasetError` for a missing or malformed file."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
            return [
                ManifestRow(
                    sample_id=r["sample_id"], patient=r["patient"], side=r["side"], label=int(r["label"]),
                    anomaly_type=r["anomaly_type"], image=r["image"], crop_file=r["crop_file"],
                    crop_key=r["crop_key"], crop_index=int(r["crop_index"]),
                    registration_quality=float(r["registration_quality"]) if r["registration_quality"] else None,
                )
                for r in reader
            ]
    except FileNotFoundError:
        raise DatasetError(f"{path}: manifest does not exist (run 'sinus-anomaly prepare')") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise DatasetError(f"{path}: manifest cannot be read: {exc}") from exc


# --------------------------------------------------------------------------- prepare

@dataclass(frozen=True)
class ScanFailure:
    """A scan left out of the dataset: the patient, its image and the one-line reason."""

    patient: str
    image: str
    error: str


@dataclass
class PrepareReport:
    """What :func:`prepare_dataset` did: scan counts, failures and the split sizes."""

    out_dir: Path
    n_patients_listed: int
    n_scans_extracted: int  # extracted in this run
    n_scans_reused: int  # complete in the cache from an earlier run
    failures: list[ScanFailure]
    n_sinuses: int
    n_normal: int
    n_anomalous: int
    anomaly_types: dict[str, int]
    split_counts: dict  # "test" -> counts, "folds" -> [{"train": counts, "val": counts}]

    @property
    def n_scans_prepared(self) -> int:
        return self.n_scans_extracted + self.n_scans_reused


def _counts(rows: Sequence[ManifestRow]) -> dict:
    anomalous = sum(r.label for r in rows)
    return {
        "patients": len({r.patient for r in rows}),
        "sinuses": len(rows),
        "normal": len(rows) - anomalous,
        "anomalous": anomalous,
    }


def _split_counts(rows: Sequence[ManifestRow], splits: Splits) -> dict:
    def of_patients(patients: Iterable[str]) -> dict:
        wanted = set(patients)
        return _counts([r for r in rows if r.patient in wanted])

    return {
        "test": of_patients(splits.test),
        "folds": [
            {
                "train": of_patients(fold.train),
                "val": of_patients(fold.val),
                "labelled": {key: len(ids) for key, ids in fold.labelled.items()},
            }
            for fold in splits.folds
        ],
    }


def _write_crops(out_dir: Path, rows: Sequence[ManifestRow]) -> None:
    """Gather every row's crop from the per-scan caches into ``crops.npy`` (atomically)."""
    with atomic_path(out_dir / CROPS_FILE) as tmp:
        crops = np.lib.format.open_memmap(tmp, mode="w+", dtype=CROP_DTYPE, shape=(len(rows), *CROP_SHAPE))
        by_file: dict[str, list[ManifestRow]] = {}
        for row in rows:
            by_file.setdefault(row.crop_file, []).append(row)
        for crop_file, file_rows in by_file.items():
            with np.load(out_dir / crop_file) as cached:
                for row in file_rows:
                    crops[row.crop_index] = cached[row.crop_key]
        crops.flush()
        del crops


def _one_line(exc: Exception) -> str:
    """An exception's message on one line, for the log and failures.csv."""
    return " ".join(str(exc).split()) or type(exc).__name__


def prepare_dataset(
    images_dir: str | Path,
    labels_csv: str | Path,
    out_dir: str | Path,
    n_folds: int = 5,
    test_fraction: float = 0.2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    progress: bool = True,
) -> PrepareReport:
    """Extract and cache every labelled scan, then write crops, manifest, splits and summary.

    Scans complete in the cache (same image, unchanged) are reused. A scan failing with
    :class:`SinusAnomalyError` is logged as ``skipped <patient>: <message>``, recorded in
    ``failures.csv`` and left out; other exceptions propagate. Raises :class:`DatasetError` for
    an invalid labels table, when no scan could be prepared, or when too few patients remain for
    the folds, and :class:`OutputError` when ``out_dir`` cannot be written or another process is
    preparing it now (one process at a time holds its lock). See the module docstring for the
    layout of ``out_dir``.
    """
    images_dir, labels_csv, out_dir = Path(images_dir), Path(labels_csv), Path(out_dir)
    sinuses = read_labels(labels_csv, images_dir)
    make_splits([s.sample for s in sinuses], n_folds, test_fraction, fractions, seed)  # fail early on bad parameters
    with locked_output_folder(out_dir, "dataset"):  # checked before minutes of registration
        return _prepare(images_dir, labels_csv, out_dir, sinuses, n_folds, test_fraction, fractions, seed, progress)


def _prepare(images_dir: Path, labels_csv: Path, out_dir: Path, sinuses: list[LabelledSinus], n_folds: int,
             test_fraction: float, fractions: Sequence[float], seed: int, progress: bool) -> PrepareReport:
    by_patient: dict[str, list[LabelledSinus]] = {}
    for sinus in sinuses:
        by_patient.setdefault(sinus.patient, []).append(sinus)

    summaries: dict[str, dict] = {}
    failures: list[ScanFailure] = []
    n_extracted = n_reused = 0
    with logging_redirect_tqdm(), tqdm(by_patient.items(), desc="prepare", unit="scan", disable=not progress) as bar:
        for patient, patient_sinuses in bar:
            image = patient_sinuses[0].image
            scan_dir = out_dir / SCANS_DIR / patient
            if cached_scan_is_complete(scan_dir, image):
                summaries[patient] = json.loads((scan_dir / SCAN_SUMMARY).read_text(encoding="utf-8"))
                n_reused += 1
            else:
                try:
                    summaries[patient] = extract_scan(image, scan_dir)
                    n_extracted += 1
                except OutputError:  # the dataset folder, not the scan: stop
                    raise
                except SinusAnomalyError as exc:
                    failures.append(ScanFailure(patient, str(image), _one_line(exc)))
                    logger.warning("skipped %s: %s", patient, _one_line(exc))
            bar.set_postfix(extracted=n_extracted, reused=n_reused, failed=len(failures))

    # From here on the outputs change together; dataset.json marks them consistent again at the end.
    (out_dir / DATASET_FILE).unlink(missing_ok=True)
    if not summaries:
        write_csv_atomic(out_dir / FAILURES_FILE, FAILURE_COLUMNS, ([f.patient, f.image, f.error] for f in failures))
        raise DatasetError(
            f"none of the {len(by_patient)} scans could be prepared; see {out_dir / FAILURES_FILE}"
        )

    rows = []
    for sinus in sinuses:
        if sinus.patient not in summaries:
            continue
        side_summary = summaries[sinus.patient].get(sinus.side, {})
        if side_summary.get("assessable") is False:  # a crop mostly outside the scan teaches nothing
            problem = (f"{sinus.side} sinus not assessable: coverage {side_summary.get('coverage', 0.0):.2f} "
                       f"< {MIN_COVERAGE} (too little of it in view); left out")
            failures.append(ScanFailure(sinus.patient, str(sinus.image), problem))
            logger.warning("%s: %s", sinus.patient, problem)
            continue
        rows.append(ManifestRow(
            sample_id=sinus.sample.sample_id, patient=sinus.patient, side=sinus.side, label=sinus.label,
            anomaly_type=sinus.anomaly_type, image=str(sinus.image),
            crop_file=f"{SCANS_DIR}/{sinus.patient}/{SCAN_CROPS}", crop_key=sinus.side, crop_index=len(rows),
            registration_quality=_registration_quality(summaries[sinus.patient]),
        ))
    write_csv_atomic(out_dir / FAILURES_FILE, FAILURE_COLUMNS, ([f.patient, f.image, f.error] for f in failures))
    splits = make_splits([r.sample for r in rows], n_folds, test_fraction, fractions, seed)

    _write_crops(out_dir, rows)
    write_manifest(out_dir / MANIFEST_FILE, rows)
    save_splits(splits, out_dir / SPLITS_FILE)
    report = PrepareReport(
        out_dir=out_dir,
        n_patients_listed=len(by_patient),
        n_scans_extracted=n_extracted,
        n_scans_reused=n_reused,
        failures=failures,
        n_sinuses=len(rows),
        n_normal=sum(1 for r in rows if r.label == 0),
        n_anomalous=sum(1 for r in rows if r.label == 1),
        anomaly_types=dict(sorted(Counter(r.anomaly_type for r in rows).items())),
        split_counts=_split_counts(rows, splits),
    )
    write_json_atomic(out_dir / DATASET_FILE, {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "library_version": __version__,
        "parameters": {
            "images_dir": str(images_dir.resolve()),
            "labels_csv": str(labels_csv.resolve()),
            "n_folds": n_folds,
            "test_fraction": test_fraction,
            "fractions": [fraction_percent(f) for f in sorted(fractions)],
            "seed": seed,
        },
        "counts": {
            "patients_listed": report.n_patients_listed,
            "patients": report.n_scans_prepared,
            "sinuses": report.n_sinuses,
            "normal": report.n_normal,
            "anomalous": report.n_anomalous,
            "failures": len(failures),
        },
        "anomaly_types": report.anomaly_types,
        "splits": report.split_counts,
        "crops": {"file": CROPS_FILE, "shape": [len(rows), *CROP_SHAPE], "dtype": np.dtype(CROP_DTYPE).name},
    })
    return report


# --------------------------------------------------------------------------- reading a prepared dataset

@dataclass
class PreparedDataset:
    """A prepared dataset opened for training: manifest, memory-mapped crops and splits."""

    root: Path
    manifest: list[ManifestRow]
    crops: np.ndarray  # float16 (N, 64, 64, 64), memory-mapped, row i = manifest[i]
    splits: Splits
    info: dict = field(default_factory=dict)  # dataset.json

    def rows_of_patients(self, patients: Iterable[str]) -> np.ndarray:
        """Crop indices of every sinus of the given patients, in manifest order."""
        wanted = set(patients)
        return np.array([r.crop_index for r in self.manifest if r.patient in wanted], dtype=np.int64)

    def rows_of_samples(self, sample_ids: Iterable[str]) -> np.ndarray:
        """Crop indices of the given sample ids, in manifest order."""
        wanted = set(sample_ids)
        return np.array([r.crop_index for r in self.manifest if r.sample_id in wanted], dtype=np.int64)

    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.manifest], dtype=np.int64)


def load_dataset(dataset_dir: str | Path) -> PreparedDataset:
    """Open a dataset made by :func:`prepare_dataset` and check its parts agree.

    Checked: the run finished (``dataset.json`` present), manifest rows match ``crops.npy``
    (count, order, shape), the splits cover exactly the manifest's patients, and each fold's
    100 % label fraction holds every training sinus.
    """
    root = Path(dataset_dir)
    info_path = root / DATASET_FILE
    if not info_path.is_file():
        raise DatasetError(
            f"{root}: not a complete prepared dataset ({DATASET_FILE} missing; run or resume 'sinus-anomaly prepare')"
        )
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{info_path}: cannot be read: {exc}") from exc
    manifest = load_manifest(root / MANIFEST_FILE)
    try:
        crops = np.load(root / CROPS_FILE, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{root / CROPS_FILE}: cannot be read: {exc}") from exc
    if crops.shape != (len(manifest), *CROP_SHAPE):
        raise DatasetError(f"{root / CROPS_FILE}: shape {crops.shape} does not match {len(manifest)} manifest rows")
    if [r.crop_index for r in manifest] != list(range(len(manifest))):
        raise DatasetError(f"{root / MANIFEST_FILE}: crop_index is not 0..N-1 in row order")
    splits = load_splits(root / SPLITS_FILE)
    patients = {r.patient for r in manifest}
    if splits.patients() != patients:
        raise DatasetError(f"{root / SPLITS_FILE}: patients differ from those of {root / MANIFEST_FILE}")
    if 100 in splits.fractions:
        for k, fold in enumerate(splits.folds):
            train = set(fold.train)
            expected = sorted(r.sample_id for r in manifest if r.patient in train)
            if sorted(fold.labelled[fraction_key(1.0)]) != expected:
                raise DatasetError(f"{root / SPLITS_FILE}: fold {k} 100 % labelled set is not every training sinus")
    return PreparedDataset(root=root, manifest=manifest, crops=crops, splits=splits, info=info)

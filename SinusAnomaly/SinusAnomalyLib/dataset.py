"""Dataset preparation: labels table -> cached sinus crops, one crop array, manifest and splits.

``prepare_dataset(images_dir, labels_csv, out_dir)`` extracts both maxillary sinuses of every
listed patient once, caches them per scan (so an interrupted or repeated run resumes), and writes
the files training reads::

    DATASET/
      scans/<patient>/extraction.json  extraction summary + "cache" block (source image, size,
                                       mtime, the extraction's fingerprint: scancache.py): if any
                                       of these changed the scan is extracted again
      scans/<patient>/crops.npz        float16 arrays "left" and "right" (64^3, right mirrored);
                                       both sides are cached even if the labels list one, so
                                       labelling the other side later needs no new extraction
      scans/<patient>/failure.json     a scan that could not be used: the error and the same "cache"
                                       block; not tried again until the image or the extraction
                                       changes (delete the folder to force it)
      crops.npy                        float16 (N, 64, 64, 64), one crop per manifest row, in
                                       manifest order; open with np.load(mmap_mode="r")
      manifest.csv                     one row per extracted, labelled sinus (manifest.py: MANIFEST_COLUMNS)
      splits.json                      patient-level test set, folds, label fractions (splits.py)
      failures.csv                     scans (or single sinuses not in view) left out in the last run, and why
      unlabelled_manifest.csv          with an unlabelled set (``unlabelled=``): one row per sinus of its
                                       scans (manifest.py: UNLABELLED_COLUMNS: no label, no split;
                                       pretraining only)
      unlabelled_crops.npy             float16 (M, 64, 64, 64), one crop per unlabelled_manifest row
      dataset.json                     parameters, counts per split/label/type; written last, so
                                       its presence marks a complete, consistent dataset

The unlabelled set (the paper's D_u) is a list ``patient[,image]`` or a folder of scans
(:func:`labels.read_unlabelled`); its scans are cached beside the labelled ones, a patient may
not be in both sets, and a dataset prepared without one reads as having an empty one.

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
from collections import Counter
from concurrent.futures import as_completed
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
from .fileio import atomic_path, check_output_folder, locked_output_folder, sha256_file, write_csv_atomic, write_json_atomic
from .labels import LabelledSinus, UnlabelledScan, read_labels, read_unlabelled
from .manifest import (MANIFEST_FILE, UNLABELLED_MANIFEST_FILE, ManifestRow, UnlabelledRow, load_manifest,
                       read_unlabelled_manifest, write_manifest, write_unlabelled_manifest)
from .reference import SIDES
from .scancache import (SCAN_CROPS, SCAN_FAILURE, SCAN_SUMMARY, cache_block, cached_failure, cached_scan_is_complete,
                        extraction_fingerprint)
from .splits import DEFAULT_FRACTIONS, Splits, sample_id, fraction_key, fraction_percent, load_splits, make_splits, save_splits
from .workers import check_workers, process_pool

logger = logging.getLogger(__name__)

FAILURE_COLUMNS = ("patient", "image", "error")
CROP_SHAPE = (64, 64, 64)
CROP_DTYPE = np.float16

SCANS_DIR = "scans"
CROPS_FILE = "crops.npy"
SPLITS_FILE = "splits.json"
FAILURES_FILE = "failures.csv"
DATASET_FILE = "dataset.json"
UNLABELLED_CROPS_FILE = "unlabelled_crops.npy"


def extract_scan(image: Path, scan_dir: Path) -> dict:
    """Extract both sinuses of ``image`` into ``scan_dir``; return the extraction summary.

    The stale ``crops.npz`` goes first and the new one is written last, so a failure or an
    interruption at any point leaves the scan without crops, i.e. not complete.
    Raises :class:`SinusAnomalyError` for a scan that cannot be used.
    """
    check_output_folder(scan_dir)  # OutputError naming it, before the registration
    (scan_dir / SCAN_CROPS).unlink(missing_ok=True)
    cache = cache_block(image)  # taken before reading, so a change during extraction is redone
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


# --------------------------------------------------------------------------- the unlabelled set

@dataclass
class UnlabelledCrops:
    """The unlabelled set of a prepared dataset: ``manifest`` rows and their ``crops`` (row i = manifest[i]).

    Has the ``manifest`` and ``crops`` a :class:`PreparedDataset` has, so crops are served from it alike.
    """

    manifest: list[UnlabelledRow] = field(default_factory=list)
    crops: np.ndarray = field(default_factory=lambda: np.zeros((0, *CROP_SHAPE), dtype=CROP_DTYPE))

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def patients(self) -> set[str]:
        return {r.patient for r in self.manifest}


def load_unlabelled(root: Path) -> UnlabelledCrops:
    """The unlabelled set of the dataset at ``root``; DatasetError for missing or inconsistent files."""
    path = root / UNLABELLED_MANIFEST_FILE
    try:
        rows = read_unlabelled_manifest(path)
        crops = np.load(root / UNLABELLED_CROPS_FILE, mmap_mode="r")
    except FileNotFoundError as exc:
        raise DatasetError(f"{exc.filename}: missing, though {root / DATASET_FILE} lists an unlabelled set "
                           "(re-run 'sinus-anomaly prepare' with --unlabelled)") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise DatasetError(f"{path}: unlabelled set cannot be read: {exc}") from exc
    if crops.shape != (len(rows), *CROP_SHAPE):
        raise DatasetError(f"{root / UNLABELLED_CROPS_FILE}: shape {crops.shape} does not match {len(rows)} rows of {path}")
    if [r.crop_index for r in rows] != list(range(len(rows))):
        raise DatasetError(f"{path}: crop_index is not 0..M-1 in row order")
    return UnlabelledCrops(rows, crops)


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
    unlabelled: dict | None = None  # the unlabelled set's counts (listed, prepared patients, sinuses), if one was given

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


def _write_crops(out_dir: Path, rows: Sequence[ManifestRow | UnlabelledRow], name: str = CROPS_FILE) -> str:
    """Gather every row's crop from the per-scan caches into ``name`` (``crops.npy``; atomically); its checksum."""
    with atomic_path(out_dir / name) as tmp:
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
        return sha256_file(tmp)


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
    unlabelled: str | Path | None = None,
    workers: int = 1,
) -> PrepareReport:
    """Extract and cache every labelled scan, then write crops, manifest, splits and summary.

    ``unlabelled``: a list (CSV ``patient[,image]``, images relative to ``images_dir``) or a folder
    of unlabelled scans, extracted and cached alike into the unlabelled manifest and crops (their
    bad scans are skipped and recorded the same way); a patient both labelled and unlabelled is a
    :class:`DatasetError`. Without it, an unlabelled set of an earlier run is removed.

    Scans complete in the cache (same image, unchanged) are reused; ``workers`` processes extract
    the others side by side (the outputs are the same for any number; the processes are spawned, so
    a script calling this with ``workers`` above 1 needs Python's ``if __name__ == "__main__":``
    guard). A scan failing with
    :class:`SinusAnomalyError` is logged as ``skipped <patient>: <message>``, recorded in
    ``failures.csv`` and left out; other exceptions propagate. Raises :class:`DatasetError` for
    an invalid labels table, when no scan could be prepared, or when too few patients remain for
    the folds, and :class:`OutputError` when ``out_dir`` cannot be written or another process is
    preparing it now (one process at a time holds its lock). See the module docstring for the
    layout of ``out_dir``.
    """
    check_workers(workers)
    images_dir, labels_csv, out_dir = Path(images_dir), Path(labels_csv), Path(out_dir)
    sinuses = read_labels(labels_csv, images_dir)
    unlabelled_scans = read_unlabelled(unlabelled, images_dir) if unlabelled is not None else None
    both = sorted({s.patient for s in sinuses} & {u.patient for u in unlabelled_scans or []})
    if both:
        shown = ", ".join(both[:10]) + (f" and {len(both) - 10} more" if len(both) > 10 else "")
        raise DatasetError(f"patient(s) {shown} are both in {labels_csv} and in the unlabelled set {unlabelled}: "
                           "a patient's scans must be labelled or unlabelled, not both (pretraining on a labelled "
                           "patient's scans would leak into its split)")
    make_splits([s.sample for s in sinuses], n_folds, test_fraction, fractions, seed)  # fail early on bad parameters
    with locked_output_folder(out_dir, "dataset"):  # checked before minutes of registration
        return _prepare(images_dir, labels_csv, out_dir, sinuses, n_folds, test_fraction, fractions, seed, progress,
                        unlabelled, unlabelled_scans, workers)


def _extract_scans(scans: Sequence[tuple[str, Path]], out_dir: Path, progress: bool, workers: int = 1
                   ) -> tuple[dict[str, dict], list[ScanFailure], int, int]:
    """Extract (or reuse from the cache) each ``(patient, image)``; the summaries by patient, the
    failures, and how many scans were extracted and reused. With ``workers`` above 1, that many
    processes extract scans side by side (each scan writes only its own folder)."""
    summaries: dict[str, dict] = {}
    failures: dict[str, ScanFailure] = {}
    todo = []
    for patient, image in scans:
        scan_dir = out_dir / SCANS_DIR / patient
        if cached_scan_is_complete(scan_dir, image):
            summaries[patient] = json.loads((scan_dir / SCAN_SUMMARY).read_text(encoding="utf-8"))
        elif (error := cached_failure(scan_dir, image)) is not None:
            failures[patient] = ScanFailure(patient, str(image), error)
            logger.warning("skipped %s (failed before; unchanged since): %s", patient, error)
        else:
            todo.append((patient, image))
    n_reused = len(summaries)

    def record(patient: str, image: Path, outcome: dict | SinusAnomalyError) -> None:
        if isinstance(outcome, OutputError):  # the dataset folder, not the scan: stop
            raise outcome
        if isinstance(outcome, SinusAnomalyError):
            failures[patient] = ScanFailure(patient, str(image), _one_line(outcome))
            logger.warning("skipped %s: %s", patient, _one_line(outcome))
        else:
            summaries[patient] = outcome
        bar.set_postfix(extracted=len(summaries) - n_reused, reused=n_reused, failed=len(failures), refresh=False)
        bar.update()

    with logging_redirect_tqdm(), tqdm(total=len(scans), initial=len(scans) - len(todo), desc="prepare", unit="scan",
                                       disable=not progress) as bar:
        if workers <= 1 or len(todo) <= 1:
            for patient, image in todo:
                record(patient, image, _extract_or_error(image, out_dir / SCANS_DIR / patient))
        else:
            with process_pool(min(workers, len(todo))) as pool:
                futures = {pool.submit(_extract_or_error, image, out_dir / SCANS_DIR / patient): (patient, image)
                           for patient, image in todo}
                for future in as_completed(futures):
                    record(*futures[future], future.result())
    order = {patient: i for i, (patient, _) in enumerate(scans)}  # the same tables whatever the workers' pace
    summaries = dict(sorted(summaries.items(), key=lambda item: order[item[0]]))
    return summaries, sorted(failures.values(), key=lambda f: order[f.patient]), len(summaries) - n_reused, n_reused


def _extract_or_error(image: Path, scan_dir: Path) -> dict | SinusAnomalyError:
    """:func:`extract_scan`'s summary, or the :class:`SinusAnomalyError` it raised (returned, so a worker
    process hands it back like a result); other exceptions propagate. A scan that cannot be used is
    recorded in ``scan_dir`` (:data:`SCAN_FAILURE`) so that the next ``prepare`` does not try it again
    while the image and the extraction stay the same."""
    try:
        cache = cache_block(image)  # taken before reading, as for the crops
    except OSError:
        cache = None
    try:
        summary = extract_scan(image, scan_dir)
    except OutputError as exc:
        return exc
    except SinusAnomalyError as exc:
        if cache is not None:
            write_json_atomic(scan_dir / SCAN_FAILURE, {"cache": cache, "error": _one_line(exc)})
        return exc
    (scan_dir / SCAN_FAILURE).unlink(missing_ok=True)
    return summary


def _not_assessable(patient: str, image: Path, side: str, side_summary: dict) -> ScanFailure | None:
    """The failure line of a sinus left out for too little of it in view, else None."""
    if side_summary.get("assessable") is not False:  # a crop mostly outside the scan teaches nothing
        return None
    problem = (f"{side} sinus not assessable: coverage {side_summary.get('coverage', 0.0):.2f} "
               f"< {MIN_COVERAGE} (too little of it in view); left out")
    logger.warning("%s: %s", patient, problem)
    return ScanFailure(patient, str(image), problem)


def _prepare(images_dir: Path, labels_csv: Path, out_dir: Path, sinuses: list[LabelledSinus], n_folds: int,
             test_fraction: float, fractions: Sequence[float], seed: int, progress: bool,
             unlabelled: str | Path | None = None, unlabelled_scans: list[UnlabelledScan] | None = None,
             workers: int = 1) -> PrepareReport:
    by_patient: dict[str, list[LabelledSinus]] = {}
    for sinus in sinuses:
        by_patient.setdefault(sinus.patient, []).append(sinus)
    summaries, failures, n_extracted, n_reused = _extract_scans(
        [(patient, patient_sinuses[0].image) for patient, patient_sinuses in by_patient.items()], out_dir, progress, workers)
    u_summaries, u_failures, u_extracted, u_reused = _extract_scans(
        [(scan.patient, scan.image) for scan in unlabelled_scans or []], out_dir, progress and bool(unlabelled_scans), workers)

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
        failure = _not_assessable(sinus.patient, sinus.image, sinus.side, summaries[sinus.patient].get(sinus.side, {}))
        if failure is not None:
            failures.append(failure)
            continue
        rows.append(ManifestRow(
            sample_id=sinus.sample.sample_id, patient=sinus.patient, side=sinus.side, label=sinus.label,
            anomaly_type=sinus.anomaly_type, image=str(sinus.image),
            crop_file=f"{SCANS_DIR}/{sinus.patient}/{SCAN_CROPS}", crop_key=sinus.side, crop_index=len(rows),
            registration_quality=_registration_quality(summaries[sinus.patient]),
        ))
    unlabelled_rows = []
    failures += u_failures
    for scan in unlabelled_scans or []:
        if scan.patient not in u_summaries:
            continue
        for side in SIDES:
            failure = _not_assessable(scan.patient, scan.image, side, u_summaries[scan.patient].get(side, {}))
            if failure is not None:
                failures.append(failure)
                continue
            unlabelled_rows.append(UnlabelledRow(
                sample_id=sample_id(scan.patient, side), patient=scan.patient, side=side, image=str(scan.image),
                crop_file=f"{SCANS_DIR}/{scan.patient}/{SCAN_CROPS}", crop_key=side, crop_index=len(unlabelled_rows),
                registration_quality=_registration_quality(u_summaries[scan.patient]),
            ))
    write_csv_atomic(out_dir / FAILURES_FILE, FAILURE_COLUMNS, ([f.patient, f.image, f.error] for f in failures))
    splits = make_splits([r.sample for r in rows], n_folds, test_fraction, fractions, seed)

    crops_sha256 = _write_crops(out_dir, rows)
    write_manifest(out_dir / MANIFEST_FILE, rows)
    save_splits(splits, out_dir / SPLITS_FILE)
    unlabelled_counts = None
    if unlabelled_scans is None:  # no unlabelled set asked for: none of an earlier run stays behind
        for name in (UNLABELLED_MANIFEST_FILE, UNLABELLED_CROPS_FILE):
            (out_dir / name).unlink(missing_ok=True)
    else:
        unlabelled_crops_sha256 = _write_crops(out_dir, unlabelled_rows, UNLABELLED_CROPS_FILE)
        write_unlabelled_manifest(out_dir / UNLABELLED_MANIFEST_FILE, unlabelled_rows)
        unlabelled_counts = {"source": str(Path(unlabelled).resolve()), "patients_listed": len(unlabelled_scans),
                             "extracted": u_extracted, "reused": u_reused, "failed": len(u_failures),
                             "patients": len({r.patient for r in unlabelled_rows}), "sinuses": len(unlabelled_rows),
                             "crops": {"file": UNLABELLED_CROPS_FILE, "manifest": UNLABELLED_MANIFEST_FILE,
                                       "shape": [len(unlabelled_rows), *CROP_SHAPE], "dtype": np.dtype(CROP_DTYPE).name,
                                       "sha256": unlabelled_crops_sha256}}
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
        unlabelled=unlabelled_counts,
    )
    write_json_atomic(out_dir / DATASET_FILE, {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "library_version": __version__,
        "extraction": extraction_fingerprint(),
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
        "crops": {"file": CROPS_FILE, "shape": [len(rows), *CROP_SHAPE], "dtype": np.dtype(CROP_DTYPE).name, "sha256": crops_sha256},
        **({"unlabelled": unlabelled_counts} if unlabelled_counts is not None else {}),
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
    unlabelled: UnlabelledCrops = field(default_factory=UnlabelledCrops)  # empty unless prepared with an unlabelled set

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
    (count, order, shape), the splits cover exactly the manifest's patients, each fold's
    100 % label fraction holds every training sinus, and the unlabelled set (if ``dataset.json``
    lists one) matches its crops and shares no patient with the labelled one.
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
    unlabelled = load_unlabelled(root) if info.get("unlabelled") else UnlabelledCrops()
    both = sorted(unlabelled.patients & patients)
    if both:
        raise DatasetError(f"{root / UNLABELLED_MANIFEST_FILE}: patient(s) {', '.join(both[:10])} are also labelled")
    return PreparedDataset(root=root, manifest=manifest, crops=crops, splits=splits, info=info, unlabelled=unlabelled)

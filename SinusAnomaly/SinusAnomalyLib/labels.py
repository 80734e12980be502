"""The labels table of a cohort: one row per sinus, read, checked and resolved to image paths.

Columns ``patient,side,label,anomaly_type[,image]`` (comma-, semicolon- or tab-separated); see
:func:`read_labels`. Used by dataset preparation and by ``classify``'s scan lists
(:func:`read_csv_table`).
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetError
from .imageio import IMAGE_SUFFIXES
from .reference import SIDES
from .splits import Sample

REQUIRED_COLUMNS = ("patient", "side", "label", "anomaly_type")
OPTIONAL_COLUMNS = ("image",)


@dataclass(frozen=True)
class LabelledSinus:
    """One row of the labels CSV with its image resolved to an existing path."""

    patient: str
    side: str
    label: int
    anomaly_type: str
    image: Path
    line: int  # line of the CSV, for messages

    @property
    def sample(self) -> Sample:
        return Sample(self.patient, self.side, self.label, self.anomaly_type)


def _image_stem(entry: Path) -> str | None:
    """The patient name an entry of the images folder stands for, or None if it is no image."""
    if entry.name.startswith("."):
        return None
    if entry.is_dir():
        return entry.name
    lower = entry.name.lower()
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return entry.name[: -len(suffix)]
    return None


def images_by_stem(images_dir: Path) -> dict[str, list[Path]]:
    """Entries of ``images_dir`` (image files and folders) grouped by name without suffix."""
    found: dict[str, list[Path]] = {}
    for entry in sorted(images_dir.iterdir()):
        stem = _image_stem(entry)
        if stem:
            found.setdefault(stem, []).append(entry)
    return found


def _parse_label(value: str) -> int | None:
    """0 or 1 from "0", "1", "0.0", "1.0"; None for anything else."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number in (0.0, 1.0) else None


def _check_patient_id(patient: str, where: str) -> None:
    """Patient ids name cache folders, so they must be usable as one folder name."""
    if not patient:
        raise DatasetError(f"{where}: patient is empty")
    if patient in (".", "..") or any(c in patient for c in "/\\\0"):
        raise DatasetError(f"{where}: patient {patient!r} cannot be used as a folder name (no '/', '\\', '.' or '..')")


SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}


def _separator(text: str) -> str:
    """The field separator of a CSV text: comma, semicolon or tab, as :class:`csv.Sniffer` finds it
    in the first lines (comma when it cannot tell: a one-column table)."""
    sample = "\n".join(text.splitlines()[:20])
    try:
        return csv.Sniffer().sniff(sample, delimiters="".join(SEPARATORS)).delimiter
    except csv.Error:
        return ","


def read_csv_table(path: Path, what: str = "labels file") -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (lower-cased, stripped) and (line number, row) pairs of a small CSV table.

    Comma-, semicolon- and tab-separated tables are read alike (the separator is detected; a
    spreadsheet saved with a German or French locale writes semicolons). Raises
    :class:`DatasetError` naming the file for a missing, unreadable, non-UTF-8 or empty file, a
    repeated column, or a row with more fields than the header.
    """
    if not path.exists():
        raise DatasetError(f"{path}: {what} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: {what} cannot be read: {exc.strerror or exc}") from exc
    separator = _separator(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=separator)
    try:
        header = next(reader, None)
        if header is None:
            raise DatasetError(f"{path}: {what} is empty")
        header = [name.strip().lower() for name in header]
        repeated = sorted(name for name, n in Counter(header).items() if n > 1 and name)
        if repeated:
            raise DatasetError(f"{path}: column(s) {', '.join(repeated)} appear more than once in the header")
        rows = []
        for values in reader:
            if not any(v.strip() for v in values):
                continue
            if len(values) > len(header):
                raise DatasetError(f"{path}: line {reader.line_num}: {len(values)} fields but the header has {len(header)} "
                                   f"(read as {SEPARATORS[separator]}-separated)")
            values = values + [""] * (len(header) - len(values))
            rows.append((reader.line_num, {name: v.strip() for name, v in zip(header, values)}))
    except csv.Error as exc:
        raise DatasetError(f"{path}: line {reader.line_num}: not valid CSV: {exc}") from exc
    return header, rows


def _read_rows(labels_csv: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header (lower-cased) and (line number, row) pairs; raise DatasetError for unreadable files."""
    header, rows = read_csv_table(labels_csv, "labels file")
    if not any(header):
        raise DatasetError(f"{labels_csv}: labels file is empty (a header {', '.join(REQUIRED_COLUMNS)} is needed)")
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        found = ", ".join(h for h in header if h) or "none"
        raise DatasetError(
            f"{labels_csv}: missing column(s) {', '.join(missing)} "
            f"(required: {', '.join(REQUIRED_COLUMNS)}, separated by commas, semicolons or tabs; found: {found})"
        )
    if not rows:
        raise DatasetError(f"{labels_csv}: labels file has a header but no rows")
    return header, rows


def _resolve_images(patients: set[str], explicit: dict[str, tuple[int, Path]], images_dir: Path, table: Path) -> dict[str, Path]:
    """Each patient's image: the one its table row names (``explicit``: patient -> line, path),
    else the single entry of ``images_dir`` named after the patient. DatasetError naming ``table``
    for a patient with no image or several candidates."""
    images = {patient: image for patient, (_, image) in explicit.items()}
    unresolved = sorted(patients - set(images))
    if unresolved:
        candidates = images_by_stem(images_dir)
        missing = [p for p in unresolved if p not in candidates]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise DatasetError(
                f"{table}: no image in {images_dir} for patient(s) {shown} (expected <patient>.nii.gz, "
                ".nii, .nrrd, .mha or a DICOM folder <patient>; or give an 'image' column)"
            )
        for patient in unresolved:
            if len(candidates[patient]) > 1:
                names = ", ".join(c.name for c in candidates[patient])
                raise DatasetError(
                    f"{table}: patient {patient} has several images in {images_dir} ({names}); "
                    "give an 'image' column to choose one"
                )
            images[patient] = candidates[patient][0]
    return images


def read_labels(labels_csv: str | Path, images_dir: str | Path) -> list[LabelledSinus]:
    """Read and validate the labels CSV; resolve every patient's image.

    Raises :class:`DatasetError` naming the file, line and problem: missing or unreadable file,
    missing columns, empty patient, side not left/right, label not 0/1, a sinus listed twice,
    conflicting images for one patient, a patient with no (or several candidate) images.
    An empty ``anomaly_type`` means "normal" for label 0 and "unspecified" for label 1.
    Rows are returned sorted by patient, then side (left first).
    """
    labels_csv, images_dir = Path(labels_csv), Path(images_dir)
    if not images_dir.is_dir():
        raise DatasetError(f"{images_dir}: images folder does not exist")
    header, rows = _read_rows(labels_csv)
    has_image_column = "image" in header

    parsed: dict[tuple[str, str], tuple[int, int, str]] = {}  # (patient, side) -> line, label, type
    explicit_images: dict[str, tuple[int, Path]] = {}  # patient -> line, image
    for line, row in rows:
        where = f"{labels_csv}: line {line}"
        patient = row["patient"]
        _check_patient_id(patient, where)
        side = row["side"].lower()
        if side not in SIDES:
            raise DatasetError(f"{where}: side must be 'left' or 'right', not {row['side']!r}")
        label = _parse_label(row["label"])
        if label is None:
            raise DatasetError(f"{where}: label must be 0 or 1, not {row['label']!r}")
        if (patient, side) in parsed:
            first_line = parsed[(patient, side)][0]
            raise DatasetError(f"{where}: {side} sinus of patient {patient} is already listed on line {first_line}")
        anomaly_type = row["anomaly_type"] or ("normal" if label == 0 else "unspecified")
        parsed[(patient, side)] = (line, label, anomaly_type)
        if has_image_column and row["image"]:
            image = Path(row["image"])
            image = image if image.is_absolute() else images_dir / image
            if not image.exists():
                raise DatasetError(f"{where}: image {row['image']!r} of patient {patient} not found in {images_dir}")
            if patient in explicit_images and explicit_images[patient][1] != image:
                other_line, other = explicit_images[patient]
                raise DatasetError(f"{where}: patient {patient} has image {row['image']!r} here but {other} on line {other_line}")
            explicit_images[patient] = (line, image)

    images = _resolve_images({patient for patient, _ in parsed}, explicit_images, images_dir, labels_csv)
    sinuses = []
    for patient, side in sorted(parsed, key=lambda key: (key[0], SIDES.index(key[1]))):
        line, label, anomaly_type = parsed[patient, side]
        sinuses.append(LabelledSinus(patient, side, label, anomaly_type, images[patient].resolve(), line))
    return sinuses


@dataclass(frozen=True)
class UnlabelledScan:
    """A scan of the unlabelled set (pretraining only): its patient and image, no labels."""

    patient: str
    image: Path
    where: str  # the list's line or the folder's entry, for messages


def read_unlabelled(source: str | Path, images_dir: str | Path) -> list[UnlabelledScan]:
    """The unlabelled scans of a list (CSV ``patient[,image]``) or of a folder; sorted by patient.

    A list's images resolve as the labels table's do: an ``image`` column relative to
    ``images_dir`` (or absolute), else the entry of ``images_dir`` named after the patient (any
    other column, e.g. a label, is ignored). A folder: every image file and DICOM folder in it, the
    patient named after it (its name without suffix). Raises :class:`DatasetError` naming the
    file or folder: missing, no ``patient`` column, a patient listed twice or unusable as a folder
    name, an image not found, several images for one patient, nothing listed.
    """
    source, images_dir = Path(source), Path(images_dir)
    if source.is_dir():
        found = images_by_stem(source)
        for patient, entries in found.items():
            _check_patient_id(patient, f"{source}: {entries[0].name}")
            if len(entries) > 1:
                raise DatasetError(f"{source}: patient {patient} has several images ({', '.join(e.name for e in entries)}); "
                                   "give a CSV list (patient,image) to choose one")
        scans = [UnlabelledScan(patient, entries[0].resolve(), f"{source}: {entries[0].name}") for patient, entries in found.items()]
    else:
        header, rows = read_csv_table(source, "unlabelled scans list")
        if "patient" not in header:
            raise DatasetError(f"{source}: unlabelled scans list needs a 'patient' column (and optionally 'image'); "
                               f"found: {', '.join(h for h in header if h) or 'none'}")
        if not images_dir.is_dir():
            raise DatasetError(f"{images_dir}: images folder does not exist")
        lines: dict[str, int] = {}
        explicit: dict[str, tuple[int, Path]] = {}
        for line, row in rows:
            where = f"{source}: line {line}"
            patient = row["patient"]
            _check_patient_id(patient, where)
            if patient in lines:
                raise DatasetError(f"{where}: patient {patient} is already listed on line {lines[patient]}")
            lines[patient] = line
            if row.get("image"):
                image = Path(row["image"])
                image = image if image.is_absolute() else images_dir / image
                if not image.exists():
                    raise DatasetError(f"{where}: image {row['image']!r} of patient {patient} not found in {images_dir}")
                explicit[patient] = (line, image)
        images = _resolve_images(set(lines), explicit, images_dir, source)
        scans = [UnlabelledScan(patient, images[patient].resolve(), f"{source}: line {line}") for patient, line in lines.items()]
    if not scans:
        raise DatasetError(f"{source}: lists no unlabelled scan")
    return sorted(scans, key=lambda scan: scan.patient)


# --------------------------------------------------------------------------- per-scan cache


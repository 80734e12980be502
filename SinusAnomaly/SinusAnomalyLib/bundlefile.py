"""The model bundle file format, without torch: writing, reading and checking ``*.sabundle`` files.

A bundle is a zip archive of

* ``bundle.json`` — format marker and version, crop geometry and intensity normalisation, the
  reference head's checksum, the decision threshold chosen on validation, the evaluation
  metrics, a training data summary, library versions, and the SHA-256 of every other member;
* ``cae.npz`` — the weights of the CAE that draws the residual heat map, and
  ``classifier_fold<k>.npz`` — each fold's fine-tuned classifier (the prediction is their
  ensemble), as plain numpy arrays keyed by state-dict name.

One CAE, not one per fold: it only draws the heat map, and a CAE pass at 64^3 costs about as
much as a classifier pass, which an ensemble of heat maps would pay on every scan.

With ``half_weights``, convolution and linear weights (float arrays of two or more dimensions)
are stored as float16 when that keeps every value within 0.1 % of the array's largest
magnitude; biases and normalisation parameters and statistics stay float32. It halves the file
(a five-fold paper-sized bundle: 677 MB -> 339 MB) and the time to read it. ``export`` measures
what it does to the probabilities before choosing it (``weights_storage`` in the manifest).
Arrays are read as stored; :mod:`SinusAnomalyLib.bundle` widens them to float32.

Arrays are read with ``numpy.load(allow_pickle=False)``: nothing is ever unpickled, so a bundle
cannot run code. A file that is not a bundle, is truncated or corrupt (zip CRC or member
checksum), needs another version of this library, or was made with another reference head is
refused with a :class:`BundleError` naming the file.

This module needs only numpy: the Slicer module reads bundle descriptions before torch is
installed, and ``classify`` reads and checks the file while torch is still being imported.
:mod:`SinusAnomalyLib.bundle` turns the arrays into networks.
"""
from __future__ import annotations

import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BundleError
from .fileio import atomic_path
from .modelstore import resolve_bundle

BUNDLE_FORMAT = "sinus-anomaly-bundle"
BUNDLE_VERSION = 2  # 1: one CAE per fold (development versions before 0.2)
MANIFEST = "bundle.json"
CAE_MEMBER = "cae.npz"

Arrays = dict  # state-dict name -> numpy array


def classifier_member(fold_index: int) -> str:
    return f"classifier_fold{fold_index}.npz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


HALF_TOLERANCE = 1e-3  # relative to the array's largest magnitude


def _storage(array: np.ndarray) -> np.ndarray:
    """The array as stored: float16 for weights (see the module docstring), otherwise as is."""
    if array.dtype != np.float32 or array.ndim < 2 or array.size == 0:
        return array
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    scale = float(np.abs(array).max())
    if not np.isfinite(half).all() or float(np.abs(half.astype(np.float32) - array).max()) > HALF_TOLERANCE * scale:
        return array
    return half


def as_half_stored(arrays: Arrays) -> Arrays:
    """float32 arrays holding exactly what ``half_weights`` storage will give back on reading."""
    return {key: _storage(np.asarray(value)).astype(np.asarray(value).dtype) for key, value in arrays.items()}


def _to_npz(arrays: Arrays, half_weights: bool) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{key: _storage(np.asarray(value)) if half_weights else np.asarray(value) for key, value in arrays.items()})
    return buf.getvalue()


def _from_npz(data: bytes) -> Arrays:
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:  # each array read into fresh memory
        return {key: archive[key] for key in archive.files}


def write_bundle_file(path: str | Path, meta: dict, cae: Arrays, classifiers: list[Arrays], half_weights: bool) -> Path:
    """Write a bundle atomically. ``meta`` holds everything but the format fields and checksums."""
    if not classifiers:
        raise ValueError("a bundle needs one classifier per fold, at least one")
    members = {CAE_MEMBER: _to_npz(cae, half_weights)}
    for k, arrays in enumerate(classifiers):
        members[classifier_member(k)] = _to_npz(arrays, half_weights)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "n_folds": len(classifiers),
        "members": {name: _sha256(data) for name, data in members.items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
            for name, data in members.items():  # float weights barely compress; stored, they load faster
                archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return path


@dataclass
class BundleFile:
    """A bundle read and checked: its manifest and every member's arrays."""

    path: Path
    meta: dict
    cae: Arrays
    classifiers: list  # of Arrays, one per fold


def _manifest(path: Path, archive: zipfile.ZipFile, expected_reference_sha256: str | None) -> dict:
    if MANIFEST not in archive.namelist():
        raise BundleError(path, f"is not a SinusAnomaly model bundle (no {MANIFEST} inside)")
    try:
        meta = json.loads(archive.read(MANIFEST))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"has an unreadable {MANIFEST} ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(path, f"is not a SinusAnomaly model bundle ({MANIFEST} has no '{BUNDLE_FORMAT}' marker)")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > BUNDLE_VERSION:
        raise BundleError(path, f"needs a newer SinusAnomaly: bundle format {version}, this version "
                                f"({__version__}) reads up to {BUNDLE_VERSION}")
    if version < BUNDLE_VERSION:
        raise BundleError(path, f"has the old bundle format {version} of a development version; "
                                "export it again from its run folder with 'sinus-anomaly export'")
    if expected_reference_sha256 is not None and meta.get("reference_sha256") != expected_reference_sha256:
        raise BundleError(path, "was made with a different reference head than this installation's; "
                                "its crops would not match (retrain or update SinusAnomaly)")
    return meta


def _open(path: str | Path) -> tuple[Path, zipfile.ZipFile]:
    path = resolve_bundle(path)
    if path.is_dir():
        raise BundleError(path, "is a folder; a model bundle is a single .sabundle file")
    if not zipfile.is_zipfile(path):
        raise BundleError(path, "is not a SinusAnomaly model bundle (not a zip archive, or truncated)")
    try:
        return path, zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(path, f"is corrupt or truncated ({exc})") from exc


def read_bundle_meta(path: str | Path, expected_reference_sha256: str | None = None) -> dict:
    """Only the checked manifest (no weights read): to describe a bundle cheaply."""
    path, archive = _open(path)
    try:
        with archive:
            return _manifest(path, archive, expected_reference_sha256)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BundleError(path, f"is corrupt or truncated ({exc})") from exc


def read_bundle_file(path: str | Path, expected_reference_sha256: str | None = None) -> BundleFile:
    """Read and check a whole bundle; see the module docstring for what is refused."""
    path, archive = _open(path)
    try:
        with archive:
            meta = _manifest(path, archive, expected_reference_sha256)
            checksums = meta.get("members") or {}
            names = set(archive.namelist())
            n_folds = meta.get("n_folds")
            if not isinstance(n_folds, int) or n_folds < 1:
                raise BundleError(path, f"holds no classifier ({MANIFEST} gives n_folds = {n_folds!r})")
            arrays = {}
            for name in [CAE_MEMBER] + [classifier_member(k) for k in range(n_folds)]:
                if name not in names or name not in checksums:
                    raise BundleError(path, f"is incomplete: member {name} is missing")
                blob = archive.read(name)
                if _sha256(blob) != checksums[name]:
                    raise BundleError(path, f"is corrupt: checksum of {name} does not match")
                try:
                    arrays[name] = _from_npz(blob)
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:  # object arrays need pickle: refused
                    raise BundleError(path, f"{name} is not a plain array archive ({exc})") from exc
                del blob
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BundleError(path, f"is corrupt or truncated ({exc})") from exc
    return BundleFile(path=path, meta=meta, cae=arrays.pop(CAE_MEMBER),
                      classifiers=[arrays.pop(classifier_member(k)) for k in range(n_folds)])


def describe_bundle(meta: dict) -> str:
    """A few plain lines on what a bundle is: for tooltips, logs and the command line."""
    crop = meta.get("crop", {})
    fraction = meta.get("fraction", "?")
    fraction = f"{fraction:g}" if isinstance(fraction, (int, float)) else fraction
    lines = [f"{meta.get('name', '?')}: {meta.get('method', '?')} pretraining, {fraction} % labels, "
             f"{meta.get('n_folds', '?')} fold(s), {crop.get('model_crop_size', '?')}^3 network input"]
    metrics = meta.get("metrics") or {}
    scores = [f"{name.upper()} {m['mean']:.2f}" + (f" ({m['low']:.2f}-{m['high']:.2f})" if "low" in m and "high" in m else "")
              for name, m in metrics.items() if name in ("auroc", "auprc") and isinstance(m, dict) and "mean" in m]
    if scores:
        lines.append("test " + ", ".join(scores) + " (on its own data: no guarantee for yours)")
    counts = (meta.get("training_data") or {}).get("counts") or {}
    if counts:
        shown = [f"{counts[k]} {k}" for k in ("patients", "sinuses", "normal", "anomalous") if isinstance(counts.get(k), int)]
        if shown:
            lines.append("data set: " + ", ".join(shown))
    if meta.get("intended_use"):
        lines.append(f"intended use: {meta['intended_use']}")
    versions = meta.get("versions") or {}
    lines.append(f"created {meta.get('created', '?')} with SinusAnomaly {versions.get('sinus_anomaly', '?')}")
    return "\n".join(lines)

"""The model bundle file format, without torch: writing, reading and checking ``*.sabundle`` files.

A bundle is a zip archive of

* ``bundle.json`` — format marker and version, crop geometry and intensity normalisation, the
  networks' shapes (``models``: CAE channels and latent size, encoder widths, the classifier's
  shortcut type, "B" when absent), the reference head's checksum, the decision threshold chosen on validation, the evaluation
  metrics, a training data summary, library versions, and the SHA-256 of every other member;
* ``bundle.json.sha256`` — the SHA-256 of ``bundle.json`` (``sha256sum`` format). Through the
  member checksums inside ``bundle.json`` this one digest covers every byte of every member:
  it is the bundle's **fingerprint** (recorded in each ``result.json``);
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

Reading checks, and refuses with a :class:`BundleError` naming the file and the member or key:

* not a zip archive, truncated, zip CRC errors; a member other than those listed above, or twice;
* ``bundle.json`` changed after export (its digest), a member changed (its checksum);
* ``bundle.json`` against :func:`check_manifest`: every required key, its type and range
  (thresholds strictly between 0 and 1, the fold count matching the members, ...);
* another format version, another reference head;
* a member declaring more than :data:`MAX_MEMBER_BYTES` (``bundle.json``: :data:`MAX_MANIFEST_BYTES`)
  uncompressed, checked before reading, and members are hashed as they stream in;
* arrays that would need unpickling (``numpy.load(allow_pickle=False)``: a bundle cannot run
  code), and any NaN or infinite weight (a diverged training run).

These checks catch corruption and accidental edits. They are not a signature: anyone can build
a consistent bundle with other weights, so take bundles only from people you trust.

This module needs only numpy: the Slicer module reads bundle descriptions before torch is
installed, and ``classify`` reads and checks the file while torch is still being imported.
:mod:`SinusAnomalyLib.bundle` turns the arrays into networks.
"""
from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .errors import BundleError
from .fileio import atomic_path, json_text
from .modelstore import resolve_bundle
from .numberformat import is_finite_number

BUNDLE_FORMAT = "sinus-anomaly-bundle"
BUNDLE_VERSION = 3  # 1: one CAE per fold (development versions before 0.2); 2: bundle.json not digested
MANIFEST = "bundle.json"
MANIFEST_DIGEST = "bundle.json.sha256"
CAE_MEMBER = "cae.npz"
MAX_MANIFEST_BYTES = 1 << 20
MAX_MEMBER_BYTES = 1 << 30  # a paper-sized classifier is 133 MB in float32
MAX_FOLDS = 20
CROP_SIZE_VOXELS = 64  # the crops of SinusAnomalyLib.extraction
_CHUNK = 1 << 20

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


def non_finite(arrays: Arrays) -> list[tuple[str, int]]:
    """(name, count) of every floating-point array holding NaN or infinite values."""
    found = []
    for key, value in arrays.items():
        value = np.asarray(value)
        if np.issubdtype(value.dtype, np.inexact):
            bad = int(value.size - np.count_nonzero(np.isfinite(value)))
            if bad:
                found.append((key, bad))
    return found


def _describe_non_finite(found: list[tuple[str, int]]) -> str:
    shown = ", ".join(f"'{key}' ({n} values)" for key, n in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    return f"holds NaN or infinite weights in {shown}: the training run diverged"


def _to_npz(arrays: Arrays, half_weights: bool) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{key: _storage(np.asarray(value)) if half_weights else np.asarray(value) for key, value in arrays.items()})
    return buf.getvalue()


# --------------------------------------------------------------------------- bundle.json schema

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_sha256(value) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _positive_ints(value, length: int | None = None) -> bool:
    return (isinstance(value, list) and len(value) > 0 and all(_is_int(v) and v > 0 for v in value)
            and (length is None or len(value) == length))


def _get(meta: dict, key: str):
    """``meta["a"]["b"]`` for key ``"a.b"``; KeyError naming the first missing level."""
    value = meta
    for i, part in enumerate(key.split(".")):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(".".join(key.split(".")[: i + 1]))
        value = value[part]
    return value


# key -> (test, what it must be); every key is required unless listed in _OPTIONAL
_SCHEMA = {
    "name": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "method": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "fraction": (lambda v: is_finite_number(v) and 0 <= v <= 100, "a number from 0 to 100 (% of labels)"),
    "created": (lambda v: isinstance(v, str), "a string (date of export)"),
    "threshold": (lambda v: is_finite_number(v) and 0 < v < 1, "a number strictly between 0 and 1"),
    "residual_threshold": (lambda v: is_finite_number(v) and 0 < v < 1, "a number strictly between 0 and 1"),
    "crop.size_voxels": (lambda v: v == CROP_SIZE_VOXELS and _is_int(v), f"{CROP_SIZE_VOXELS} (the crops' size)"),
    "crop.spacing_mm": (lambda v: is_finite_number(v) and v > 0, "a positive number"),
    "crop.model_crop_size": (lambda v: _is_int(v) and 8 <= v <= 256, "a whole number from 8 to 256"),
    "residuals.median_kernel": (lambda v: _is_int(v) and v >= 1 and v % 2 == 1, "an odd whole number >= 1"),
    "residuals.percentiles": (lambda v: isinstance(v, list) and len(v) == 2 and all(is_finite_number(x) for x in v)
                              and 0 <= v[0] < v[1] <= 100, "two percentiles [low, high] with 0 <= low < high <= 100"),
    "models.cae.channels": (_positive_ints, "a list of positive whole numbers"),
    "models.cae.latent_dim": (lambda v: _is_int(v) and v > 0, "a positive whole number"),
    "models.cae.crop_size": (lambda v: _is_int(v) and 8 <= v <= 256, "a whole number from 8 to 256"),
    "models.encoder_widths": (lambda v: _positive_ints(v, 4), "a list of four positive whole numbers"),
    "models.shortcut_type": (lambda v: v in ("A", "B"), '"A" or "B" (the classifier encoder\'s shortcuts)'),
    "reference_sha256": (_is_sha256, "a SHA-256 in hexadecimal"),
    "n_folds": (lambda v: _is_int(v) and 1 <= v <= MAX_FOLDS, f"a whole number from 1 to {MAX_FOLDS}"),
    "members": (lambda v: isinstance(v, dict) and all(_is_sha256(h) for h in v.values()),
                "a table of member names and SHA-256 checksums"),
    "folds": (lambda v: isinstance(v, list) and all(_is_int(x) and x >= 0 for x in v), "a list of fold numbers"),
    "fold_thresholds": (lambda v: isinstance(v, list) and all(is_finite_number(x) and 0 < x < 1 for x in v),
                        "a list of numbers strictly between 0 and 1"),
    "weights_storage": (lambda v: isinstance(v, dict) and isinstance(v.get("half_weights"), bool),
                        "a table with a true/false 'half_weights'"),
    "intended_use": (lambda v: isinstance(v, str), "a string"),
    "metrics": (lambda v: isinstance(v, dict), "a table"),
    "training_data": (lambda v: isinstance(v, dict), "a table"),
    "versions": (lambda v: isinstance(v, dict), "a table"),
}
_OPTIONAL = {"folds", "fold_thresholds", "weights_storage", "intended_use", "metrics", "training_data", "versions",
             "models.shortcut_type",  # absent in bundles exported before MedicalNet runs could be: "B"
             "models.cae.crop_size"}  # absent in bundles whose CAE sees the classifiers' crop.model_crop_size


def check_manifest(path: str | Path, meta: dict) -> None:
    """Check the content of ``bundle.json`` (after its format and version); :class:`BundleError`
    naming the key and what it must be. See the module docstring."""
    for key, (test, expected) in _SCHEMA.items():
        try:
            value = _get(meta, key)
        except KeyError as missing:
            if key in _OPTIONAL:
                continue
            raise BundleError(path, f"{MANIFEST} lacks the required key '{missing.args[0]}'") from None
        if not test(value):
            raise BundleError(path, f"{MANIFEST}: '{key}' must be {expected}, not {json.dumps(value)[:80]}")
    n_folds = meta["n_folds"]
    expected = {CAE_MEMBER} | {classifier_member(k) for k in range(n_folds)}
    if set(meta["members"]) != expected:
        raise BundleError(path, f"{MANIFEST}: 'members' lists {', '.join(sorted(meta['members']))} but 'n_folds' = {n_folds} "
                                f"needs {', '.join(sorted(expected))}")
    for key in ("folds", "fold_thresholds"):
        if key in meta and len(meta[key]) != n_folds:
            raise BundleError(path, f"{MANIFEST}: '{key}' has {len(meta[key])} entries but 'n_folds' = {n_folds}")


# --------------------------------------------------------------------------- writing

def write_bundle_file(path: str | Path, meta: dict, cae: Arrays, classifiers: list[Arrays], half_weights: bool) -> Path:
    """Write a bundle atomically. ``meta`` holds everything but the format fields and checksums.

    Refused (:class:`BundleError`): non-finite weights, and a ``meta`` that reading would refuse.
    """
    path = Path(path)
    if not classifiers:
        raise ValueError("a bundle needs one classifier per fold, at least one")
    for name, arrays in [(CAE_MEMBER, cae)] + [(classifier_member(k), a) for k, a in enumerate(classifiers)]:
        found = non_finite(arrays)
        if found:
            raise BundleError(path, f"not written: {name} {_describe_non_finite(found)}")
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
    check_manifest(path, manifest)
    manifest_bytes = json_text(manifest).encode("utf-8")
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr(MANIFEST, manifest_bytes, compress_type=zipfile.ZIP_DEFLATED)
            archive.writestr(MANIFEST_DIGEST, f"{_sha256(manifest_bytes)}  {MANIFEST}\n")
            for name, data in members.items():  # float weights barely compress; stored, they load faster
                archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return path


# --------------------------------------------------------------------------- reading

@dataclass
class BundleFile:
    """A bundle read and checked: its manifest, fingerprint and every member's arrays."""

    path: Path
    meta: dict
    cae: Arrays
    classifiers: list  # of Arrays, one per fold
    fingerprint: str = ""  # SHA-256 of bundle.json, which holds every other member's SHA-256


def _check_declared_size(path: Path, info: zipfile.ZipInfo, limit: int) -> None:
    if info.file_size > limit:
        raise BundleError(path, f"member {info.filename} declares {info.file_size} bytes uncompressed, more than the "
                                f"{limit} a bundle member may have (corrupt or not a bundle)")


def _read_member(path: Path, archive: zipfile.ZipFile, name: str, limit: int) -> tuple[bytes, str]:
    """A member's bytes and SHA-256, streamed; its declared size is checked against ``limit`` first."""
    info = archive.getinfo(name)
    _check_declared_size(path, info, limit)
    digest = hashlib.sha256()
    chunks, size = [], 0
    with archive.open(info) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            chunks.append(chunk)
            size += len(chunk)
            if size > info.file_size:  # zipfile stops at the declared size; never trust it alone
                raise BundleError(path, f"member {name} holds more bytes than it declares (corrupt)")
    return b"".join(chunks), digest.hexdigest()


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _manifest(path: Path, archive: zipfile.ZipFile, expected_reference_sha256: str | None) -> tuple[dict, str]:
    """The checked manifest and the bundle's fingerprint."""
    names = archive.namelist()
    if MANIFEST not in names:
        raise BundleError(path, f"is not a SinusAnomaly model bundle (no {MANIFEST} inside)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:  # zip readers disagree on which copy counts
        raise BundleError(path, f"is corrupt or was edited: member(s) {', '.join(repeated)} appear more than once")
    blob, fingerprint = _read_member(path, archive, MANIFEST, MAX_MANIFEST_BYTES)
    try:
        meta = json.loads(blob, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(path, f"has an unreadable {MANIFEST} ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise BundleError(path, f"is not a SinusAnomaly model bundle ({MANIFEST} has no '{BUNDLE_FORMAT}' marker)")
    version = meta.get("format_version")
    if not _is_int(version) or version > BUNDLE_VERSION:
        raise BundleError(path, f"needs a newer SinusAnomaly: bundle format {version}, this version "
                                f"({__version__}) reads up to {BUNDLE_VERSION}")
    if version < BUNDLE_VERSION:
        raise BundleError(path, f"has the old bundle format {version} of an earlier version; "
                                "export it again from its run folder with 'sinus-anomaly export'")
    if MANIFEST_DIGEST not in names:
        raise BundleError(path, f"is incomplete: member {MANIFEST_DIGEST} is missing")
    recorded, _ = _read_member(path, archive, MANIFEST_DIGEST, 1024)
    if recorded.decode("ascii", "replace").split()[:1] != [fingerprint]:
        raise BundleError(path, f"is corrupt or was edited: {MANIFEST} does not match its checksum in {MANIFEST_DIGEST}")
    check_manifest(path, meta)
    expected = {MANIFEST, MANIFEST_DIGEST, *meta["members"]}
    unexpected = sorted(set(names) - expected)
    if unexpected:
        raise BundleError(path, f"holds unexpected member(s) {', '.join(unexpected)}")
    for name in sorted(set(names) & set(meta["members"])):  # declared sizes: known before any weight is read
        _check_declared_size(path, archive.getinfo(name), MAX_MEMBER_BYTES)
    if expected_reference_sha256 is not None and meta["reference_sha256"] != expected_reference_sha256:
        raise BundleError(path, "was made with a different reference head than this installation's; "
                                "its crops would not match (retrain or update SinusAnomaly)")
    return meta, fingerprint


def _from_npz(path: Path, name: str, data: bytes) -> Arrays:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:  # each array read into fresh memory
            declared = sum(info.file_size for info in archive.zip.infolist())
            if declared > MAX_MEMBER_BYTES:
                raise BundleError(path, f"{name} declares {declared} bytes of arrays, more than a bundle member may hold")
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # object arrays need pickle: refused
        raise BundleError(path, f"{name} is not a plain array archive ({exc})") from exc
    found = non_finite(arrays)
    if found:
        raise BundleError(path, f"{name} {_describe_non_finite(found)}")
    return arrays


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


def read_bundle_manifest(path: str | Path, expected_reference_sha256: str | None = None) -> tuple[dict, str]:
    """The checked manifest and the fingerprint, without reading weights (fast: for descriptions
    and for failing early)."""
    path, archive = _open(path)
    try:
        with archive:
            return _manifest(path, archive, expected_reference_sha256)
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BundleError(path, f"is corrupt or truncated ({exc})") from exc


def read_bundle_meta(path: str | Path, expected_reference_sha256: str | None = None) -> dict:
    """Only the checked manifest (no weights read): to describe a bundle cheaply."""
    return read_bundle_manifest(path, expected_reference_sha256)[0]


def read_bundle_file(path: str | Path, expected_reference_sha256: str | None = None) -> BundleFile:
    """Read and check a whole bundle; see the module docstring for what is refused."""
    path, archive = _open(path)
    try:
        with archive:
            meta, fingerprint = _manifest(path, archive, expected_reference_sha256)
            checksums = meta["members"]
            names = set(archive.namelist())
            n_folds = meta["n_folds"]
            arrays = {}
            for name in [CAE_MEMBER] + [classifier_member(k) for k in range(n_folds)]:
                if name not in names:
                    raise BundleError(path, f"is incomplete: member {name} is missing")
                blob, digest = _read_member(path, archive, name, MAX_MEMBER_BYTES)
                if digest != checksums[name]:
                    raise BundleError(path, f"is corrupt: checksum of {name} does not match")
                arrays[name] = _from_npz(path, name, blob)
                del blob
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BundleError(path, f"is corrupt or truncated ({exc})") from exc
    return BundleFile(path=path, meta=meta, cae=arrays.pop(CAE_MEMBER),
                      classifiers=[arrays.pop(classifier_member(k)) for k in range(n_folds)], fingerprint=fingerprint)


def describe_bundle(meta: dict) -> str:
    """A few plain lines on what a bundle is: for tooltips, logs and the command line."""
    crop = meta.get("crop", {})
    fraction = meta.get("fraction", "?")
    fraction = f"{fraction:g}" if isinstance(fraction, (int, float)) else fraction
    lines = [f"{meta.get('name', '?')}: {meta.get('method', '?')} pretraining, {fraction} % labels, "
             f"{meta.get('n_folds', '?')} fold(s), {crop.get('model_crop_size', '?')}^3 network input"
             + (f" ({cae_size}^3 for the heat map)" if (cae_size := (meta.get("models") or {}).get("cae", {}).get("crop_size"))
                not in (None, crop.get("model_crop_size")) else "")]
    metrics = meta.get("metrics") or {}
    scores = [f"{name.upper()} {m['mean']:.2f}" + (f" ({m['low']:.2f}-{m['high']:.2f})" if is_finite_number(m.get("low"))
                                                     and is_finite_number(m.get("high")) else "")
              for name, m in metrics.items() if name in ("auroc", "auprc") and isinstance(m, dict) and is_finite_number(m.get("mean"))]
    if scores:
        lines.append("test " + ", ".join(scores) + " (on its own data: no guarantee for yours)")
    counts = (meta.get("training_data") or {}).get("counts") or {}
    if counts:
        shown = [f"{counts[k]} {k}" for k in ("patients", "sinuses", "normal", "anomalous") if isinstance(counts.get(k), int)]
        if shown:
            lines.append("data set: " + ", ".join(shown))
    test = ((meta.get("label_validation") or {}).get("test")) or {}
    if is_finite_number(test.get("median_dice")) and is_finite_number(test.get("within_tolerance")):
        shown = "mL" if meta["label_validation"].get("volume_shown_as") == "mL" else "a coarse region"
        lines.append(f"label map: median Dice {test['median_dice']:.2f}, volume within ±50 % for {test['within_tolerance']:.0%} "
                     f"of {test.get('n_lesions')} test lesions (shown as {shown})")
    if meta.get("intended_use"):
        lines.append(f"intended use: {meta['intended_use']}")
    versions = meta.get("versions") or {}
    lines.append(f"created {meta.get('created', '?')} with SinusAnomaly {versions.get('sinus_anomaly', '?')}")
    return "\n".join(lines)

"""What the module shows of a ``classify`` result and of a bundle, as plain data and text.

Plain Python and numpy (no slicer, vtk or Qt): reads ``result.json`` of format versions 1 and 2
(:mod:`SinusAnomalyLib.resultformat`), turns it into the rows of the results table, log lines,
the bundle's short fingerprint and the crop boxes; describes bundles for the selector's tooltips.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from SinusAnomalyLib.bundlefile import describe_bundle, read_bundle_manifest
from SinusAnomalyLib.errors import BundleError, ResultError
from SinusAnomalyLib.numberformat import format_number, is_finite_number
from SinusAnomalyLib.resultformat import (
    CROP_SIZE,
    RESULT_FILE,
    RESULT_FORMAT,
    RESULT_VERSION,
    SIDES,
    VERDICT_ANOMALOUS,
    VERDICT_NOT_ASSESSABLE,
    VERDICTS,
)

SIDE_TITLES = {"left": "Left", "right": "Right"}
TABLE_COLUMNS = ("Side", "Verdict", "Probability", "Spread", "Coverage (%)", "Volume (mL)")
COLUMN_DESCRIPTIONS = {
    "Side": "Maxillary sinus (patient side)",
    "Verdict": "anomalous when the probability reaches the bundle's threshold; not assessable when the scan "
               "shows too little of the sinus",
    "Probability": "Probability of an anomaly: mean over the bundle's folds (empty when not assessable)",
    "Spread": "Standard deviation of the fold probabilities: a large spread means the folds disagree",
    "Coverage (%)": "Share of the sinus that the scan shows (empty for results of format version 1)",
    "Volume (mL)": "Volume marked anomalous in the label map, only where the bundle validated it against true lesion "
                   "volumes; empty where the label map is a coarse region (see the log)",
}
FINGERPRINT_SHORT = 12  # hex digits shown of the bundle's fingerprint (SHA-256 of its bundle.json)


def read_result(result_dir: str | Path) -> dict:
    """``result.json`` of a classify output folder (format version 1 or 2), checked."""
    path = Path(result_dir) / RESULT_FILE
    if not path.is_file():
        raise ResultError(f"{path}: no result file (did classify finish?)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise ResultError(f"{path}: not a SinusAnomaly result (no '{RESULT_FORMAT}' format marker)")
    version = result.get("version")
    if not isinstance(version, int) or not 1 <= version <= RESULT_VERSION:
        raise ResultError(f"{path}: result version {version!r}; this module reads versions 1 to {RESULT_VERSION}"
                          " (update the SinusAnomaly extension for newer results)")
    sides = result.get("sides")
    if not isinstance(sides, dict) or any(not isinstance(sides.get(side), dict) for side in SIDES):
        raise ResultError(f"{path}: needs results for both sides ({', '.join(SIDES)})")
    for side in SIDES:
        entry = sides[side]
        if entry.get("verdict") not in VERDICTS:
            raise ResultError(f"{path}: side '{side}' has verdict {entry.get('verdict')!r}, not one of {', '.join(VERDICTS)}")
        if is_assessable(entry) and not is_finite_number(entry.get("probability")):
            raise ResultError(f"{path}: side '{side}' has no probability")
        if version >= 2 and not is_finite_number(entry.get("coverage")):
            raise ResultError(f"{path}: side '{side}' has no coverage (required from version 2)")
    warnings = result.get("warnings", [])
    if not isinstance(warnings, list):
        raise ResultError(f"{path}: 'warnings' is not a list")
    return result


def is_assessable(entry: dict) -> bool:
    """Version 2 says so; a version 1 side always had a probability."""
    return entry.get("verdict") != VERDICT_NOT_ASSESSABLE and entry.get("assessable", True) is not False


def result_rows(result: dict) -> list[tuple[str, ...]]:
    """The results table as text, one row per side in :data:`TABLE_COLUMNS` order.

    Numbers of a side that is not assessable are empty: there is no probability to show.
    """
    rows = []
    for side in SIDES:
        entry = result["sides"][side]
        assessable = is_assessable(entry)
        coverage = entry.get("coverage")
        rows.append((
            SIDE_TITLES[side],
            str(entry["verdict"]),
            format_number(entry.get("probability"), 3, missing="") if assessable else "",
            format_number(entry.get("spread"), 3, missing="") if assessable else "",
            format_number(100.0 * coverage, 0, missing="") if is_finite_number(coverage) else "",
            format_number(entry.get("anomalous_volume_ml"), 2, missing="") if assessable else "",
        ))
    return rows


def warnings_of(result: dict) -> list[str]:
    return [str(w) for w in result.get("warnings") or []]


def short_fingerprint(result: dict) -> str:
    """The first hex digits of the bundle's fingerprint (format 2), or "" when the result has none."""
    fingerprint = str((result.get("model") or {}).get("fingerprint") or "")
    return fingerprint[:FINGERPRINT_SHORT]


def model_line(result: dict) -> str:
    """``Model: <name> (fingerprint <short>)`` for the results panel."""
    model = result.get("model") or {}
    name = model.get("name") or (Path(str(model["path"])).name if model.get("path") else "unknown")
    fingerprint = short_fingerprint(result)
    return f"{name} (fingerprint {fingerprint})" if fingerprint else f"{name} (no fingerprint: result format 1)"


def _volume_text(entry: dict) -> str:
    """The label's volume in mL where the result gives one; where it does not, an anomalous side's
    label is a coarse region (results before the label was validated always gave a number)."""
    if is_finite_number(entry.get("anomalous_volume_ml")):
        return f", anomalous volume {float(entry['anomalous_volume_ml']):.2f} mL"
    return ", anomalous region marked (coarse, not a volume)" if entry.get("verdict") == VERDICT_ANOMALOUS else ""


def summary_lines(result: dict) -> list[str]:
    """What the module's log shows after a run: one line per side, the model, every warning."""
    lines = []
    for side in SIDES:
        entry = result["sides"][side]
        coverage = entry.get("coverage")
        shown = f", the scan shows {100.0 * coverage:.0f} % of the sinus" if is_finite_number(coverage) else ""
        if is_assessable(entry):
            lines.append(f"{SIDE_TITLES[side]}: {entry['verdict']}, probability {float(entry['probability']):.3f}"
                         f" (spread {float(entry.get('spread') or 0.0):.3f}){_volume_text(entry)}{shown}"
                         + ("; UNLIKE THE TRAINING DATA" if entry.get("out_of_distribution") else ""))
        else:
            lines.append(f"{SIDE_TITLES[side]}: not assessable{shown}; no probability")
    label_map = result.get("label_map") or {}
    if label_map.get("note"):
        lines.append(f"Heat map: scaled on {label_map.get('heatmap_scale')}; label map: {label_map['note']}")
    lines.append(f"Model: {model_line(result)}")
    lines += [f"Warning: {warning}" for warning in warnings_of(result)]
    return lines


def crop_box(entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre RAS mm, rotation 3x3 with det +1, size mm) of one side's crop from result.json.

    The crop affine maps voxel indices to RAS; its columns give the axes and the voxel size. The
    right crop is mirrored along axis 0 (det < 0): that axis is flipped back for a proper rotation,
    which leaves the box itself unchanged.
    """
    affine = entry.get("crop_affine_ras")
    if affine is None:
        center = np.asarray(entry["center_ras_mm"], dtype=float)
        return center, np.eye(3), np.full(3, float(CROP_SIZE))
    affine = np.asarray(affine, dtype=float)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    axes = linear / spacing
    u, _, vt = np.linalg.svd(axes)  # nearest orthonormal matrix (tolerates rounding in the file)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1.0
    center = affine[:3, :3] @ np.full(3, (CROP_SIZE - 1) / 2.0) + affine[:3, 3]
    return center, rotation, spacing * CROP_SIZE


def bundle_tooltip(path: str | Path) -> str:
    """The bundle's path, short fingerprint and description (numpy only: works before torch is
    installed), or why it cannot be used."""
    try:
        meta, fingerprint = read_bundle_manifest(path)
    except BundleError as exc:
        return f"cannot be used: {exc}"
    return f"{path}\nfingerprint {fingerprint[:FINGERPRINT_SHORT]}\n{describe_bundle(meta)}"

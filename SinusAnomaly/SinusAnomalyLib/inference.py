"""Classifying both maxillary sinuses of one head with a model bundle.

For each side that the scan shows well enough (``SinusExtraction.assessable``: enough of the
sinus cavity inside the field of view and holding image content, see
:mod:`SinusAnomalyLib.extraction`): the crop (extraction as in training) is classified by every
fold's classifier; the probability is their mean, ``spread`` their standard deviation, the
verdict compares the mean with the bundle's validation-chosen threshold. A side that is not
assessable gets no probability, no verdict ("not assessable"), no heat map and no label: never a
verdict from an empty crop. The heat map is the bundle CAE's residual map on the bundle's normal
scale (per crop for bundles without one; see :mod:`SinusAnomalyLib.heatmap`), brought back to
1 mm and resampled into the INPUT image's grid; the anomaly label map marks heat-map voxels at or
above the bundle's residual threshold inside that side's sinus (the reference cavity mapped
through the registration, grown by a few millimetres), on sides whose verdict is anomalous:
1 left, 2 right. The anomalous volume is that label's volume in mL only where the bundle's
validation put it within ±50 % of the truth for most test lesions; otherwise it is ``null`` and
the label is a coarse region. Each side's CAE reconstruction error is compared with the bundle's
training range: outside it, a warning.

A NaN or infinite probability or heat map (weights that do not work on this input) is an error,
never a result. The result folder's format is :mod:`SinusAnomalyLib.resultformat`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .bundle import ModelBundle
from .errors import BundleError, ImageError
from .extraction import COVERAGE_WARNING, MIN_COVERAGE, SinusExtraction, crop_affine_ras, extract_sinuses
from .fileio import atomic_folder, write_json_atomic
from .heatmap import (VOLUME_AS_ML, VOLUME_TOLERANCE, cavity_in_crop, normal_scale_of, ood_measure, ood_range_of,
                      raw_residuals, volume_shown_as)
from .imageio import read_image, write_image
from .modelstore import is_default_bundle
from .reference import ReferenceHead, load_reference
from .residuals import resize_crops, scale_per_crop
from .resultformat import (CROP_FILES, CROP_SIZE, HEATMAP_FILE, LABEL_NAMES, LABEL_VALUES, LABELMAP_FILE, RESULT_FILE,
                           RESULT_FILES, RESULT_FORMAT, RESULT_VERSION, SIDES, VERDICT_ANOMALOUS, VERDICT_NORMAL,
                           VERDICT_NOT_ASSESSABLE)


@dataclass
class SideResult:
    coverage: float
    assessable: bool
    probability: float | None
    verdict: str
    threshold: float
    spread: float | None
    fold_probabilities: list
    anomalous_volume_ml: float | None  # None unless assessable and the bundle's volume is validated (heatmap.py)
    reconstruction_error: float | None  # the out-of-distribution measure (heatmap.ood_measure)
    out_of_distribution: bool | None  # None: not assessable, or the bundle has no training range
    center_ras_mm: list
    crop_affine_ras: list

    def to_json(self, crop_file: str) -> dict:
        return {**self.__dict__, "crop_file": crop_file}


@dataclass
class Classification:
    source: str
    extraction: SinusExtraction
    sides: dict  # side -> SideResult
    heatmap: sitk.Image  # float32 on the input grid, [0, 1]
    labelmap: sitk.Image  # uint8 on the input grid: 0, 1 left, 2 right
    seconds: float  # wall time: reading and extraction included when classify() did them
    warnings: list = field(default_factory=list)  # plain sentences: low coverage, sides not assessable


def coverage_warnings(extraction: SinusExtraction) -> list[str]:
    """One sentence per side that is not assessable or only partly in view."""
    out = []
    for side in SIDES:
        coverage = float(extraction.coverage[side])
        if not extraction.assessable(side):
            out.append(f"{side} sinus not assessable: {coverage:.0%} of its cavity is in view with image content "
                       f"(at least {MIN_COVERAGE:.0%} needed); no verdict for this side")
        elif coverage < COVERAGE_WARNING:
            out.append(f"{side} sinus only partly in view: {coverage:.0%} of its cavity (below {COVERAGE_WARNING:.0%}); "
                       "read this side with care")
    return out


def _region_of(image: sitk.Image, grid: sitk.Image) -> tuple[slice, slice, slice]:
    """Index box of ``image`` covering the physical extent of ``grid`` (clipped to the image)."""
    corners = [grid.TransformIndexToPhysicalPoint((i, j, k)) for i in (0, grid.GetSize()[0] - 1)
               for j in (0, grid.GetSize()[1] - 1) for k in (0, grid.GetSize()[2] - 1)]
    idx = np.array([image.TransformPhysicalPointToContinuousIndex(c) for c in corners])
    size = np.asarray(image.GetSize())
    lo = np.clip(np.floor(idx.min(0)).astype(int) - 1, 0, size)
    hi = np.clip(np.ceil(idx.max(0)).astype(int) + 2, 0, size)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def _into_input(values: sitk.Image, image: sitk.Image, interpolator) -> tuple[tuple, np.ndarray]:
    """Resample a crop-space map onto the part of the input grid it covers: (region, array [x, y, z])."""
    region = _region_of(image, values)
    sub = image[region]
    if 0 in sub.GetSize():
        return region, np.zeros([s.stop - s.start for s in region], np.float32)
    out = sitk.Resample(values, sub, sitk.Transform(), interpolator, 0.0, values.GetPixelID())
    return region, sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def _as_crop_image(array_ijk: np.ndarray, like: sitk.Image, pixel=sitk.sitkFloat32) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    image = sitk.Cast(image, pixel)
    image.CopyInformation(like)
    return image


def classify(image: sitk.Image | str | Path, bundle: ModelBundle, device: torch.device | str = "cpu",
             reference: ReferenceHead | None = None, source: str | None = None) -> Classification:
    """Classify both sinuses of one head; see the module docstring."""
    start = time.perf_counter()
    if not isinstance(image, sitk.Image):
        source = source or str(image)
        image = read_image(image)
    source = source or "image"
    reference = reference or load_reference()
    extraction = extract_sinuses(image, reference, source=source)
    result = classify_extraction(image, extraction, bundle, device, reference)
    result.seconds = time.perf_counter() - start
    return result


def _channels_last(bundle: ModelBundle) -> None:
    """Put the bundle's networks in channels-last 3D layout (in place; a no-op the second time).

    On 2 idle CPU cores the networks then took 0.75x (paper size) and 0.82x (demo size) the
    time, outputs equal to 1e-6 (``benchmarks/bench_classify.py`` prints the ratio side by side).
    """
    for net in (*bundle.classifiers, bundle.cae):
        net.to(memory_format=torch.channels_last_3d)


def fold_probabilities(bundle: ModelBundle, batch: torch.Tensor) -> torch.Tensor:
    """(folds, n) each fold classifier's probability of "anomalous" for ``batch`` (n, 1, s, s, s),
    crops already resized to the bundle's ``model_crop_size``; a verdict uses their mean."""
    return torch.stack([torch.softmax(m(batch), dim=1)[:, 1] for m in bundle.classifiers])


def classify_extraction(image: sitk.Image, extraction: SinusExtraction, bundle: ModelBundle,
                        device: torch.device | str = "cpu", reference: ReferenceHead | None = None) -> Classification:
    """:func:`classify` for a head whose sinuses were already extracted (``extract_sinuses(image)``).

    Extraction needs only SimpleITK, so callers can run it in another thread while torch loads
    or while the networks look at the previous scan. Raises :class:`ImageError` when neither side
    is assessable and :class:`BundleError` when the networks give NaN or infinite values.
    """
    start = time.perf_counter()
    device = torch.device(device)
    reference = reference or load_reference()
    source = extraction.source
    assessed = [side for side in SIDES if extraction.assessable(side)]
    if not assessed:
        raise ImageError(source, "neither maxillary sinus is in view enough to assess ("
                         + ", ".join(f"{s} {float(extraction.coverage[s]):.0%}" for s in SIDES) + " of the cavity in view)")
    arrays = extraction.arrays()
    crops = np.stack([arrays[s] for s in assessed])

    def network_input(size: int) -> torch.Tensor:
        return torch.from_numpy(resize_crops(crops, size))[:, None].to(device).contiguous(memory_format=torch.channels_last_3d)

    batch = network_input(bundle.model_crop_size)
    # the CAE sees the classifiers' batch unless its bundle gives it a size of its own
    cae_batch = batch if bundle.cae_crop_size == bundle.model_crop_size else network_input(bundle.cae_crop_size)
    residual_cfg = bundle.meta["residuals"]
    normal_scale, ood_range = normal_scale_of(bundle.meta, bundle.path), ood_range_of(bundle.meta, bundle.path)
    _channels_last(bundle)
    with torch.inference_mode():
        probabilities = fold_probabilities(bundle, batch).cpu().numpy()  # (folds, sides)
        raw = raw_residuals(bundle.cae, cae_batch)
        reconstruction_errors = ood_measure(raw)
        if normal_scale is not None:
            residuals = normal_scale.heat(raw, int(residual_cfg["median_kernel"]))
        else:
            residuals = scale_per_crop(raw, tuple(residual_cfg["percentiles"]), int(residual_cfg["median_kernel"]))
        residuals = F.interpolate(residuals, size=(CROP_SIZE,) * 3, mode="trilinear", align_corners=False)[:, 0].cpu().numpy()
    for i, side in enumerate(assessed):
        if not np.isfinite(probabilities[:, i]).all():
            raise BundleError(bundle.path, f"gave a non-finite probability (NaN or inf) for the {side} sinus of {source}; "
                                           "no result written")
        if not np.isfinite(residuals[i]).all():
            raise BundleError(bundle.path, f"gave a non-finite heat map (NaN or inf) for the {side} sinus of {source}; "
                                           "no result written")
    threshold = bundle.threshold
    residual_threshold = float(bundle.meta["residual_threshold"])
    heat = np.zeros(image.GetSize(), np.float32)
    labels = np.zeros(image.GetSize(), np.uint8)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    volume_in_ml = volume_shown_as(bundle.meta) == VOLUME_AS_ML
    warnings = coverage_warnings(extraction)
    sides = {}
    for side in SIDES:
        crop = extraction.crops[side]
        common = dict(coverage=round(float(extraction.coverage[side]), 4), threshold=round(threshold, 6),
                      center_ras_mm=[round(float(v), 3) for v in extraction.centers_ras[side]],
                      crop_affine_ras=crop_affine_ras(crop).round(6).tolist())
        if side not in assessed:
            sides[side] = SideResult(assessable=False, probability=None, verdict=VERDICT_NOT_ASSESSABLE, spread=None,
                                     fold_probabilities=[], anomalous_volume_ml=None, reconstruction_error=None,
                                     out_of_distribution=None, **common)
            continue
        i = assessed.index(side)
        p = float(probabilities[:, i].mean())
        verdict = VERDICT_ANOMALOUS if p >= threshold else VERDICT_NORMAL
        region, values = _into_input(_as_crop_image(residuals[i], crop), image, sitk.sitkLinear)
        heat[region] = np.maximum(heat[region], values)
        volume = 0.0
        if verdict == VERDICT_ANOMALOUS:
            cavity = cavity_in_crop(reference, side, extraction.side_matrix_lps(side), crop)
            lesion = (residuals[i] >= residual_threshold) & cavity
            region, mask = _into_input(_as_crop_image(lesion.astype(np.uint8), crop, sitk.sitkUInt8), image, sitk.sitkNearestNeighbor)
            target = labels[region]
            target[(mask > 0) & (target == 0)] = LABEL_VALUES[side]
            volume = float((labels == LABEL_VALUES[side]).sum() * voxel_ml)
        error = float(reconstruction_errors[i])
        outside = None if ood_range is None else ood_range.outside(error)
        if outside:
            warnings.append(f"{side} sinus unlike the bundle's training sinuses: its CAE reconstruction error {error:.4f} is "
                            f"outside their range {ood_range.describe()}; read its verdict and heat map with care")
        sides[side] = SideResult(
            assessable=True, probability=round(p, 6), verdict=verdict,
            spread=round(float(probabilities[:, i].std()), 6),
            fold_probabilities=[round(float(v), 6) for v in probabilities[:, i]],
            anomalous_volume_ml=round(volume, 3) if volume_in_ml else None,
            reconstruction_error=round(error, 6), out_of_distribution=outside, **common,
        )
    heatmap = sitk.GetImageFromArray(heat.transpose(2, 1, 0))
    heatmap.CopyInformation(image)
    labelmap = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
    labelmap.CopyInformation(image)
    if normal_scale is None:
        warnings.append("heat map scaled per crop (the bundle has no normal-sinus scale): a normal sinus's strongest "
                        "residuals look as bright as a lesion's")
    if ood_range is None:
        warnings.append("the bundle has no training range: no check that the scan is like its training data")
    if bundle.meta.get("method") == "untrained":
        warnings.append(f"the bundle {bundle.path.name} holds RANDOM weights (tests and timing only): its verdicts mean nothing")
    return Classification(source, extraction, sides, heatmap, labelmap, time.perf_counter() - start, warnings)


def label_map_summary(meta: dict) -> dict:
    """What the heat map's scale and the label map are, and how far the label's volume was validated."""
    validation = meta.get("label_validation") if isinstance(meta.get("label_validation"), dict) else {}
    test = validation.get("test") or {}
    volume = volume_shown_as(meta)
    if volume == VOLUME_AS_ML:
        note = (f"volume in mL: on the bundle's test sinuses within ±{VOLUME_TOLERANCE:.0%} of the true lesion volume for "
                f"{test.get('within_tolerance', 0):.0%} of {test.get('n_lesions')} lesions")
    elif test:
        note = (f"coarse region, not a volume measurement: on the bundle's test sinuses its volume was within "
                f"±{VOLUME_TOLERANCE:.0%} of the true lesion volume for only {test.get('within_tolerance', 0):.0%} of "
                f"{test.get('n_lesions')} lesions")
    else:
        note = "coarse region, not a volume measurement: the bundle's label was never checked against lesion masks"
    return {"heatmap_scale": "normal sinuses" if normal_scale_of(meta) is not None else "per crop",
            "level": float(meta["residual_threshold"]), "volume": volume, "note": note,
            "median_dice_test": test.get("median_dice"), "median_volume_error_test": test.get("median_volume_error")}


def result_summary(result: Classification, bundle: ModelBundle) -> dict:
    """The content of ``result.json`` (:mod:`SinusAnomalyLib.resultformat`)."""
    meta = bundle.meta
    return {
        "format": RESULT_FORMAT,
        "version": RESULT_VERSION,
        "input": result.source,
        "model": {"path": str(bundle.path), "name": meta.get("name", bundle.path.stem), "method": meta.get("method"),
                  "fraction": meta.get("fraction"), "created": meta.get("created"), "fingerprint": bundle.fingerprint,
                  "default": is_default_bundle(bundle.path), "intended_use": meta.get("intended_use")},
        "sides": {side: result.sides[side].to_json(CROP_FILES[side]) for side in SIDES},
        "files": {"heatmap": HEATMAP_FILE, "labelmap": LABELMAP_FILE},
        "label_map": label_map_summary(meta),
        "labels": {str(value): name for value, name in LABEL_NAMES.items()},
        "registration": result.extraction.registration.summary(),
        "warnings": list(result.warnings),
        "seconds": round(result.seconds, 3),
    }


def save_classification(result: Classification, bundle: ModelBundle, out_dir: str | Path) -> Path:
    """Write the result folder whole or not at all: ``result.json``, ``heatmap.nii.gz``,
    ``labelmap.nii.gz`` and both crops go into a temporary folder beside ``out_dir``, which then
    replaces ``out_dir`` (see :func:`fileio.atomic_folder`; an existing ``out_dir`` may hold only
    an earlier result). An interruption leaves the earlier result, if any, untouched.
    """
    out_dir = Path(out_dir)
    summary = result_summary(result, bundle)  # strict JSON is checked before anything is written
    with atomic_folder(out_dir, RESULT_FILES) as tmp:
        write_image(result.heatmap, tmp / HEATMAP_FILE)
        write_image(result.labelmap, tmp / LABELMAP_FILE)
        for side in SIDES:
            write_image(result.extraction.crops[side], tmp / CROP_FILES[side])
        write_json_atomic(tmp / RESULT_FILE, summary)
    return out_dir / RESULT_FILE

"""Classifying both maxillary sinuses of one head with a model bundle.

For each side: the crop (extraction as in training) is classified by every fold's classifier;
the probability is their mean, ``spread`` their standard deviation, the verdict compares the mean
with the bundle's validation-chosen threshold. The heat map is the bundle CAE's residual map (as in
training), brought back to 1 mm and resampled into the INPUT image's grid; the anomaly label map marks
heat-map voxels at or above the bundle's residual threshold inside that side's sinus (the
reference cavity mapped through the registration, grown by a few millimetres), on sides whose
verdict is anomalous: 1 left, 2 right. The anomalous volume is that label's volume in mL.
"""
from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .bundle import ModelBundle
from .extraction import CROP_SIZE, SinusExtraction, crop_affine_ras, extract_sinuses
from .fileio import write_json_atomic
from .imageio import read_image, write_image
from .reference import SIDES, ReferenceHead, load_reference
from .residuals import residual_maps, resize_crops

SIDE_LABELS = {"left": 1, "right": 2}
LABEL_NAMES = {"1": "left maxillary sinus anomaly", "2": "right maxillary sinus anomaly"}
CAVITY_MARGIN_MM = 4.0


@dataclass
class SideResult:
    probability: float
    verdict: str
    threshold: float
    spread: float
    fold_probabilities: list
    anomalous_volume_ml: float
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


@functools.lru_cache(maxsize=4)
def _grown_cavity(reference: ReferenceHead, side: str) -> sitk.Image:
    """The side's reference cavity grown by the margin; the same for every scan, so made once."""
    radius = [int(round(CAVITY_MARGIN_MM / s)) for s in reference.sinus_labels.GetSpacing()]
    return sitk.BinaryDilate(reference.sinus_labels == SIDE_LABELS[side], radius)


def _cavity_in_crop(reference: ReferenceHead, extraction: SinusExtraction, side: str) -> np.ndarray:
    """Boolean (64, 64, 64) [i, j, k] mask of the side's reference cavity (grown) in crop space."""
    grown = _grown_cavity(reference, side)
    to_reference = sitk.AffineTransform(3)
    inverse = np.linalg.inv(extraction.registration.matrix_lps)  # input -> reference
    to_reference.SetMatrix(inverse[:3, :3].ravel().tolist())
    to_reference.SetTranslation(inverse[:3, 3].tolist())
    mask = sitk.Resample(grown, extraction.crops[side], to_reference, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(mask).transpose(2, 1, 0) > 0


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


def classify_extraction(image: sitk.Image, extraction: SinusExtraction, bundle: ModelBundle,
                        device: torch.device | str = "cpu", reference: ReferenceHead | None = None) -> Classification:
    """:func:`classify` for a head whose sinuses were already extracted (``extract_sinuses(image)``).

    Extraction needs only SimpleITK, so callers can run it in another thread while torch loads
    or while the networks look at the previous scan.
    """
    start = time.perf_counter()
    device = torch.device(device)
    reference = reference or load_reference()
    source = extraction.source
    arrays = extraction.arrays()
    size = bundle.model_crop_size
    batch = torch.from_numpy(resize_crops(np.stack([arrays[s] for s in SIDES]), size))[:, None].to(device)
    residual_cfg = bundle.meta.get("residuals", {})
    with torch.inference_mode():
        probabilities = torch.stack([torch.softmax(m(batch), dim=1)[:, 1] for m in bundle.classifiers]).cpu().numpy()  # (folds, 2)
        residuals = residual_maps(bundle.cae, batch, tuple(residual_cfg.get("percentiles", (1, 99))),
                                  int(residual_cfg.get("median_kernel", 5)))
        residuals = F.interpolate(residuals, size=(CROP_SIZE,) * 3, mode="trilinear", align_corners=False)[:, 0].cpu().numpy()
    threshold = bundle.threshold
    residual_threshold = float(bundle.meta.get("residual_threshold", 0.5))
    heat = np.zeros(image.GetSize(), np.float32)
    labels = np.zeros(image.GetSize(), np.uint8)
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    sides = {}
    for i, side in enumerate(SIDES):
        p = float(probabilities[:, i].mean())
        verdict = "anomalous" if p >= threshold else "normal"
        crop = extraction.crops[side]
        region, values = _into_input(_as_crop_image(residuals[i], crop), image, sitk.sitkLinear)
        heat[region] = np.maximum(heat[region], values)
        volume = 0.0
        if verdict == "anomalous":
            lesion = (residuals[i] >= residual_threshold) & _cavity_in_crop(reference, extraction, side)
            region, mask = _into_input(_as_crop_image(lesion.astype(np.uint8), crop, sitk.sitkUInt8), image, sitk.sitkNearestNeighbor)
            target = labels[region]
            target[(mask > 0) & (target == 0)] = SIDE_LABELS[side]
            volume = float((labels == SIDE_LABELS[side]).sum() * voxel_ml)
        sides[side] = SideResult(
            probability=round(p, 6), verdict=verdict, threshold=round(threshold, 6),
            spread=round(float(probabilities[:, i].std()), 6),
            fold_probabilities=[round(float(v), 6) for v in probabilities[:, i]],
            anomalous_volume_ml=round(volume, 3),
            center_ras_mm=[round(float(v), 3) for v in extraction.centers_ras[side]],
            crop_affine_ras=crop_affine_ras(crop).round(6).tolist(),
        )
    heatmap = sitk.GetImageFromArray(heat.transpose(2, 1, 0))
    heatmap.CopyInformation(image)
    labelmap = sitk.GetImageFromArray(labels.transpose(2, 1, 0))
    labelmap.CopyInformation(image)
    return Classification(source, extraction, sides, heatmap, labelmap, time.perf_counter() - start)


def save_classification(result: Classification, bundle: ModelBundle, out_dir: str | Path) -> Path:
    """``result.json`` (written last), ``heatmap.nii.gz``, ``labelmap.nii.gz`` and both crops."""
    out_dir = Path(out_dir)
    write_image(result.heatmap, out_dir / "heatmap.nii.gz")
    write_image(result.labelmap, out_dir / "labelmap.nii.gz")
    for side in SIDES:
        write_image(result.extraction.crops[side], out_dir / f"{side}_crop.nii.gz")
    meta = bundle.meta
    summary = {
        "format": "sinus-anomaly-result",
        "version": 1,
        "input": result.source,
        "model": {"path": str(bundle.path), "name": meta.get("name", bundle.path.stem), "method": meta.get("method"),
                  "fraction": meta.get("fraction"), "created": meta.get("created")},
        "sides": {side: result.sides[side].to_json(f"{side}_crop.nii.gz") for side in SIDES},
        "files": {"heatmap": "heatmap.nii.gz", "labelmap": "labelmap.nii.gz"},
        "labels": LABEL_NAMES,
        "registration": result.extraction.registration.summary(),
        "seconds": round(result.seconds, 3),
    }
    write_json_atomic(out_dir / "result.json", summary)
    return out_dir / "result.json"

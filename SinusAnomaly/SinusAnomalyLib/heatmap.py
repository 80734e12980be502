"""The heat map on the bundle's normal scale, its anomaly label, and the out-of-distribution check.

Heat map. The paper's pretraining target rescales each crop's residual |x - CAE(x)| to that
crop's own 1st/99th percentiles (:func:`residuals.residual_maps`), so the strongest residuals of
a normal sinus look as bright as a lesion. A bundle exported with a ``heatmap`` block instead
maps the residual linearly so that the median voxel of its normal calibration sinuses is 0 and
their 99.9th-percentile voxel is :data:`HEAT_AT_NORMAL_HIGH` (0.5), clipped to [0, 1], then
median filtered as in training (both steps are monotone, so their order does not change the
map). The same heat value means the same residual in every scan.

Label. Voxels at or above the bundle's ``residual_threshold`` (on the heat map's scale) inside
the side's reference cavity grown by :data:`CAVITY_MARGIN_MM`. Whether its volume is shown in
millilitres is the bundle's ``label_validation.volume_shown_as`` ("mL" only when the volume was
within ±50 % of the true one for most test lesions); otherwise it is a coarse region.

Out of distribution. Per side: the crop's mean |x - CAE(x)| at the model's input size. A bundle
with an ``ood`` block holds the range of that measure on its training sinuses, widened by a factor
(``margin``); a side outside it gets a warning. Bundles without these blocks (exported before
them) still load: per-crop heat map, label at ``residual_threshold`` of it, volume as a coarse
region, and no out-of-distribution check (each said in the result's warnings).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch

from .errors import BundleError
from .numberformat import is_finite_number
from .reference import ReferenceHead
from .residuals import median_smooth
from .resultformat import LABEL_VALUES

HEAT_AT_NORMAL_HIGH = 0.5  # heat of the normal calibration sinuses' 99.9th-percentile residual
NORMAL_HIGH_PERCENTILE = 99.9
CAVITY_MARGIN_MM = 4.0
VOLUME_TOLERANCE = 0.5  # a volume is shown in mL only when within ±50 % of the truth for most test lesions
VOLUME_AS_ML = "mL"
VOLUME_AS_REGION = "coarse region"


@dataclass(frozen=True)
class NormalScale:
    """Residual levels of the normal calibration sinuses: their median and 99.9th-percentile voxel."""

    median: float
    high: float

    def heat(self, residual: torch.Tensor, median_kernel: int) -> torch.Tensor:
        """``(B, 1, S, S, S)`` raw residuals -> heat maps in [0, 1] on this scale, median filtered."""
        scaled = HEAT_AT_NORMAL_HIGH * (residual - self.median) / max(self.high - self.median, 1e-6)
        return median_smooth(scaled.clamp(0.0, 1.0), median_kernel)

    def as_meta(self, calibrated_on: str) -> dict:
        return {"scale": "normal sinuses", "residual_median": round(self.median, 6), "residual_high": round(self.high, 6),
                "high_percentile": NORMAL_HIGH_PERCENTILE, "heat_at_high": HEAT_AT_NORMAL_HIGH, "calibrated_on": calibrated_on}


@dataclass(frozen=True)
class OodRange:
    """Range of the out-of-distribution measure on the training sinuses, widened by ``margin``."""

    low: float
    high: float
    margin: float

    def outside(self, value: float) -> bool:
        return not (self.low / self.margin <= value <= self.high * self.margin)

    def describe(self) -> str:
        return f"{self.low / self.margin:.4f}-{self.high * self.margin:.4f}"

    def as_meta(self, calibrated_on: str) -> dict:
        return {"measure": "mean |x - CAE(x)| over the crop at the model's input size", "low": round(self.low, 6),
                "high": round(self.high, 6), "margin": self.margin,
                "rule": "outside when below low / margin or above high * margin", "calibrated_on": calibrated_on}


def normal_scale_of(meta: dict, path=None) -> NormalScale | None:
    """The bundle's normal scale; None for a bundle without one (per-crop heat map)."""
    block = meta.get("heatmap")
    if block is None:
        return None
    if not (isinstance(block, dict) and all(is_finite_number(block.get(k)) for k in ("residual_median", "residual_high"))
            and block["residual_high"] > block["residual_median"] >= 0):
        raise BundleError(path, "bundle.json: 'heatmap' needs numbers residual_median >= 0 and residual_high above it")
    return NormalScale(float(block["residual_median"]), float(block["residual_high"]))


def ood_range_of(meta: dict, path=None) -> OodRange | None:
    """The bundle's training range of the measure; None for a bundle without one (no check)."""
    block = meta.get("ood")
    if block is None:
        return None
    if not (isinstance(block, dict) and all(is_finite_number(block.get(k)) for k in ("low", "high", "margin"))
            and 0 <= block["low"] <= block["high"] and block["margin"] >= 1):
        raise BundleError(path, "bundle.json: 'ood' needs numbers 0 <= low <= high and margin >= 1")
    return OodRange(float(block["low"]), float(block["high"]), float(block["margin"]))


def volume_shown_as(meta: dict) -> str:
    """"mL" when the bundle's label volume was validated within tolerance, else "coarse region"."""
    validation = meta.get("label_validation")
    shown = validation.get("volume_shown_as") if isinstance(validation, dict) else None
    return VOLUME_AS_ML if shown == VOLUME_AS_ML else VOLUME_AS_REGION


def raw_residuals(cae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, S, S, S)`` images -> |x - CAE(x)|, unscaled."""
    with torch.no_grad():
        return (images - cae(images)).abs()


def ood_measure(residual: torch.Tensor) -> np.ndarray:
    """Per crop: the mean raw residual, ``(B,)``."""
    return residual.flatten(1).mean(1).cpu().numpy().astype(np.float64)


@functools.lru_cache(maxsize=4)
def _grown_cavity(reference: ReferenceHead, side: str) -> sitk.Image:
    """The side's reference cavity grown by the margin; the same for every scan, so made once."""
    radius = [int(round(CAVITY_MARGIN_MM / s)) for s in reference.sinus_labels.GetSpacing()]
    return sitk.BinaryDilate(reference.sinus_labels == LABEL_VALUES[side], radius)


def cavity_in_crop(reference: ReferenceHead, side: str, reference_to_input_lps: np.ndarray, crop: sitk.Image) -> np.ndarray:
    """Boolean [i, j, k] mask of the side's grown reference cavity on ``crop``'s grid."""
    inverse = np.linalg.inv(reference_to_input_lps)  # input -> reference
    to_reference = sitk.AffineTransform(3)
    to_reference.SetMatrix(inverse[:3, :3].ravel().tolist())
    to_reference.SetTranslation(inverse[:3, 3].tolist())
    mask = sitk.Resample(_grown_cavity(reference, side), crop, to_reference, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(mask).transpose(2, 1, 0) > 0

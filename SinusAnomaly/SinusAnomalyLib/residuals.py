"""Crop resizing and CAE residual maps, shared by training and inference.

The paper's self-supervised target: |x - CAE(x)|, each map rescaled by its 1st/99th percentiles
to [0, 1] (clipped) and median filtered, which removes speckle and keeps lesion edges
(:func:`scale_per_crop`). Beyond the paper, :func:`scale_by` maps every crop with ONE scale, e.g.
the percentiles of the pooled raw residuals of a cohort of normal crops (:func:`cohort_scale`): a
normal crop's map then stays small instead of spanning [0, 1], and an anomalous crop's keeps its
magnitude.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .models import ConvAutoencoder

MEDIAN_LEVELS = 255  # maps are median filtered at 8-bit precision (see median_smooth)


def resize_crops(crops: np.ndarray, crop_size: int) -> np.ndarray:
    """``(N, 64, 64, 64)`` -> ``(N, S, S, S)`` float32 by area averaging (S divides 64), or as is."""
    crops = np.asarray(crops, dtype=np.float32)
    if crops.shape[-1] == crop_size:
        return crops
    return F.adaptive_avg_pool3d(torch.from_numpy(crops)[:, None], crop_size)[:, 0].numpy()


def median_smooth(maps: torch.Tensor, kernel: int) -> torch.Tensor:
    """Median filter ``(B, 1, S, S, S)`` maps in [0, 1] with a ``kernel``^3 window; same shape and device.

    The maps are quantised to 1/255 and filtered with ITK's sliding-histogram rank filter, with
    edge values repeated beyond the border. That equals a float median filter with replicate
    padding (MONAI's ``median_filter``) to within half a quantisation step, about 0.002, and at a
    64^3 crop it is about ten times faster on a CPU (0.1 s against 1.2 s for two crops).
    """
    if kernel % 2 != 1:
        raise ValueError(f"median kernel must be odd, got {kernel}")
    if kernel == 1:
        return maps
    radius = kernel // 2
    levels = np.rint(maps.detach().cpu().numpy()[:, 0].clip(0.0, 1.0) * MEDIAN_LEVELS).astype(np.uint8)
    out = np.empty(levels.shape, np.float32)
    for i, volume in enumerate(levels):
        padded = sitk.GetImageFromArray(np.pad(volume, radius, mode="edge"))
        filtered = sitk.Rank(padded, 0.5, [radius] * 3)
        out[i] = sitk.GetArrayViewFromImage(filtered)[radius:-radius, radius:-radius, radius:-radius]
    return torch.from_numpy(out / MEDIAN_LEVELS)[:, None].to(maps.device)


def scale_per_crop(residual: torch.Tensor, percentiles=(1.0, 99.0), median_kernel: int = 5) -> torch.Tensor:
    """Raw ``(B, 1, S, S, S)`` residuals -> each rescaled to its own percentiles, clipped to [0, 1], median filtered."""
    flat = residual.flatten(1)
    lo = torch.quantile(flat, percentiles[0] / 100.0, dim=1).view(-1, 1, 1, 1, 1)
    hi = torch.quantile(flat, percentiles[1] / 100.0, dim=1).view(-1, 1, 1, 1, 1)
    return median_smooth(((residual - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0), median_kernel)


def scale_by(residual: torch.Tensor, low: float, high: float, median_kernel: int = 5) -> torch.Tensor:
    """Raw ``(B, 1, S, S, S)`` residuals -> ``(r - low) / (high - low)`` with the same ``low`` and ``high``
    for every crop, clipped to [0, 1], median filtered (the cohort-scaled target)."""
    scale = max(float(high) - float(low), 1e-6)
    return median_smooth(((residual - float(low)) / scale).clamp(0.0, 1.0), median_kernel)


def cohort_scale(residuals, percentiles=(1.0, 99.0)) -> tuple[float, float]:
    """``(low, high)``: the ``percentiles`` of the voxels of raw residuals ``(N, ...)`` pooled over all
    ``N`` crops (NumPy's linear interpolation, in float64), for :func:`scale_by`."""
    pooled = np.asarray(residuals.detach().cpu().numpy() if isinstance(residuals, torch.Tensor) else residuals,
                        dtype=np.float32).ravel()
    if pooled.size == 0:
        raise ValueError("a cohort scale needs at least one residual map")
    low, high = np.percentile(pooled, [float(percentiles[0]), float(percentiles[1])])
    return float(low), float(high)


def residual_maps(cae: ConvAutoencoder, images: torch.Tensor, percentiles=(1.0, 99.0), median_kernel: int = 5,
                  scale: tuple[float, float] | None = None) -> torch.Tensor:
    """``(B, 1, S, S, S)`` images -> residual maps ``(B, 1, S, S, S)`` in [0, 1]: the paper's (each crop
    by its own ``percentiles``), or with ``scale = (low, high)`` one scale for every crop (:func:`scale_by`)."""
    with torch.no_grad():
        raw = (images - cae(images)).abs()
    if scale is None:
        return scale_per_crop(raw, percentiles, median_kernel)
    return scale_by(raw, scale[0], scale[1], median_kernel)

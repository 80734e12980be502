"""Crop resizing and CAE residual maps, shared by training and inference.

The paper's self-supervised target: |x - CAE(x)|, each map rescaled by its 1st/99th percentiles
to [0, 1] (clipped) and median filtered, which removes speckle and keeps lesion edges.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.networks.layers import median_filter

from .models import ConvAutoencoder


def resize_crops(crops: np.ndarray, crop_size: int) -> np.ndarray:
    """``(N, 64, 64, 64)`` -> ``(N, S, S, S)`` float32 by area averaging (S divides 64), or as is."""
    crops = np.asarray(crops, dtype=np.float32)
    if crops.shape[-1] == crop_size:
        return crops
    return F.adaptive_avg_pool3d(torch.from_numpy(crops)[:, None], crop_size)[:, 0].numpy()


def residual_maps(cae: ConvAutoencoder, images: torch.Tensor, percentiles=(1.0, 99.0), median_kernel: int = 5) -> torch.Tensor:
    """``(B, 1, S, S, S)`` images -> residual maps ``(B, 1, S, S, S)`` in [0, 1]."""
    with torch.no_grad():
        residual = (images - cae(images)).abs()
        flat = residual.flatten(1)
        lo = torch.quantile(flat, percentiles[0] / 100.0, dim=1).view(-1, 1, 1, 1, 1)
        hi = torch.quantile(flat, percentiles[1] / 100.0, dim=1).view(-1, 1, 1, 1, 1)
        residual = ((residual - lo) / (hi - lo).clamp_min(1e-6)).clamp(0.0, 1.0)
        if median_kernel > 1:
            residual = median_filter(residual, kernel_size=(median_kernel,) * 3)
    return residual

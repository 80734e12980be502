"""Previews: a PNG per head of slices through each sinus centre with the lesion outline."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..reference import SIDES
from .common import SyntheticCase


def save_preview(case: SyntheticCase, path: Path) -> Path:
    """Axial, coronal and sagittal slices through each sinus centre with the lesion outline (PNG)."""
    # a Figure with its own Agg canvas: no pyplot, so the host's plotting backend (Slicer, Jupyter) is untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    from ..fileio import atomic_path  # noqa: PLC0415

    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for row, side in enumerate(SIDES):
        box = sitk.Image([64, 64, 64], sitk.sitkFloat32)  # world-aligned RAS view around the true centre
        box.SetDirection(np.diag([-1.0, -1.0, 1.0]).ravel().tolist())
        centre_lps = np.diag([-1.0, -1.0, 1.0]) @ case.centers_ras[side]
        box.SetOrigin((centre_lps - np.diag([-1.0, -1.0, 1.0]) @ np.full(3, 31.5)).tolist())
        view = sitk.GetArrayFromImage(sitk.Resample(case.image, box, sitk.Transform(), sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
        mask = sitk.GetArrayFromImage(sitk.Resample(case.lesion_labels, box, sitk.Transform(), sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0)
        vmax = np.percentile(view, 99.5)
        for col, (name, take) in enumerate((("axial", lambda a: a[:, :, 32].T), ("coronal", lambda a: a[:, 32, :].T),
                                            ("sagittal", lambda a: a[32, :, :].T))):
            ax = axes[row, col]
            ax.imshow(take(view), cmap="gray", origin="lower", vmin=0, vmax=vmax)
            if (take(mask) > 0).any():
                ax.contour(take(mask) > 0, levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{side}: {case.anomalies[side] or 'normal'} ({name})", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{case.patient} (true centres; red: lesion mask)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path

"""Figures for people to look at (matplotlib, Agg backend, written atomically as PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from SinusAnomalyLib.fileio import atomic_path


def _pyplot():
    import matplotlib  # noqa: PLC0415  (imported on demand: plotting is optional work)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def save_crop_preview(arrays: dict, path: str | Path, title: str = "") -> Path:
    """Three orthogonal mid-slices of each crop (arrays indexed [i, j, k] along RAS axes)."""
    plt = _pyplot()
    sides = list(arrays)
    fig, axes = plt.subplots(len(sides), 3, figsize=(9, 3 * len(sides)), squeeze=False)
    for row, side in enumerate(sides):
        vol = np.asarray(arrays[side], dtype=np.float32)
        c = [s // 2 for s in vol.shape]
        views = (("axial", vol[:, :, c[2]].T), ("coronal", vol[:, c[1], :].T), ("sagittal", vol[c[0], :, :].T))
        for col, (name, plane) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(plane, cmap="gray", origin="lower", vmin=0, vmax=1)
            ax.set_title(f"{side} ({'mirrored ' if side == 'right' else ''}{name})", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    return Path(path)

"""Synthetic focal lesions painted into normal training crops while a classifier is fine-tuned
(``finetune.focal_lesions``), or into the crops residual pretraining learns from, each lesion's mask
added to the crop's residual target (``pretrain.focal_lesions``).

Why: a polyp or a retention cyst is a few voxels of soft tissue or fluid on the wall of the dark
air cavity. Among a fold's training sinuses there are a few dozen of them beside the large findings
(thickening, fluid levels, opacified sinuses), and a classifier fitted to those labels finds the
large findings and memorises the small ones: on anatomy it never saw it ranked polyps and cysts
near chance (docs/default-model.md). Painting such lesions into the normal crops gives it as many
as it needs, on every anatomy and contrast of the training set, each relabelled anomalous.

What is painted, in a crop served at ``S^3`` voxels (64 mm, so ``64 / S`` mm per voxel) and scaled
to [0, 1] as extraction leaves it (air near 0, the crop's 99th percentile 1):

* the cavity: the dark (below :data:`DARK_LEVEL`) connected component with most voxels in the
  crop's central cube (the crop is centred on the sinus), after a one-voxel opening; a crop
  without one (a sinus full of tissue) is left alone;
* one or two ellipsoids (radii within 20 % of each other), each on a random point of the cavity's
  wall, its centre moved inwards by up to 0.8 of its radius: a dome on the wall (a retention cyst)
  up to a nearly round mass (a polyp); diameter log-uniform in ``diameter_mm``, clipped to the
  cavity;
* at one level uniform in ``level`` per crop, with a partial-volume edge (a Gaussian of 0.5 voxel)
  that never leaves the cavity, and the noise of the crop's own air added inside, so a lesion is
  not told apart by being smooth.

Random numbers come from a NumPy generator seeded per batch from torch's global CPU generator,
which :func:`SinusAnomalyTraining.engine.fit` reseeds every epoch: a run is reproducible and a
resumed one paints what the uninterrupted one would. Nothing is drawn when ``prob`` is 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage as ndi

from .config import FocalLesionSettings

__all__ = ["DARK_LEVEL", "Cavity", "find_cavity", "paint_lesion", "FocalLesionPainter"]

DARK_LEVEL = 0.15  # crop intensity below which a voxel counts as air (bone walls are dark too; they bound it)
CORE_FRACTION = 0.375  # the central cube searched for the cavity, as a share of the crop's edge
MIN_CAVITY_FRACTION = 0.002  # a cavity smaller than this share of the crop is not painted (about 0.5 mL)
CROP_MM = 64.0


@dataclass(frozen=True)
class Cavity:
    """A crop's air cavity and its wall, found once (:func:`find_cavity`) and painted into many times."""

    mask: np.ndarray  # (S, S, S) bool
    wall: np.ndarray  # (N, 3) int: the cavity's voxels within one voxel of its edge
    inward: np.ndarray  # (N, 3) float: at each wall voxel, the gradient of the smoothed depth (points into the cavity)


def find_cavity(crop: np.ndarray) -> Cavity | None:
    """The air cavity of a ``(S, S, S)`` crop in [0, 1], or None."""
    size = crop.shape[0]
    dark = ndi.binary_opening(crop < DARK_LEVEL)
    labels, n = ndi.label(dark)
    if n == 0:
        return None
    half = max(int(round(size * CORE_FRACTION / 2)), 1)
    centre = size // 2
    core = labels[centre - half:centre + half, centre - half:centre + half, centre - half:centre + half]
    counts = np.bincount(core.ravel(), minlength=n + 1)
    counts[0] = 0
    if counts.max() == 0:
        return None
    mask = labels == counts.argmax()
    if mask.sum() < MIN_CAVITY_FRACTION * crop.size:
        return None
    depth = ndi.distance_transform_edt(mask)
    wall = np.argwhere(mask & (depth <= 1.0))
    inward = np.stack(np.gradient(ndi.gaussian_filter(depth, 1.0)))[:, wall[:, 0], wall[:, 1], wall[:, 2]].T
    return Cavity(mask, wall, inward)


def paint_lesion(crop: np.ndarray, cavity: Cavity, rng: np.random.Generator,
                 settings: FocalLesionSettings) -> tuple[np.ndarray, np.ndarray]:
    """``crop`` (``(S, S, S)``, [0, 1]) with one or two focal lesions painted into ``cavity``;
    (the painted crop as float32, the lesion's boolean mask). See the module docstring."""
    size = crop.shape[0]
    voxel_mm = CROP_MM / size
    coords = np.indices(crop.shape, dtype=np.float32)
    mask = np.zeros(crop.shape, bool)
    low, high = settings.diameter_mm
    for _ in range(int(rng.integers(1, 3))):
        k = rng.integers(len(cavity.wall))
        anchor, direction = cavity.wall[k], cavity.inward[k]
        direction = direction / (np.linalg.norm(direction) + 1e-6)
        radius = float(np.exp(rng.uniform(np.log(low), np.log(high)))) / 2.0 / voxel_mm
        centre = anchor + direction * radius * rng.uniform(0.0, 0.8)
        radii = radius * rng.uniform(0.8, 1.2, 3)
        mask |= (((coords - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0
    mask &= cavity.mask
    edge = np.where(cavity.mask, ndi.gaussian_filter(mask.astype(np.float32), 0.5), 0.0)
    air = crop[cavity.mask & ~mask]
    noise = rng.normal(0.0, float(air.std()) if air.size > 1 else 0.0, crop.shape)
    lesion = rng.uniform(*settings.level) + noise
    painted = crop * (1.0 - edge) + lesion * edge
    return np.clip(painted, 0.0, 1.0).astype(np.float32), mask


class FocalLesionPainter:
    """Paints focal lesions into a training set's normal crops as batches are served.

    Built once per fine-tuning from its :class:`~SinusAnomalyTraining.data.SinusCrops` (the cavity
    of every normal crop is found here, once); called by
    :class:`~SinusAnomalyTraining.data.CropLoader` with each batch's rows before augmentation.
    """

    def __init__(self, volumes: torch.Tensor, labels: np.ndarray, settings: FocalLesionSettings) -> None:
        self.settings = settings
        self.cavities: dict[int, Cavity] = {}
        for row in np.flatnonzero(np.asarray(labels) == 0):
            cavity = find_cavity(volumes[row, 0].float().numpy())
            if cavity is not None:
                self.cavities[int(row)] = cavity

    def __call__(self, volumes: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``volumes`` ``(B, C, S, S, S)`` and ``labels`` ``(B,)`` of the dataset rows ``rows`` (CPU
        tensors) -> new tensors, each painted crop's image channel changed and its label 1; where a
        second channel holds a residual target (residual pretraining), the lesion's mask is added to it
        (voxel-wise maximum), so the target marks the painted lesion."""
        if self.settings.prob <= 0 or not self.cavities:
            return volumes, labels
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        chosen = [(k, int(row)) for k, row in enumerate(rows.tolist())
                  if int(row) in self.cavities and rng.random() < self.settings.prob]
        if not chosen:
            return volumes, labels
        volumes, labels = volumes.clone(), labels.clone()
        for k, row in chosen:
            painted, mask = paint_lesion(volumes[k, 0].float().numpy(), self.cavities[row], rng, self.settings)
            volumes[k, 0] = torch.from_numpy(painted).to(volumes.dtype)
            if volumes.shape[1] > 1:
                volumes[k, 1] = torch.maximum(volumes[k, 1], torch.from_numpy(mask).to(volumes.dtype))
            labels[k] = 1
        return volumes, labels

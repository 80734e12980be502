"""Anatomy preparation, once per anatomy (cached): the 1 mm head with air-filled sinus cavities,
its cavity labels and head mask, and what its contrast rendering is applied to (its white-matter
level, its tissue layers and where the face's contrast maps apply)."""
from __future__ import annotations

import functools

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..reference import ANATOMIES, ReferenceHead
from .contrast import FACE_MM, WHITE_MATTER_LEVEL

ANATOMY_SPACING_MM = 1.0
AIR_LEVEL = 4.0  # reference units (uint8 scale of the template)


@functools.lru_cache(maxsize=len(ANATOMIES) + 1)  # every anatomy stays prepared: a mixed cohort switches between them
def _anatomy(reference: ReferenceHead) -> tuple[sitk.Image, np.ndarray, np.ndarray]:
    """(1 mm head with air-filled sinuses, cavity label array, head mask array); arrays are [x, y, z]."""
    ref = reference.image
    size = [int(round(s * sp / ANATOMY_SPACING_MM)) for s, sp in zip(ref.GetSize(), ref.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing([ANATOMY_SPACING_MM] * 3)
    grid.SetOrigin(ref.GetOrigin())
    grid.SetDirection(ref.GetDirection())
    head = sitk.Resample(ref, grid, sitk.Transform(), sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    labels = sitk.Resample(reference.sinus_labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    head_arr = np.clip(sitk.GetArrayFromImage(head).transpose(2, 1, 0), 0, None)
    label_arr = sitk.GetArrayFromImage(labels).transpose(2, 1, 0)
    cavity = np.zeros_like(label_arr)
    for value in (1, 2):  # an adult sinus is larger than the blurred template's dark core
        grown = ndi.binary_dilation(label_arr == value, ndi.generate_binary_structure(3, 1), iterations=3)
        grown &= head_arr < 0.45 * np.percentile(head_arr[head_arr > 20], 60)  # stay out of bright tissue
        grown = ndi.binary_closing(grown, iterations=2) | (label_arr == value)
        cavity[grown & (cavity == 0)] = value
    weight = ndi.gaussian_filter((cavity > 0).astype(np.float32), 0.8)
    head_arr = head_arr * (1.0 - weight) + AIR_LEVEL * weight
    air_head = sitk.GetImageFromArray(head_arr.transpose(2, 1, 0).astype(np.float32))
    air_head.CopyInformation(grid)
    head_mask = ndi.binary_fill_holes(ndi.binary_opening(head_arr > 20, iterations=2))
    return air_head, cavity, head_mask


@functools.lru_cache(maxsize=len(ANATOMIES) + 1)
def _face_weight(reference: ReferenceHead) -> np.ndarray:
    """Per voxel of the 1 mm anatomy (``[z, y, x]``), 1 within ``FACE_MM[0]`` of either sinus
    cavity, falling linearly to 0 at ``FACE_MM[1]``: where the face's contrast maps apply. The
    64 mm crop round a sinus lies inside the face; the brain beyond keeps its own maps."""
    _, cavity, _ = _anatomy(reference)
    distance = ndi.distance_transform_edt(cavity.transpose(2, 1, 0) == 0, sampling=ANATOMY_SPACING_MM)
    return np.clip((FACE_MM[1] - distance) / (FACE_MM[1] - FACE_MM[0]), 0.0, 1.0).astype(np.float32)


AIR_CEILING = 0.1  # T1 levels below this (fraction of the bright tissue, as CONTRAST_MAPS) are air or cortical bone
TISSUE_FLOOR = 0.15  # ... and above this, tissue


@functools.lru_cache(maxsize=len(ANATOMIES) + 1)
def _tissue_layers(reference: ReferenceHead) -> tuple[np.ndarray, np.ndarray]:
    """What the contrast maps are applied to: per voxel of the 1 mm anatomy (``[z, y, x]`` arrays
    like ``sitk.GetArrayFromImage``), its tissue's T1 level (template units) and the share of the
    voxel that tissue fills.

    The maps are not monotone (T2 turns the darker CSF range bright), so two things a T1 image
    carries must not go through them as they are: noise (a single scan's speckle would become
    salt-and-pepper) and the partial-volume voxels where air meets tissue (a T1 level between air
    and tissue would become a bright rim round every cavity, like mucosal thickening). So the head
    is median-filtered first (the synthetic head gets its own noise later), and a voxel within 2 mm
    of air that is darker than the tissue around it (the Gaussian-weighted mean of the tissue
    voxels, sigma 1.5 mm) is rendered as that tissue filling the share level / around of the
    voxel, and air the rest.
    """
    head, _, _ = _anatomy(reference)
    level = sitk.GetArrayFromImage(sitk.Median(head, [1, 1, 1]))
    scale = WHITE_MATTER_LEVEL / max(_white_matter(reference), 1e-6)
    tissue = (level * scale >= TISSUE_FLOOR).astype(np.float32)
    weight = ndi.gaussian_filter(tissue, 1.5 / ANATOMY_SPACING_MM)
    around = ndi.gaussian_filter(level * tissue, 1.5 / ANATOMY_SPACING_MM) / np.maximum(weight, 1e-6)
    mixed = ndi.binary_dilation(level * scale < AIR_CEILING, iterations=int(round(2 / ANATOMY_SPACING_MM)))
    mixed &= (weight > 0.05) & (level < around)
    fraction = np.ones_like(level)
    fraction[mixed] = np.clip(level[mixed] / around[mixed], 0.0, 1.0)
    level[mixed] = around[mixed]
    return level, fraction


@functools.lru_cache(maxsize=4)
def _white_matter(reference: ReferenceHead) -> float:
    """The anatomy's white-matter intensity: the commonest value among the head's brighter half."""
    head, _, head_mask = _anatomy(reference)
    values = sitk.GetArrayViewFromImage(head).transpose(2, 1, 0)[head_mask]
    bright = values[values > np.median(values)]
    counts, edges = np.histogram(bright, bins=64)
    peak = int(np.argmax(counts))
    return float((edges[peak] + edges[peak + 1]) / 2)

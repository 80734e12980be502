"""The reference sinus from real sinuses: a probabilistic cavity in the reference head's frame.

The reference head is an average of many heads. Only the core of each maxillary sinus, where
nearly every head had air, is dark enough in it to pass an air threshold: that core holds about
5 mL where adult sinuses hold 15-25, and it sits high, since the sinus roof (the orbit floor)
varies less between heads than the floor (the alveolar recess). Crops centred on it were 3-8 mm
superior of the real cavities.

Here each annotated real head (:func:`SinusAnomalyLib.reference.load_anatomy`) is registered to
the reference exactly as a scan to classify is (:func:`register_to_reference`), and its cavity
labels are mapped back onto the reference grid. So the atlas holds where real cavities land
*after the registration the product uses*, systematic errors of that fit included. Per reference
voxel and side:

    probability = (heads whose mapped cavity covers it + PRIOR_WEIGHT * template core)
                  / (heads whose field of view shows it + PRIOR_WEIGHT)

A head cut inside its sinuses (most MNI-space heads end at the sinus floor) votes only where
it shows anything; the template's dark core is a weak prior where few heads are in view. The
reference sinus is the part with probability >= 0.5 (largest connected part); its centroid is
the crop centre. Built by ``Resources/Scripts/make_reference_sinus.py``; the benchmark and the
tests rebuild it without the head they measure on (leave one head out).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .geometry import lps_to_ras, matrix_to_affine
from .reference import SIDES, ReferenceHead, label_points_lps
from .registration import register_to_reference

LABEL_VALUES = {"left": 1, "right": 2}
PRIOR_WEIGHT = 0.5  # the template core counts as half a head: it decides only where no real head is in view
MIN_PROBABILITY = 0.5


@dataclass
class MappedCavity:
    """One real head's cavities on the reference grid (arrays [x, y, z] like the reference's labels)."""

    name: str
    cavity: dict  # side -> bool array: the head's cavity, mapped
    in_view: np.ndarray  # bool array: reference voxels the head's field of view shows (not blank fill)


@dataclass
class SinusAtlas:
    """Probability of maxillary sinus air per reference voxel and side, and what follows from it."""

    probability: dict  # side -> float32 array [x, y, z] on the reference's label grid
    labels: sitk.Image  # uint8 on the reference's label grid: 1 left, 2 right (probability >= MIN_PROBABILITY)
    centers_ras: dict  # side -> (3,) world RAS mm: centroid of the side's label
    heads: tuple  # names of the heads it was built from

    def volume_ml(self, side: str) -> float:
        labels = sitk.GetArrayViewFromImage(self.labels)
        return float((labels == LABEL_VALUES[side]).sum() * np.prod(self.labels.GetSpacing()) / 1000.0)


def _resampled(image: sitk.Image, grid: sitk.Image, matrix_lps: np.ndarray, default: float) -> np.ndarray:
    """``image`` sampled (nearest) at the reference grid points mapped by ``matrix_lps``; array [x, y, z]."""
    out = sitk.Resample(image, grid, matrix_to_affine(matrix_lps), sitk.sitkNearestNeighbor, default, image.GetPixelID())
    return sitk.GetArrayFromImage(out).transpose(2, 1, 0)


def map_cavity(head: ReferenceHead, reference: ReferenceHead, name: str) -> MappedCavity:
    """Register ``head`` to ``reference`` and map its cavity labels and field of view onto the
    reference's label grid. Raises :class:`RegistrationError` when the head does not register."""
    registration = register_to_reference(head.image, reference, name)
    grid = reference.sinus_labels
    labels = _resampled(head.sinus_labels, grid, registration.matrix_lps, 0)
    ones = sitk.Image(head.image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(head.image)
    in_view = _resampled(ones, grid, registration.matrix_lps, 0) > 0
    if registration.fill is not None:
        in_view &= _resampled(registration.fill, grid, registration.matrix_lps, 0) == 0
    return MappedCavity(name, {side: labels == LABEL_VALUES[side] for side in SIDES}, in_view)


def build_atlas(mapped: list[MappedCavity], template: ReferenceHead) -> SinusAtlas:
    """The probabilistic reference sinus from ``mapped`` heads (see the module docstring), on the
    grid of ``template.sinus_labels``, the average's own cores (:func:`.reference.load_template_cores`), the prior."""
    grid = template.sinus_labels
    prior = sitk.GetArrayFromImage(grid).transpose(2, 1, 0)
    in_view = np.sum([m.in_view for m in mapped], axis=0, dtype=np.float32) if mapped else 0.0
    label_array = np.zeros(prior.shape, np.uint8)
    probability = {}
    for side in SIDES:
        votes = np.sum([m.cavity[side] & m.in_view for m in mapped], axis=0, dtype=np.float32) if mapped else 0.0
        p = (votes + PRIOR_WEIGHT * (prior == LABEL_VALUES[side])) / (in_view + PRIOR_WEIGHT)
        probability[side] = p.astype(np.float32)
        parts, count = ndi.label(p >= MIN_PROBABILITY)
        if count == 0:
            raise ValueError(f"no voxel of the {side} sinus reaches probability {MIN_PROBABILITY}")
        sizes = ndi.sum_labels(np.ones_like(parts), parts, index=np.arange(1, count + 1))
        chosen = parts == 1 + int(np.argmax(sizes))
        label_array[chosen & (label_array == 0)] = LABEL_VALUES[side]
    labels = sitk.GetImageFromArray(label_array.transpose(2, 1, 0).copy())
    labels.CopyInformation(grid)
    centres = {side: lps_to_ras(label_points_lps(labels, LABEL_VALUES[side]).mean(0)) for side in SIDES}
    return SinusAtlas(probability, labels, centres, tuple(m.name for m in mapped))


def with_atlas(reference: ReferenceHead, atlas: SinusAtlas) -> ReferenceHead:
    """``reference`` whose sinus (labels and centres: what crops and coverage follow) is ``atlas``'s."""
    return dataclasses.replace(reference, sinus_labels=atlas.labels, centers_ras=dict(atlas.centers_ras))

"""Pose and deformation: a head's smooth random shape change (global, midface, each sinus's size and
shape), its rotation, scale and translation in the scanner, the output grid of random spacing and
orientation, the true sinus centres after all of it, and real heads posed and regridded
(:func:`pose_variant`)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import SinusAnomalyError
from ..geometry import lps_to_ras
from ..reference import SIDES, ReferenceHead
from .anatomy import _anatomy
from .common import LESION_LABELS, SynthParams, _smooth_noise
from .contrast import _bias_field, remap_contrast


def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


SINUS_SCALE_WINDOW_MM = 25.0  # Gaussian window of a sinus's own size change: ~0.8 at its walls
# Sinus scales that keep the deformation free of folds (its Jacobian determinant above 0 everywhere, with
# the default deformation and 3 mm shape change, every anatomy; Testing/test_synth.py): at 0.5 it folds.
SINUS_SCALE_LIMITS = (0.6, 1.5)
SINUS_SHAPE_WINDOW_MM = 20.0  # Gaussian window of a sinus's own shape change
SINUS_SHAPE_LENGTH_MM = 8.0  # correlation length of that change: lobes of about a third of the sinus


def _displacement(reference: ReferenceHead, rng: np.random.Generator, amplitude_mm: float,
                  sinus_scale_range: tuple = (1.0, 1.0), sinus_shape_mm: float = 0.0) -> sitk.Transform:
    """Smooth displacement field (reference space, 4 mm grid): global shape change + midface change,
    and, when ``sinus_scale_range`` is not (1, 1), each sinus scaled about its centre by its own
    random factor per axis (its size, shape and the left/right asymmetry); when ``sinus_shape_mm``
    is above 0, each sinus's own smooth random displacement of up to that many mm (lobes and
    bulges of the cavity, different left and right)."""
    ref = reference.image
    spacing = 4.0
    size = [int(np.ceil(s * sp / spacing)) + 1 for s, sp in zip(ref.GetSize(), ref.GetSpacing())]
    shape = tuple(size)
    field_ = np.stack([_smooth_noise(rng, shape, 30.0 / spacing) for _ in range(3)], -1) * amplitude_mm
    # the midface moves on its own: a smooth bump around the sinuses
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).astype(np.float32)
    origin = np.asarray(ref.GetOrigin())
    direction = np.asarray(ref.GetDirection()).reshape(3, 3)
    points = idx * spacing @ direction.T + origin
    midface = np.diag([-1.0, -1.0, 1.0]) @ reference.midface_center_ras
    window = np.exp(-((points - midface) ** 2).sum(-1) / (2 * 22.0**2))[..., None]
    shift = rng.standard_normal(3)
    shift *= amplitude_mm * rng.uniform(0.5, 1.0) / np.linalg.norm(shift)
    field_ = field_ + window * shift
    if tuple(sinus_scale_range) != (1.0, 1.0):
        for side in SIDES:
            centre = reference.center_lps(side)
            scale = rng.uniform(*sinus_scale_range, 3)  # along the reference's axes
            offset = centre - points
            local = np.exp(-(offset ** 2).sum(-1) / (2 * SINUS_SCALE_WINDOW_MM**2))[..., None]
            # the field pulls image points towards the centre by (1 - 1/s): the cavity looks s times as large
            field_ = field_ + local * offset * (1.0 - 1.0 / scale)
    if sinus_shape_mm > 0:
        for side in SIDES:
            offset = reference.center_lps(side) - points
            local = np.exp(-(offset ** 2).sum(-1) / (2 * SINUS_SHAPE_WINDOW_MM**2))[..., None]
            bumps = np.stack([_smooth_noise(rng, shape, SINUS_SHAPE_LENGTH_MM / spacing) for _ in range(3)], -1)
            field_ = field_ + local * bumps * sinus_shape_mm
    image = sitk.GetImageFromArray(field_.transpose(2, 1, 0, 3).astype(np.float64), isVector=True)
    image.SetSpacing([spacing] * 3)
    image.SetOrigin(ref.GetOrigin())
    image.SetDirection(ref.GetDirection())
    return sitk.DisplacementFieldTransform(image)


def _output_grid(rng: np.random.Generator, params: SynthParams, head_points_lps: np.ndarray) -> sitk.Image:
    """An empty image grid of random spacing and orientation covering ``head_points_lps``."""
    lo, hi = params.spacing_range_mm
    spacing = rng.uniform(lo, hi, 3) if params.anisotropic else np.full(3, rng.uniform(lo, hi))
    choice = rng.integers(3)
    if choice == 0:
        direction = np.eye(3)  # LPS-like (DICOM)
    elif choice == 1:
        direction = np.diag([-1.0, -1.0, 1.0])  # RAS-like (NIfTI)
    else:
        direction = _random_rotation(rng, 30.0) @ np.diag([-1.0, -1.0, 1.0])  # oblique
    local = head_points_lps @ direction  # coordinates along the grid's axes
    start, stop = local.min(0) - 8.0, local.max(0) + 8.0
    size = np.ceil((stop - start) / spacing).astype(int) + 1
    grid = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((direction @ start).tolist())
    return grid


def _weighted_centroid_ras(image: sitk.Image) -> np.ndarray:
    arr = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    idx = np.argwhere(arr > 0)
    weights = arr[arr > 0]
    mean_idx = (idx * weights[:, None]).sum(0) / weights.sum()
    return lps_to_ras(np.asarray(image.TransformContinuousIndexToPhysicalPoint(mean_idx.tolist())))


def _true_centre(reference: ReferenceHead, side: str, pull: sitk.Transform, forward_guess_lps: np.ndarray) -> np.ndarray:
    """Centroid (RAS mm) of the posed, deformed cavity, resampled on a 1 mm box around a guess."""
    _, cavity, _ = _anatomy(reference)
    head, _, _ = _anatomy(reference)
    mask = sitk.GetImageFromArray((cavity == LESION_LABELS[side]).transpose(2, 1, 0).astype(np.float32))
    mask.CopyInformation(head)
    box = sitk.Image([72, 72, 72], sitk.sitkFloat32)
    box.SetOrigin((forward_guess_lps - 35.5).tolist())
    resampled = sitk.Resample(mask, box, pull, sitk.sitkLinear, 0.0)
    if sitk.GetArrayViewFromImage(resampled).sum() < 100:
        raise SinusAnomalyError(f"synthetic {side} sinus fell outside its truth box (deformation too strong?)")
    return _weighted_centroid_ras(resampled)


def _random_pose(rng: np.random.Generator, params: SynthParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation 3 x 3, translation mm (3,), anisotropic scale (3,)) of a head in the scanner."""
    rotation = _random_rotation(rng, params.max_rotation_deg)
    translation = rng.uniform(-1, 1, 3) * params.max_translation_mm
    scale = 1.0 + rng.uniform(-params.max_scale_change, params.max_scale_change, 3)
    return rotation, translation, scale


def pose_variant(image: sitk.Image, rng: np.random.Generator, contrast: str = "t1", params: SynthParams = SynthParams(),
                 bias_strength: float = 0.2, noise_std: float = 0.015) -> tuple[sitk.Image, np.ndarray]:
    """A real head as another scanner might have written it: rotated (<= ``params.max_rotation_deg``)
    and shifted (<= ``params.max_translation_mm``), on a new grid (spacing, orientation as in
    :func:`make_case`), remapped to ``contrast``, with a bias field and noise inside its field of
    view. Outside the original field of view the variant is exactly 0 (zero padding), as a
    resampled scan is.

    Returns the variant and the 4 x 4 matrix (LPS mm) taking points of ``image`` to the variant.
    """
    array = sitk.GetArrayViewFromImage(image).transpose(2, 1, 0)
    index = np.argwhere(array > 0.3 * np.percentile(array, 75))[::50].astype(float)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points = (index * np.asarray(image.GetSpacing())) @ direction.T + np.asarray(image.GetOrigin())
    centre = points.mean(0)
    rotation = _random_rotation(rng, params.max_rotation_deg)
    translation = rng.uniform(-1, 1, 3) * params.max_translation_mm
    forward = np.eye(4)  # source -> variant: R^T (p - c) + c + t
    forward[:3, :3] = rotation.T
    forward[:3, 3] = centre + translation - rotation.T @ centre
    pull = sitk.AffineTransform(3)  # variant -> source
    inverse = np.linalg.inv(forward)
    pull.SetMatrix(inverse[:3, :3].ravel().tolist())
    pull.SetTranslation(inverse[:3, 3].tolist())
    grid = _output_grid(rng, params, points @ forward[:3, :3].T + forward[:3, 3])
    remapped = sitk.GetArrayFromImage(sitk.Resample(remap_contrast(image, contrast), grid, pull, sitk.sitkLinear, 0.0,
                                                    sitk.sitkFloat32))
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    in_view = sitk.GetArrayFromImage(sitk.Resample(ones, grid, pull, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)) > 0
    noisy = remapped * _bias_field(rng, remapped.shape, bias_strength) + np.abs(rng.normal(0, noise_std, remapped.shape))
    out = sitk.GetImageFromArray(np.where(in_view, noisy, 0.0).astype(np.float32))
    out.CopyInformation(grid)
    return out, forward

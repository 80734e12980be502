"""Registration of a head MRI to the reference head (SimpleITK, Mattes mutual information).

Three stages, each coarse to fine over one Gaussian pyramid of smoothed 2 mm copies of both heads:

1. rigid (Euler) from a start that aligns the centres of mass of the two heads;
2. affine over the whole head;
3. affine refinement restricted to the midface (a box around both sinuses, nose and maxilla):
   a patient's face differs in shape from the reference, and a whole-head fit follows skull and
   brain, which can leave the sinuses several millimetres off. The midface stage fits the anatomy
   the crops are cut from.

Mutual information, not intensity differences, because users bring FLAIR, T1 or T2 while the
reference is a T1 average. The result maps reference points to input points; a fit that fails or
lands implausibly raises :class:`RegistrationError` instead of cropping the wrong place.
"""
from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from .errors import RegistrationError
from .geometry import affine_to_matrix, lps_matrix_to_ras, nearest_rotation, rotation_angle_deg
from .reference import ReferenceHead

WORK_SPACING_MM = 2.0
# Plausibility bounds: heads of adults differ in size by far less than this, and users' scans are
# not rotated by more than a few tens of degrees from the standard head pose.
SCALE_RANGE = (0.75, 1.35)
MAX_ROTATION_DEG = 45.0
MAX_LOCAL_SHIFT_MM = 20.0  # the midface refinement corrects a face shape, it does not relocate it
MIN_QUALITY = 0.25


@dataclass
class RegistrationResult:
    """Reference -> input mapping and how well it fits.

    ``matrix_lps`` is a 4x4 homogeneous matrix mapping reference physical points (LPS mm) to input
    physical points (LPS mm); ``global_matrix_lps`` is the whole-head fit before the midface
    refinement. ``quality`` is the normalised mutual information in the midface region, rescaled
    so 0 means independent intensities and 1 identical ones (see :func:`midface_quality`).
    """

    matrix_lps: np.ndarray
    global_matrix_lps: np.ndarray
    quality: float
    metric_value: float
    seconds: float
    stages: list = field(default_factory=list)

    def map_point_lps(self, point_lps: np.ndarray) -> np.ndarray:
        return self.matrix_lps[:3, :3] @ point_lps + self.matrix_lps[:3, 3]

    @property
    def rotation_lps(self) -> np.ndarray:
        """Rotation part of the reference -> input mapping (polar decomposition)."""
        return nearest_rotation(self.matrix_lps[:3, :3])

    def summary(self) -> dict:
        linear = self.matrix_lps[:3, :3]
        return {
            "method": "SimpleITK Mattes MI: rigid, affine (whole head), affine (midface region)",
            "reference_to_input_ras": lps_matrix_to_ras(self.matrix_lps).round(6).tolist(),
            "reference_to_input_ras_whole_head": lps_matrix_to_ras(self.global_matrix_lps).round(6).tolist(),
            "rotation_deg": round(rotation_angle_deg(self.rotation_lps), 2),
            "scales": [round(float(s), 4) for s in np.linalg.svd(linear, compute_uv=False)],
            "quality": round(float(self.quality), 4),
            "quality_definition": "normalised mutual information in the midface region, 0 = independent, 1 = identical",
            "metric_value": round(float(self.metric_value), 5),
            "seconds": round(float(self.seconds), 3),
            "stages": self.stages,
        }


def _working_copy(image: sitk.Image, spacing: float = WORK_SPACING_MM) -> sitk.Image:
    """Smoothed, resampled copy at ``spacing`` mm (same orientation), intensities scaled to ~[0, 1]."""
    in_spacing = np.asarray(image.GetSpacing())
    sigma = np.sqrt(np.maximum(spacing**2 - in_spacing**2, 0.0)) / 2.355
    if sigma.max() > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [float(max(s, 1e-3)) for s in sigma])
    size = np.ceil(np.asarray(image.GetSize()) * in_spacing / spacing).astype(int)
    image = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkLinear, image.GetOrigin(),
                          [spacing] * 3, image.GetDirection(), 0.0, sitk.sitkFloat32)
    array = sitk.GetArrayViewFromImage(image)
    lo, hi = np.percentile(array[array > np.percentile(array, 50) * 0.1 + 1e-6], [1, 99]) if (array > 0).any() else (0, 1)
    scaled = sitk.Clamp((image - float(lo)) / float(max(hi - lo, 1e-6)), sitk.sitkFloat32, 0.0, 1.0)
    return scaled


def _box_mask(like: sitk.Image, center_lps: np.ndarray, half_size_mm: np.ndarray) -> sitk.Image:
    """uint8 mask on the grid of ``like``: 1 inside an axis-aligned box (physical LPS)."""
    size = like.GetSize()
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1).reshape(-1, 3)
    direction = np.asarray(like.GetDirection()).reshape(3, 3)
    points = (direction @ (idx * np.asarray(like.GetSpacing())).T).T + np.asarray(like.GetOrigin())
    inside = np.all(np.abs(points - center_lps) <= half_size_mm, axis=1).reshape(size)
    mask = sitk.GetImageFromArray(inside.transpose(2, 1, 0).astype(np.uint8))
    mask.CopyInformation(like)
    return mask


# Pyramid levels (shrink factor, Gaussian sigma in mm) of the 2 mm working copies. Each level is
# made once per image and shared by the stages: ITK's registration method would re-smooth both
# images, and compute their gradient images, at every level of every stage, which cost three
# quarters of the registration time.
PYRAMID = ((4, 4.0), (2, 2.0), (1, 0.0))


def _pyramid(image: sitk.Image) -> dict:
    """{shrink: smoothed, shrunk copy} for every level of :data:`PYRAMID`."""
    levels = {}
    for shrink, sigma in PYRAMID:
        level = sitk.SmoothingRecursiveGaussian(image, sigma) if sigma > 0 else image
        levels[shrink] = sitk.Shrink(level, [shrink] * 3) if shrink > 1 else level
    return levels


@contextlib.contextmanager
def _single_threaded_itk():
    """ITK filters created inside run on one thread.

    Mattes mutual information sums per-thread partial results in an order that varies between
    runs: with two threads the same scan registered twice gave matrices up to 2e-5 apart (and
    other crops, and, after training, other models). One thread makes registration exactly
    repeatable for about 0.3 s more per scan; the pyramid filters stay multi-threaded. The
    registration method builds its metric from ITK's process-wide default, hence setting that
    (and restoring it); a filter another thread creates meanwhile also runs on one thread, which
    costs time, never correctness.
    """
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _register(fixed: dict, moving: dict, initial: sitk.Transform, shrinks, iterations, sampling, fixed_mask=None):
    """Coarse-to-fine Mattes MI fit over the pyramid levels ``shrinks``: (transform, metric, iterations)."""
    transform = initial
    for shrink, percentage in zip(shrinks, sampling):
        reg = sitk.ImageRegistrationMethod()
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(percentage, seed=20240501)  # fixed seed: identical result each run
        # gradients by finite differences at the sampled points only, not as whole gradient images
        reg.SetMetricUseFixedImageGradientFilter(False)
        reg.SetMetricUseMovingImageGradientFilter(False)
        if fixed_mask is not None:
            reg.SetMetricFixedMask(fixed_mask)  # physical space: fits every level
        reg.SetInterpolator(sitk.sitkLinear)
        # First steps of 4 mm (physical shift scaling), halved whenever the direction reverses.
        reg.SetOptimizerAsRegularStepGradientDescent(
            learningRate=4.0, minStep=0.02, numberOfIterations=iterations, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-6
        )
        reg.SetOptimizerScalesFromPhysicalShift()
        reg.SetInitialTransform(transform, inPlace=False)
        with _single_threaded_itk():
            transform = _unwrap(reg.Execute(fixed[shrink], moving[shrink]))
    return transform, reg.GetMetricValue(), reg.GetOptimizerIteration()


def _unwrap(transform: sitk.Transform) -> sitk.Transform:
    """The optimised transform itself, not the one-element composite ITK hands back."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        if composite.GetNumberOfTransforms() == 1:
            return composite.GetNthTransform(0).Downcast()
    return transform


def _as_affine(transform: sitk.Transform, center_lps: np.ndarray) -> sitk.AffineTransform:
    """A linear transform (as :func:`_register` returns it) as one AffineTransform centred on ``center_lps``.

    The centre (the head's) keeps rotation and translation parameters decoupled, which the
    optimiser's parameter scaling relies on.
    """
    matrix = affine_to_matrix(transform.Downcast() if hasattr(transform, "Downcast") else transform)
    out = sitk.AffineTransform(3)
    out.SetCenter([float(v) for v in center_lps])
    out.SetMatrix(matrix[:3, :3].ravel().tolist())
    out.SetTranslation((matrix[:3, 3] - center_lps + matrix[:3, :3] @ center_lps).tolist())
    return out


def midface_quality(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: sitk.Image, bins: int = 32) -> float:
    """Normalised mutual information of reference and registered input inside ``mask``.

    Returns (H(A) + H(B) - H(A, B)) / min(H(A), H(B)): 0 for unrelated intensities, 1 when one
    image determines the other. Works across MRI contrasts, unlike a correlation.
    """
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    m = sitk.GetArrayViewFromImage(mask) > 0
    a = sitk.GetArrayViewFromImage(fixed)[m]
    b = sitk.GetArrayViewFromImage(warped)[m]
    joint, _, _ = np.histogram2d(a, b, bins=bins, range=[[0, 1], [0, 1]])
    p = joint / max(joint.sum(), 1)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ha, hb, hab = entropy(p.sum(1)), entropy(p.sum(0)), entropy(p.ravel())
    return (ha + hb - hab) / max(min(ha, hb), 1e-9)


@functools.lru_cache(maxsize=2)
def _fixed_side(reference: ReferenceHead) -> tuple:
    """Working copy of the reference and its midface mask, made once per process."""
    fixed = _working_copy(reference.image)
    midface_lps = np.diag([-1.0, -1.0, 1.0]) @ reference.midface_center_ras
    return _pyramid(fixed), _box_mask(fixed, midface_lps, reference.midface_half_size_mm)


def register_to_reference(
    image: sitk.Image, reference: ReferenceHead, source: str = "image", refine_midface: bool = True
) -> RegistrationResult:
    """Register ``image`` (any pose, spacing, orientation) to ``reference``.

    ``refine_midface=False`` stops after the whole-head affine stage (for comparisons only).

    Raises :class:`RegistrationError` naming ``source`` when the fit fails or is implausible.
    """
    start = time.perf_counter()
    fixed, midface_mask = _fixed_side(reference)
    midface_lps = np.diag([-1.0, -1.0, 1.0]) @ reference.midface_center_ras
    moving = _pyramid(_working_copy(image))
    stages = []
    try:
        initial = sitk.CenteredTransformInitializer(
            fixed[1], moving[1], sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        rigid, value, iters = _register(fixed, moving, initial, [4, 2], 100, [0.3, 0.06])
        stages.append({"stage": "rigid", "metric": round(value, 5), "iterations": iters})
        head_center = np.asarray(initial.GetCenter())
        affine_init = _as_affine(rigid, head_center)
        whole, value, iters = _register(fixed, moving, affine_init, [4, 2], 100, [0.3, 0.06])
        whole = _as_affine(whole, head_center)
        stages.append({"stage": "affine whole head", "metric": round(value, 5), "iterations": iters})
        local = whole
        if refine_midface:
            local, value, iters = _register(
                fixed, moving, _as_affine(whole, midface_lps), [2, 1], 100, [0.5, 0.2], fixed_mask=midface_mask
            )
            local = _as_affine(local, midface_lps)
            stages.append({"stage": "affine midface", "metric": round(value, 5), "iterations": iters})
    except RuntimeError as exc:
        raise RegistrationError(source, _explain_itk_failure(str(exc))) from exc

    result = RegistrationResult(
        matrix_lps=affine_to_matrix(local),
        global_matrix_lps=affine_to_matrix(whole),
        quality=midface_quality(fixed[1], moving[1], local, midface_mask),
        metric_value=value,
        seconds=0.0,
        stages=stages,
    )
    _check_plausible(result, reference, source)
    result.seconds = time.perf_counter() - start
    return result


def _explain_itk_failure(message: str) -> str:
    """Plain words for the ITK failures that bad input causes; the ITK text for anything else."""
    if "outside moving image buffer" in message or "do not sufficiently overlap" in message:
        return "the scan does not overlap the reference head enough (is the whole face in the field of view?)"
    if "Total Mass of the image was zero" in message:
        return "the image has no head-like intensity distribution (nearly all voxels share one value)"
    last = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return f"the optimiser stopped with an error ({last[-1] if last else 'no message'})"


def _check_plausible(result: RegistrationResult, reference: ReferenceHead, source: str) -> None:
    scales = np.linalg.svd(result.matrix_lps[:3, :3], compute_uv=False)
    if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        raise RegistrationError(
            source, f"implausible scaling {np.round(scales, 2).tolist()} (expected {SCALE_RANGE[0]}-{SCALE_RANGE[1]}): is this a head MRI?"
        )
    angle = rotation_angle_deg(result.rotation_lps)
    if angle > MAX_ROTATION_DEG:
        raise RegistrationError(source, f"implausible rotation of {angle:.0f} degrees from the reference pose")
    global_map = result.global_matrix_lps
    for side in ("left", "right"):
        c = reference.center_lps(side)
        shift = np.linalg.norm(result.map_point_lps(c) - (global_map[:3, :3] @ c + global_map[:3, 3]))
        if shift > MAX_LOCAL_SHIFT_MM:
            raise RegistrationError(
                source, f"the midface refinement moved the {side} sinus by {shift:.0f} mm from the whole-head fit"
            )
    if result.quality < MIN_QUALITY:
        raise RegistrationError(
            source, f"poor match to the reference in the midface (quality {result.quality:.2f} < {MIN_QUALITY})"
        )

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
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .errors import RegistrationError
from .geometry import affine_to_matrix, lps_matrix_to_ras, nearest_rotation, rotation_angle_deg
from .reference import ReferenceHead

WORK_SPACING_MM = 2.0
# Plausibility bounds: heads of adults differ in size by far less than this, and users' scans are
# not rotated by more than a few tens of degrees from the standard head pose.
SCALE_RANGE = (0.75, 1.35)
MAX_ROTATION_DEG = 45.0
MAX_LOCAL_SHIFT_MM = 40.0  # the midface refinement corrects a face shape (and a whole-head fit 20-30 mm off), it does not relocate the head
# Quality gate: midface specificity (see midface_specificity). Measured on real heads the
# project did not make (Colin27, a single-subject T1, pydeface's average; each as it comes and
# posed, regridded and remapped to T2- and FLAIR-like contrast): 0.45-0.80; on noise, a phantom
# and a torso-like volume: -0.12-0.12. The threshold sits between them (docs/extraction.md: the quality gate).
MIN_QUALITY = 0.3
SPECIFICITY_SHIFT_MM = 8.0
HEAD_BELOW_SINUS_FLOOR_MM = 10.0  # how much of the head below the sinus floor the whole-head fit uses


@dataclass
class RegistrationResult:
    """Reference -> input mapping and how well it fits.

    ``matrix_lps`` is a 4x4 homogeneous matrix mapping reference physical points (LPS mm) to input
    physical points (LPS mm); ``global_matrix_lps`` is the whole-head fit before the midface
    refinement. ``quality`` is the fit's specificity in the midface (see :func:`midface_specificity`):
    0 when moving the fit by a few millimetres matches the reference as well (no anatomy was
    matched), towards 1 when the match is sharp; ``midface_nmi`` the normalised mutual information
    at the fit.
    """

    matrix_lps: np.ndarray
    global_matrix_lps: np.ndarray
    quality: float
    midface_nmi: float
    metric_value: float
    seconds: float
    stages: list = field(default_factory=list)
    fill: sitk.Image | None = None  # the input's blank fill (see :func:`fill_mask`), 2 mm grid

    def map_points_lps(self, points_lps: np.ndarray) -> np.ndarray:
        """Reference points (N x 3, LPS mm) in the input's physical space."""
        return points_lps @ self.matrix_lps[:3, :3].T + self.matrix_lps[:3, 3]

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
            "quality_definition": (f"midface specificity: 1 - (mean normalised mutual information with the fit moved by "
                                   f"{SPECIFICITY_SHIFT_MM:g} mm along each axis) / (that of the fit); 0 = nothing anatomy-specific matched"),
            "midface_nmi": round(float(self.midface_nmi), 4),
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


# Blank fill: regions of one exact value (zero padding beyond the field of view, defacing masks,
# zeroed background) are not anatomy. Left in, their edge is an intensity step that mutual
# information matches to the chin or the top of the reference head: a scan cut at the sinus floor
# and padded with zeros was squashed by 20-35 % along the cut. Thin parts (nostrils, a sinus
# ostium) are opened away first, so an air cavity that happens to be exactly zero is not fill.
FILL_OPENING_MM = 6.0
FILL_MARGIN_VOXELS = 2  # working-copy voxels around the fill that its smoothed edge reaches


def fill_mask(image: sitk.Image, spacing: float = WORK_SPACING_MM) -> sitk.Image:
    """uint8 mask on a ``spacing`` mm grid (the working copy's): 1 where ``image`` is blank fill.

    Blank fill is the part of the voxels holding exactly the image's minimum value that, after a
    morphological opening of :data:`FILL_OPENING_MM`, is connected to the image border.
    """
    in_spacing = np.asarray(image.GetSpacing())
    size = np.ceil(np.asarray(image.GetSize()) * in_spacing / spacing).astype(int)
    nearest = sitk.Resample(image, [int(s) for s in size], sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                            [spacing] * 3, image.GetDirection(), 0.0, image.GetPixelID())
    array = sitk.GetArrayViewFromImage(nearest)
    flat = array == array.min()
    out = np.zeros(flat.shape, np.uint8)
    if flat.any():
        radius = max(int(round(FILL_OPENING_MM / spacing / 2)), 1)
        opened = ndi.binary_opening(flat, ndi.generate_binary_structure(3, 1), iterations=radius)
        labels, count = ndi.label(opened)
        if count:
            border = np.unique(np.concatenate([labels[[0, -1]].ravel(), labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))
            out = np.isin(labels, border[border > 0]).astype(np.uint8)
    mask = sitk.GetImageFromArray(out)
    mask.CopyInformation(nearest)
    return mask


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


def _register(fixed: dict, moving: dict, initial: sitk.Transform, shrinks, iterations, sampling, fixed_mask=None,
              moving_mask=None):
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
        if moving_mask is not None:
            reg.SetMetricMovingMask(moving_mask)
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


# Starts of the rigid stage besides the centres of mass: shifts (mm) and nods about the left-right
# axis (degrees). A scan that ends at the sinus floor or the forehead has its centre of mass
# 20-40 mm from the full reference head's, and heads are scanned tilted forward or back; a fit
# started from the centres of mass alone settled on a shifted or tilted head (measured on posed
# copies of real heads: the right start lowers the coarse metric clearly, by 0.1 or more).
RIGID_STARTS = tuple((nod, shift) for nod in (0.0, 15.0, -15.0)  # (nod in degrees, shift in mm along the reference's axes)
                     for shift in ((0.0, 0.0, 0.0), (0.0, 0.0, 25.0), (0.0, 0.0, -25.0), (0.0, 25.0, 0.0), (0.0, -25.0, 0.0)))
MIDFACE_START_SHIFTS_MM = ((0.0, 0.0, 0.0), (0.0, 0.0, 15.0), (0.0, 0.0, -15.0), (0.0, 15.0, 0.0), (0.0, -15.0, 0.0))
MIDFACE_START_ITERATIONS = 30
RIGID_START_ITERATIONS = 30  # per start on the coarsest level; the best start is then refined
RIGID_START_SAMPLING = 0.15
# When the fit from the best rigid start fails the checks, the next-best starts are carried through
# the whole pipeline, and of the fits that pass, the one with the sharpest midface match (highest
# quality) is kept, not the first. On T2-like heads against the T1 reference the coarse metric at
# times ranks starts 20-35 mm off first (even a start 4 mm from the truth drifts away), though the
# finer stages find the head from a start ranked lower: the 2 of 41 Colin27 T2-like heads refused
# in the transfer check (quality 0.10) registered from the 3rd and 4th starts (centres within 6 mm,
# quality 0.44 and 0.31). Costs nothing for a head that passes at once; one that needs a fallback,
# or a scan that is no head, pays all these fits (about 10 s).
RIGID_FALLBACK_STARTS = 4


def _ranked_fits(fixed: dict, moving: dict, starts: list, shrink: int, iterations: int, sampling: float,
                 fixed_mask, moving_mask) -> list[sitk.Transform]:
    """Short fits from each of ``starts`` on one pyramid level, best (lowest metric) first.

    The starts run side by side in threads (ITK releases the GIL), each on one ITK thread as
    always, so the result is the same as one after the other: every start is independent, and
    fits with equal metrics keep the order given.
    """
    def fit(start: sitk.Transform) -> tuple:
        fitted, value, _ = _register(fixed, moving, start, [shrink], iterations, [sampling],
                                     fixed_mask=fixed_mask, moving_mask=moving_mask)
        return fitted, value

    workers = min(len(starts), os.cpu_count() or 1)
    with _single_threaded_itk(), ThreadPoolExecutor(workers) as pool:  # held across all starts: no thread restores it early
        fits = list(pool.map(fit, starts))
    return [fitted for fitted, _ in sorted(fits, key=lambda fit: fit[1])]


def _shifted(transform: sitk.Transform, shift_mm) -> sitk.Transform:
    """A copy of a rigid or affine ``transform`` whose output is moved by ``shift_mm``."""
    out = transform.__class__(transform)
    out.SetTranslation((np.asarray(transform.GetTranslation()) + shift_mm).tolist())
    return out


def _rigid_starts(fixed: dict, moving: dict, initial: sitk.Euler3DTransform, fixed_mask, moving_mask) -> list[sitk.Transform]:
    """Short rigid fits from every start of :data:`RIGID_STARTS`, best first (to be refined)."""
    starts = []
    for nod, shift in RIGID_STARTS:
        start = _shifted(initial, shift)
        start.SetRotation(np.radians(nod), 0.0, 0.0)
        starts.append(start)
    return _ranked_fits(fixed, moving, starts, 4, RIGID_START_ITERATIONS, RIGID_START_SAMPLING, fixed_mask, moving_mask)


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


def midface_nmi(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, mask: np.ndarray, bins: int = 32) -> float:
    """Normalised mutual information of ``fixed`` and ``moving`` (mapped by ``transform``) where ``mask``.

    Returns (H(A) + H(B) - H(A, B)) / min(H(A), H(B)): 0 for unrelated intensities, 1 when one
    image determines the other. Works across MRI contrasts, unlike a correlation. ``mask`` is a
    boolean array in ``fixed``'s numpy order.
    """
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0)
    a = sitk.GetArrayViewFromImage(fixed)[mask]
    b = sitk.GetArrayViewFromImage(warped)[mask]
    joint, _, _ = np.histogram2d(a, b, bins=bins, range=[[0, 1], [0, 1]])
    p = joint / max(joint.sum(), 1)

    def entropy(q):
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    ha, hb, hab = entropy(p.sum(1)), entropy(p.sum(0)), entropy(p.ravel())
    return (ha + hb - hab) / max(min(ha, hb), 1e-9)


def midface_specificity(fixed: sitk.Image, moving: sitk.Image, matrix_lps: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(specificity, NMI) of the fit ``matrix_lps`` (reference -> input, LPS) in the midface.

    The NMI of a real head against the average reference is low (0.08-0.15 for single subjects,
    as low as a phantom's), so its level cannot tell a head from something else. Its peak can: a
    fit that matched anatomy loses about half its NMI when moved by :data:`SPECIFICITY_SHIFT_MM`,
    a fit of noise, a phantom or a body part that is not a head loses little (measured: real
    heads in any pose and contrast 0.45-0.80; noise, phantom, torso -0.1-0.12).
    """
    def nmi(shift_mm: np.ndarray) -> float:
        transform = sitk.AffineTransform(3)
        transform.SetMatrix(matrix_lps[:3, :3].ravel().tolist())
        transform.SetTranslation((matrix_lps[:3, 3] + matrix_lps[:3, :3] @ shift_mm).tolist())
        return midface_nmi(fixed, moving, transform, mask)

    at_fit = nmi(np.zeros(3))
    moved = [nmi(sign * SPECIFICITY_SHIFT_MM * axis) for axis in np.eye(3) for sign in (1.0, -1.0)]
    return 1.0 - float(np.mean(moved)) / max(at_fit, 1e-9), at_fit


@functools.lru_cache(maxsize=2)
def _fixed_side(reference: ReferenceHead) -> tuple:
    """The reference's pyramid, midface mask, upper-head mask and midface sub-image, once per process."""
    fixed = _working_copy(reference.image)
    midface_lps = np.diag([-1.0, -1.0, 1.0]) @ reference.midface_center_ras
    midface = _box_mask(fixed, midface_lps, reference.midface_half_size_mm)
    # whole-head stages: the head above the sinus floor, what head MRIs show (many end there)
    # the template's own dark sinus cores, not the reference sinus (SinusAnomalyLib.sinusatlas): the
    # fit must not change when the reference sinus is rebuilt from other heads
    core = reference.meta["template_core"]
    floor_ras = min(core[s]["center_ras_mm"][2] - core[s]["extent_ras_mm"][2] / 2 for s in ("left", "right"))
    bottom = floor_ras - HEAD_BELOW_SINUS_FLOOR_MM
    center = np.asarray(fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()]))
    extent = np.asarray(fixed.GetSize()) * np.asarray(fixed.GetSpacing())
    top = center[2] + extent[2]
    upper_head = _box_mask(fixed, np.array([center[0], center[1], (bottom + top) / 2]),
                           np.array([extent[0], extent[1], (top - bottom) / 2]))
    # the midface's bounding box of the 2 mm copy: quality measures resample only this
    inside = np.argwhere(sitk.GetArrayViewFromImage(midface).transpose(2, 1, 0) > 0)
    lo, hi = inside.min(0), inside.max(0) + 1
    midface_image = fixed[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]
    midface_in_box = sitk.GetArrayFromImage(midface[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]) > 0
    return _pyramid(fixed), midface, upper_head, (midface_image, midface_in_box)


def register_to_reference(
    image: sitk.Image, reference: ReferenceHead, source: str = "image", refine_midface: bool = True, check: bool = True
) -> RegistrationResult:
    """Register ``image`` (any pose, spacing, orientation) to ``reference``.

    ``refine_midface=False`` stops after the whole-head affine stage (for comparisons only);
    ``check=False`` leaves :func:`check_plausible` to the caller.

    Raises :class:`RegistrationError` naming ``source`` when the fit fails or is implausible.
    """
    start = time.perf_counter()
    fixed, midface_mask, upper_head, (midface_image, midface_in_box) = _fixed_side(reference)
    midface_lps = np.diag([-1.0, -1.0, 1.0]) @ reference.midface_center_ras
    moving = _pyramid(_working_copy(image))
    # the metric ignores blank fill, grown by the working copy's smoothing
    fill = fill_mask(image)
    content = sitk.BinaryDilate(fill, [FILL_MARGIN_VOXELS] * 3) == 0
    try:
        initial = sitk.CenteredTransformInitializer(
            fixed[1], moving[1], sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.MOMENTS
        )
        rigid_starts = _rigid_starts(fixed, moving, initial, upper_head, content)
    except RuntimeError as exc:
        raise RegistrationError(source, _explain_itk_failure(str(exc))) from exc
    head_center = np.asarray(initial.GetCenter())

    def whole_head(rigid_start: sitk.Transform) -> tuple[sitk.AffineTransform, float, list]:
        """The rigid fit refined from ``rigid_start``, then the affine whole-head fit: (fit, metric, stages)."""
        rigid, value, iters = _register(fixed, moving, rigid_start, [4, 2], 100, [0.3, 0.06], fixed_mask=upper_head,
                                        moving_mask=content)
        stages = [{"stage": "rigid", "metric": round(value, 5), "iterations": iters}]
        affine_init = _as_affine(rigid, head_center)
        whole, value, iters = _register(fixed, moving, affine_init, [4, 2], 100, [0.3, 0.06], fixed_mask=upper_head,
                                        moving_mask=content)
        whole = _as_affine(whole, head_center)
        stage = {"stage": "affine whole head", "metric": round(value, 5), "iterations": iters}
        runaway = scaling_problem(affine_to_matrix(whole))
        if runaway:
            # the affine fit at times runs off into a stretched head (seen once in 450 synthetic
            # heads: scales 2.97/1.26/0.68 from a good rigid fit); the midface stage then starts
            # from the rigid fit, which is a head of the right size to within the plausible range
            stage["rejected"] = f"{runaway}; the midface fit starts from the rigid one"
            whole = affine_init
        return whole, value, stages + [stage]

    def result_from(local: sitk.Transform, whole: sitk.Transform, value: float, stages: list) -> RegistrationResult:
        matrix = affine_to_matrix(local)
        specificity, nmi = midface_specificity(midface_image, moving[1], matrix, midface_in_box)
        return RegistrationResult(matrix_lps=matrix, global_matrix_lps=affine_to_matrix(whole), quality=specificity,
                                  midface_nmi=nmi, metric_value=value, seconds=0.0, stages=stages, fill=fill)

    def midface(starts: list, whole: sitk.Transform, stages: list) -> RegistrationResult:
        best = starts[0] if len(starts) == 1 else _ranked_fits(
            fixed, moving, starts, 2, MIDFACE_START_ITERATIONS, 0.5, midface_mask, content)[0]
        local, value, iters = _register(fixed, moving, best, [2, 1], 100, [0.5, 0.2], fixed_mask=midface_mask,
                                        moving_mask=content)
        stage = {"stage": "affine midface", "metric": round(value, 5), "iterations": iters, "starts": len(starts)}
        return result_from(_as_affine(local, midface_lps), whole, value, stages + [stage])

    def fit_from(rigid_start: sitk.Transform) -> RegistrationResult:
        whole, value, stages = whole_head(rigid_start)
        if not refine_midface:
            return result_from(whole, whole, value, stages)
        from_whole = _as_affine(whole, midface_lps)
        result = midface([from_whole], whole, stages)
        if plausibility_problem(result, reference):
            # the whole-head fit of a head cut inside the sinuses, in another contrast, was at times
            # 20-30 mm off, too far for one start: shifted starts, kept only if their fit is plausible
            try:
                retried = midface([_shifted(from_whole, shift) for shift in MIDFACE_START_SHIFTS_MM], whole, stages)
            except RuntimeError:  # a start that left the scan: the first fit's problem is the one to report
                retried = None
            if retried is not None and not plausibility_problem(retried, reference):
                result = retried
        return result

    try:
        result = fit_from(rigid_starts[0])
    except RuntimeError as exc:
        raise RegistrationError(source, _explain_itk_failure(str(exc))) from exc
    if refine_midface and plausibility_problem(result, reference):
        passing = []
        for rank, rigid_start in enumerate(rigid_starts[1:1 + RIGID_FALLBACK_STARTS], start=2):
            try:
                candidate = fit_from(rigid_start)
            except RuntimeError:  # this start's fit left the scan; the first fit's problem stays the one to report
                continue
            if not plausibility_problem(candidate, reference):
                candidate.stages.append({"stage": "fallback", "rigid_start_rank": rank})
                passing.append(candidate)
        if passing:  # the sharpest midface match of those that pass, not the first (the earlier on a tie)
            result = max(passing, key=lambda fit: fit.quality)
    if check:
        check_plausible(result, reference, source)
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


def check_plausible(result: RegistrationResult, reference: ReferenceHead, source: str) -> None:
    """Raise :class:`RegistrationError` for an implausible scale, rotation or midface shift, or a fit
    below the quality gate (:func:`plausibility_problem`)."""
    problem = plausibility_problem(result, reference)
    if problem:
        raise RegistrationError(source, problem)


def scaling_problem(matrix_lps: np.ndarray) -> str | None:
    """The scale factors of a 4 x 4 fit outside :data:`SCALE_RANGE`, in words, or None."""
    scales = np.linalg.svd(matrix_lps[:3, :3], compute_uv=False)
    if scales.min() < SCALE_RANGE[0] or scales.max() > SCALE_RANGE[1]:
        return f"implausible scaling {np.round(scales, 2).tolist()} (expected {SCALE_RANGE[0]}-{SCALE_RANGE[1]})"
    return None


def plausibility_problem(result: RegistrationResult, reference: ReferenceHead) -> str | None:
    """What is implausible about a fit, in words, or None."""
    scaling = scaling_problem(result.matrix_lps)
    if scaling:
        return f"{scaling}: is this a head MRI?"
    angle = rotation_angle_deg(result.rotation_lps)
    if angle > MAX_ROTATION_DEG:
        return f"implausible rotation of {angle:.0f} degrees from the reference pose"
    global_map = result.global_matrix_lps
    for side in ("left", "right"):
        c = reference.center_lps(side)
        shift = np.linalg.norm(result.map_point_lps(c) - (global_map[:3, :3] @ c + global_map[:3, 3]))
        if shift > MAX_LOCAL_SHIFT_MM:
            return f"the midface refinement moved the {side} sinus by {shift:.0f} mm from the whole-head fit"
    if result.quality < MIN_QUALITY:
        return (f"no head-like match in the midface (specificity {result.quality:.2f} < {MIN_QUALITY}): "
                "is this a head MRI with the face in view?")
    return None

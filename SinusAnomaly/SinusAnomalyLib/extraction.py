"""Locating both maxillary sinuses and cutting comparable 64 mm crops (the paper's Figure 1a).

The head is registered to the reference (:mod:`.registration`); each side's reference sinus (built
from real heads' cavities, :mod:`.sinusatlas`) is then moved onto the scan's own air cavity where
there is enough air (:mod:`.sinusrefine`); its centre is mapped into the input's world space, and
a 64 x 64 x 64 grid of 1 mm voxels is laid around each
centre with its axes along the reference's axes as seen in the input (the rotation part of the
registration). Crops of a head in any pose, spacing or orientation therefore show the same
anatomy in the same array orientation, at true 1 mm. Array axes follow the reference's RAS axes
(axis 0: towards the patient's right, 1: anterior, 2: superior; nibabel order). The right crop is
mirrored along axis 0 so both sides look like a left sinus; its NIfTI affine still places every
voxel where it was sampled in the input.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import __version__
from .errors import ImageError, RegistrationError
from .fileio import write_json_atomic
from .geometry import lps_to_ras
from .imageio import read_image, write_image
from .reference import SIDES, ReferenceHead, cavity_points_lps, load_reference
from .registration import RegistrationResult, check_plausible, register_to_reference
from .sinusrefine import SideRefinement, refine_side

CROP_SIZE = 64
CROP_SPACING_MM = 1.0
PERCENTILES = (1.0, 99.0)
# Coverage: the share of a side's sinus cavity (the reference's, mapped into the scan) that the
# scan shows, i.e. that lies inside its field of view and not in blank fill. Colin27, whose field
# of view ends at the sinus floor, shows 0.8-0.9 of each cavity. Below MIN_COVERAGE a side gets no
# verdict ("not assessable"); below COVERAGE_WARNING the result carries a warning.
MIN_COVERAGE = 0.5
COVERAGE_WARNING = 0.9


@dataclass
class SinusExtraction:
    """Both sinus crops of one head and where they came from."""

    source: str
    crops: dict  # side -> sitk.Image (64^3 float32 in [0, 1], physical placement in the input's space)
    centers_ras: dict  # side -> np.ndarray (3,), world RAS mm of the input
    registration: RegistrationResult
    reference_sha256: str
    coverage: dict  # side -> float in [0, 1], see :func:`cavity_shown`
    refinements: dict  # side -> SideRefinement: the reference sinus moved onto the scan's air (zero shift: not moved)

    def side_matrix_lps(self, side: str) -> np.ndarray:
        """4x4 reference -> input mapping (LPS) of the side's sinus: the registration after the side's shift."""
        matrix = self.registration.matrix_lps.copy()
        matrix[:3, 3] += matrix[:3, :3] @ self.refinements[side].shift_lps
        return matrix

    def map_cavity_lps(self, points_lps: np.ndarray, side: str) -> np.ndarray:
        """Reference points of the side's sinus (N x 3, LPS) in the input's physical space."""
        matrix = self.side_matrix_lps(side)
        return points_lps @ matrix[:3, :3].T + matrix[:3, 3]

    def assessable(self, side: str) -> bool:
        """Whether enough of the side's sinus is in view for a verdict."""
        return self.coverage[side] >= MIN_COVERAGE

    def arrays(self) -> dict:
        """side -> float32 array (64, 64, 64) indexed [i, j, k] along the reference's RAS axes."""
        return {side: sitk.GetArrayFromImage(img).transpose(2, 1, 0).copy() for side, img in self.crops.items()}

    def summary(self) -> dict:
        """The content of ``extraction.json``."""
        out = {"source": self.source, "version": __version__}
        for side in SIDES:
            out[side] = {
                "center_ras_mm": [round(float(v), 3) for v in self.centers_ras[side]],
                "crop_file": f"{side}_crop.nii.gz",
                "mirrored": side == "right",
                "affine_ras": crop_affine_ras(self.crops[side]).round(6).tolist(),
                "coverage": round(float(self.coverage[side]), 4),
                "assessable": self.assessable(side),
                "placement": self.refinements[side].summary(),
            }
        out["crop"] = {
            "size_voxels": [CROP_SIZE] * 3,
            "spacing_mm": CROP_SPACING_MM,
            "axes": "reference RAS axes (0: right, 1: anterior, 2: superior); right crop mirrored along axis 0",
            "intensity": f"percentiles {PERCENTILES[0]:g}/{PERCENTILES[1]:g} of each crop mapped to 0/1, clipped",
        }
        out["reference_sha256"] = self.reference_sha256
        out["registration"] = self.registration.summary()
        return out


def crop_affine_ras(crop: sitk.Image) -> np.ndarray:
    """4x4 voxel (i, j, k) -> world RAS mm matrix of a crop (the NIfTI affine it is written with)."""
    direction = np.asarray(crop.GetDirection()).reshape(3, 3) * np.asarray(crop.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction
    affine[:3, 3] = lps_to_ras(np.asarray(crop.GetOrigin()))
    return affine


def grid_from_affine_ras(affine_ras, size: int = CROP_SIZE) -> sitk.Image:
    """Empty ``size``^3 image whose voxels sit where a crop with NIfTI affine ``affine_ras`` has them."""
    affine = np.asarray(affine_ras, dtype=float)
    linear = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]  # voxel -> LPS
    spacing = np.linalg.norm(linear, axis=0)
    grid = sitk.Image([int(size)] * 3, sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection((linear / spacing).ravel().tolist())
    grid.SetOrigin((np.diag([-1.0, -1.0, 1.0]) @ affine[:3, 3]).tolist())
    return grid


def crop_grid(center_lps: np.ndarray, rotation_lps: np.ndarray) -> sitk.Image:
    """Empty 64^3 image of 1 mm voxels centred on ``center_lps`` with axes along the reference RAS axes.

    ``rotation_lps`` maps reference directions to input directions (LPS). Array axis i of the crop
    points along reference RAS axis i, i.e. LPS direction (-1, -1, +1) * e_i.
    """
    direction = rotation_lps @ np.diag([-1.0, -1.0, 1.0])
    half = (CROP_SIZE - 1) / 2.0 * CROP_SPACING_MM
    origin = center_lps - direction @ np.full(3, half)
    grid = sitk.Image([CROP_SIZE] * 3, sitk.sitkFloat32)
    grid.SetSpacing([CROP_SPACING_MM] * 3)
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    return grid


def mirror_axis0(image: sitk.Image) -> sitk.Image:
    """Reverse array axis 0 while every voxel keeps its physical position.

    The voxel data are flipped and the geometry compensates (first direction column negated,
    origin moved to the former last voxel), so a viewer shows the mirrored crop exactly where it
    was sampled. (``sitk.Flip`` instead moves the content in physical space.)
    """
    array = sitk.GetArrayFromImage(image)[:, :, ::-1]  # numpy order is (k, j, i)
    out = sitk.GetImageFromArray(np.ascontiguousarray(array))
    direction = np.asarray(image.GetDirection()).reshape(3, 3).copy()
    last = image.TransformIndexToPhysicalPoint((image.GetSize()[0] - 1, 0, 0))
    direction[:, 0] *= -1
    out.SetSpacing(image.GetSpacing())
    out.SetDirection(direction.ravel().tolist())
    out.SetOrigin(last)
    return out


def normalize_percentiles(crop: sitk.Image) -> sitk.Image:
    """Map the crop's 1st/99th intensity percentiles to 0/1 and clip (the paper's [0, 1] range)."""
    array = sitk.GetArrayViewFromImage(crop)
    lo, hi = np.percentile(array, PERCENTILES)
    scaled = sitk.Clamp((crop - float(lo)) / float(max(hi - lo, 1e-6)), sitk.sitkFloat32, 0.0, 1.0)
    return scaled


def _grid_index_points(image: sitk.Image, grid: sitk.Image, step: int = 1) -> np.ndarray:
    """Continuous indices in ``image`` of every ``step``-th voxel of ``grid`` (N x 3)."""
    axes = [np.arange(0, CROP_SIZE, step)] * 3
    idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(float)
    g_dir = np.asarray(grid.GetDirection()).reshape(3, 3)
    points = (g_dir @ (idx * np.asarray(grid.GetSpacing())).T).T + np.asarray(grid.GetOrigin())
    return _continuous_index(image, points)


def _continuous_index(image: sitk.Image, points_lps: np.ndarray) -> np.ndarray:
    """Continuous voxel indices in ``image`` of physical points (N x 3)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    return (points_lps - np.asarray(image.GetOrigin())) @ np.linalg.inv(direction).T / np.asarray(image.GetSpacing())


def _inside(image: sitk.Image, index: np.ndarray) -> np.ndarray:
    return np.all((index >= -0.5) & (index <= np.asarray(image.GetSize()) - 0.5), axis=1)


def cavity_shown(image: sitk.Image, registration: RegistrationResult, points_lps: np.ndarray) -> np.ndarray:
    """Which of the reference cavity points ``points_lps`` (N x 3), mapped into ``image``, it shows.

    A point is shown when it lies inside the field of view and outside the blank fill (zero
    padding, a defacing mask) that the registration found (``registration.fill``). The mean is
    the side's coverage.
    """
    return shown_in_scan(image, registration.fill, registration.map_points_lps(points_lps))


def shown_in_scan(image: sitk.Image, fill: sitk.Image | None, points_lps: np.ndarray) -> np.ndarray:
    """Which input points ``points_lps`` (N x 3) ``image`` shows: inside its field of view and
    outside its blank ``fill`` (:func:`SinusAnomalyLib.registration.fill_mask`; None: no fill)."""
    shown = _inside(image, _continuous_index(image, points_lps))
    if fill is not None and shown.any():
        index = np.round(_continuous_index(fill, points_lps[shown])).astype(int)
        clipped = np.clip(index, 0, np.asarray(fill.GetSize()) - 1)
        in_fill = sitk.GetArrayViewFromImage(fill)[clipped[:, 2], clipped[:, 1], clipped[:, 0]] > 0
        shown[np.flatnonzero(shown)] = ~(_inside(fill, index) & in_fill)
    return shown


def background_value(image: sitk.Image) -> float:
    """The scan's background intensity (its 0.5th percentile): what lies outside its field of view."""
    array = sitk.GetArrayViewFromImage(image)
    return float(np.percentile(array.ravel()[:: max(array.size // 200_000, 1)], 0.5))


def _sample_crop(image: sitk.Image, grid: sitk.Image, background: float) -> sitk.Image:
    """Resample ``image`` on ``grid`` (cubic B-spline) after cutting the input down to the crop's
    bounding box: the B-spline coefficients are then computed for a small region, not the head.
    What lies outside the scan is ``background``."""
    index = _grid_index_points(image, grid, step=3)
    size = np.asarray(image.GetSize())
    if not _inside(image, index).any():
        return sitk.Image(grid.GetSize(), sitk.sitkFloat32) + background
    lo = np.clip(np.floor(index.min(0)).astype(int) - 4, 0, size - 1)
    hi = np.clip(np.ceil(index.max(0)).astype(int) + 5, lo + 1, size)
    region = image[int(lo[0]):int(hi[0]), int(lo[1]):int(hi[1]), int(lo[2]):int(hi[2])]
    crop = sitk.Resample(region, grid, sitk.Transform(), sitk.sitkBSpline, background, sitk.sitkFloat32)
    crop.CopyInformation(grid)
    return crop


def extract_sinuses(
    image: sitk.Image | str | Path, reference: ReferenceHead | None = None, source: str | None = None, refine_midface: bool = True,
    refine_sides: bool = True,
) -> SinusExtraction:
    """Register ``image`` (a path or a ``sitk.Image``), place each side's sinus on the scan's air
    (:mod:`.sinusrefine`; ``refine_sides=False`` keeps the registration's placement, for comparisons)
    and cut both sinus crops.

    Raises :class:`ImageError` for unusable input or when neither sinus is in view (coverage below
    :data:`MIN_COVERAGE` on both sides), :class:`RegistrationError` when the registration fails or
    is implausible. A side below :data:`MIN_COVERAGE` is cut all the same (what is not in view is
    the scan's background value) and marked not assessable.
    """
    if not isinstance(image, sitk.Image):
        source = source or str(image)
        image = read_image(image)
    source = source or "image"
    reference = reference or load_reference()
    reg = register_to_reference(image, reference, source, refine_midface=refine_midface, check=False)
    coverage = {side: float(cavity_shown(image, reg, cavity_points_lps(reference, side)).mean()) for side in SIDES}
    try:
        check_plausible(reg, reference, source)
        implausible = None
    except RegistrationError as exc:
        implausible = exc
    if max(coverage.values()) < MIN_COVERAGE:  # said first, with the fit's problem if it has one
        shown = ", ".join(f"{side} {100 * coverage[side]:.0f} %" for side in SIDES)
        reason = (f", and {implausible.problem}" if implausible else
                  ": does the field of view include the face, or is the scan defaced or skull-stripped?")
        raise ImageError(source, f"neither maxillary sinus is in view (coverage {shown}, at least "
                                 f"{100 * MIN_COVERAGE:.0f} % needed){reason}")
    if implausible:
        raise implausible
    shown = functools.partial(shown_in_scan, image, reg.fill)
    refinements = {side: refine_side(image, reg.matrix_lps, cavity_points_lps(reference, side), shown) if refine_sides
                   else SideRefinement(np.zeros(3), 0.0, "registration (side refinement off)") for side in SIDES}
    coverage = {side: float(shown(reg.map_points_lps(cavity_points_lps(reference, side) + refinements[side].shift_lps)).mean())
                for side in SIDES}
    rotation = reg.rotation_lps
    background = background_value(image)
    crops, centers = {}, {}
    for side in SIDES:
        center_lps = reg.map_point_lps(reference.center_lps(side) + refinements[side].shift_lps)
        crop = normalize_percentiles(_sample_crop(image, crop_grid(center_lps, rotation), background))
        if side == "right":
            crop = mirror_axis0(crop)
        crops[side] = crop
        centers[side] = lps_to_ras(center_lps)
    return SinusExtraction(source=source, crops=crops, centers_ras=centers, registration=reg,
                           reference_sha256=reference.sha256, coverage=coverage, refinements=refinements)


def save_extraction(result: SinusExtraction, out_dir: str | Path) -> Path:
    """Write ``left_crop.nii.gz``, ``right_crop.nii.gz`` and ``extraction.json`` (each atomically).

    ``extraction.json`` is written last, so its presence marks a complete extraction.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    for side in SIDES:
        write_image(result.crops[side], out_dir / summary[side]["crop_file"])
    write_json_atomic(out_dir / "extraction.json", summary)
    return out_dir / "extraction.json"


def load_extraction_summary(path: str | Path) -> dict:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ImageError(path, f"is not a readable extraction.json ({exc})") from exc

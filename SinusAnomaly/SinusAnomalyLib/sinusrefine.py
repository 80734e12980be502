"""Each side's sinus placed on the scan's own air cavity, after the registration.

The registration aligns the face; where a person's maxillary sinus sits inside that face varies
by several millimetres (the floor above all: the alveolar recess). Measured on real heads the
project did not make, the reference sinus mapped by the fit alone landed 7-9 mm above the
cavity on one (the ROBEX atlas) and 2-5 mm off on others, in both directions: no reference sinus,
however built, fits every head. But the cavity shows in every MRI contrast: air is dark in T1,
T2 and FLAIR alike. So per side:

1. the scan is sampled round the mapped reference sinus (:data:`SEARCH_MARGIN_MM` about it), but
   not beyond its roof or medial wall by more than :data:`WALL_MARGIN_MM` (those walls, the orbit
   floor and the nasal cavity's lateral wall, vary far less than the floor: dark beyond them is
   orbit, ethmoid cells or nasal cavity);
2. air is what is darker than :data:`AIR_FRACTION` of the region's median (tissue), opened to cut
   thin bridges (the ostium), and the dark component that overlaps the mapped reference sinus
   most, with its convex hull (a polyp or cyst on a wall is inside the cavity), is the cavity;
3. the reference sinus is shifted (in the reference's frame) until the centroid of its part in
   view meets the centroid of that cavity: like for like, so a field of view that ends inside the
   sinus neither pulls it up nor reads as full coverage; the search is repeated round the
   shifted sinus (a cavity well below the reference's reaches past the first region).

When there is too little air (a fully occupied sinus, a sinus out of view) or it lies more than
:data:`MAX_SHIFT_MM` off, the shift is 0: the registration's placement stands. A sinus partly
filled (a polyp at the floor, fluid) has its air off-centre; measured on synthetic heads the
shift then moves the crop 2-3 mm towards the air, and the 64 mm crop still holds the whole sinus.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

SAMPLE_SPACING_MM = 1.5
SEARCH_MARGIN_MM = 12.0
AIR_FRACTION = 0.35
MIN_AIR_ML = 1.0
MAX_SHIFT_MM = 15.0
# The roof (the orbit floor) and the medial wall (the nasal cavity's lateral wall) vary far less
# between heads than the floor and the lateral recesses: air more than this beyond the registered
# reference sinus's roof or medial wall is ethmoid cells, orbit or nasal cavity, never this sinus.
WALL_MARGIN_MM = 3.0
ITERATIONS = 6
SEARCH_ROUNDS = 3


@dataclass
class SideRefinement:
    """What the refinement did for one side."""

    shift_lps: np.ndarray  # (3,) mm in the reference's frame, added to the reference sinus's points
    air_ml: float  # volume of the cavity's air found (0 when none)
    reason: str  # "air" (shifted onto the air) or why not

    def summary(self) -> dict:
        return {"shift_ras_mm": [round(float(v), 2) for v in np.diag([-1.0, -1.0, 1.0]) @ self.shift_lps],
                "air_ml": round(float(self.air_ml), 2), "placed_by": self.reason}


def _search_grid(points_lps: np.ndarray) -> sitk.Image:
    """An axis-aligned (LPS) grid of :data:`SAMPLE_SPACING_MM` voxels round ``points_lps`` plus the margin."""
    lo = points_lps.min(0) - SEARCH_MARGIN_MM
    size = np.ceil((points_lps.max(0) + SEARCH_MARGIN_MM - lo) / SAMPLE_SPACING_MM).astype(int) + 1
    grid = sitk.Image([int(s) for s in size], sitk.sitkUInt8)
    grid.SetSpacing([SAMPLE_SPACING_MM] * 3)
    grid.SetOrigin(lo.tolist())
    return grid


def _grid_points(grid: sitk.Image) -> np.ndarray:
    """Physical points (N x 3) of every voxel of an axis-aligned ``grid``, numpy (z, y, x) order."""
    size = grid.GetSize()
    zyx = np.stack(np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij"), -1).reshape(-1, 3)
    return zyx[:, ::-1] * SAMPLE_SPACING_MM + np.asarray(grid.GetOrigin())


def find_air(image: sitk.Image, shown, cavity_input_lps: np.ndarray, within_walls) -> np.ndarray | None:
    """Points (N x 3, input LPS) of the air cavity round the mapped sinus ``cavity_input_lps``, or None.

    ``shown(points) -> bool array``: which input points the scan shows (field of view, no blank
    fill); ``within_walls(points) -> bool array``: which lie below the highest the sinus roof may be
    and lateral of the most medial its medial wall may be.
    """
    grid = _search_grid(cavity_input_lps)
    values = sitk.GetArrayFromImage(sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    points = _grid_points(grid)
    in_view = shown(points).reshape(values.shape)
    if in_view.mean() < 0.2:
        return None
    values = ndi.gaussian_filter(values, 0.7)
    index = np.round((cavity_input_lps - np.asarray(grid.GetOrigin())) / SAMPLE_SPACING_MM).astype(int)[:, ::-1]
    index = index[np.all((index >= 0) & (index < values.shape), axis=1)]
    prior = np.zeros(values.shape, bool)
    prior[tuple(index.T)] = True
    prior = ndi.binary_closing(prior, iterations=1)
    near = ndi.binary_dilation(prior, iterations=int(round(SEARCH_MARGIN_MM / SAMPLE_SPACING_MM))) & in_view
    near &= within_walls(points).reshape(near.shape)
    tissue = np.median(values[in_view])
    dark = ndi.binary_opening((values < AIR_FRACTION * tissue) & near, ndi.generate_binary_structure(3, 1))
    parts, count = ndi.label(dark)
    if count == 0:
        return None
    overlap = ndi.sum_labels(prior, parts, index=np.arange(1, count + 1))
    best = 1 + int(np.argmax(overlap))
    air = parts == best
    if overlap.max() == 0 or air.sum() * SAMPLE_SPACING_MM**3 / 1000.0 < MIN_AIR_ML:
        return None
    try:  # the convex hull (of the air's surface: the same hull, and Qhull is slow on a full voxel lattice)
        hull = ConvexHull(points[(air & ~ndi.binary_erosion(air)).ravel()])
    except QhullError:  # flat air (one slice thick): no hull to fill
        return points[air.ravel()]
    candidates = points[near.ravel()]
    inside = np.all(candidates @ hull.equations[:, :3].T + hull.equations[:, 3] <= 1e-6, axis=1)
    filled = np.zeros(air.size, bool)
    filled[np.flatnonzero(near.ravel())[inside]] = True
    return points[filled | air.ravel()]


def _follow(cavity_lps: np.ndarray, linear: np.ndarray, offset: np.ndarray, shown, target: np.ndarray,
            shift: np.ndarray) -> np.ndarray:
    """The shift (reference frame) that puts the centroid of the shown part of the shifted cavity on ``target``."""
    inverse = np.linalg.inv(linear)
    for _ in range(ITERATIONS):  # like for like: only the part in view is compared with the air
        moved = (cavity_lps + shift) @ linear.T + offset
        visible = shown(moved)
        if not visible.any():
            break
        shift = shift + inverse @ (target - moved[visible].mean(0))
    return shift


def refine_side(image: sitk.Image, matrix_lps: np.ndarray, cavity_lps: np.ndarray, shown) -> SideRefinement:
    """The shift (reference frame) that puts the reference cavity ``cavity_lps`` (N x 3, reference
    LPS) mapped by ``matrix_lps`` onto the scan's air; see the module docstring.

    The air is searched again round the shifted cavity until the shift settles (a cavity much
    larger or lower than the reference's reaches past the first search region).
    """
    linear, offset = matrix_lps[:3, :3], matrix_lps[:3, 3]
    inverse = np.linalg.inv(linear)
    roof = cavity_lps[:, 2].max() + WALL_MARGIN_MM
    lateral = np.sign(cavity_lps[:, 0].mean())  # +1: the cavity lies at +x (LPS: the patient's left)
    medial_wall = (lateral * cavity_lps[:, 0]).min() - WALL_MARGIN_MM

    def within_walls(points_input_lps: np.ndarray) -> np.ndarray:
        in_reference = (points_input_lps - offset) @ inverse.T
        return (in_reference[:, 2] <= roof) & (lateral * in_reference[:, 0] >= medial_wall)

    shift, air = np.zeros(3), None
    for _ in range(SEARCH_ROUNDS):
        found = find_air(image, shown, (cavity_lps + shift) @ linear.T + offset, within_walls)
        if found is None:
            break
        air = found
        previous, shift = shift, _follow(cavity_lps, linear, offset, shown, air.mean(0), shift)
        if np.linalg.norm(shift - previous) < 0.5 or np.linalg.norm(shift) > MAX_SHIFT_MM:
            break
    if air is None:
        return SideRefinement(np.zeros(3), 0.0, "registration (too little air found)")
    air_ml = len(air) * SAMPLE_SPACING_MM**3 / 1000.0
    if np.linalg.norm(shift) > MAX_SHIFT_MM:
        return SideRefinement(np.zeros(3), air_ml, f"registration (the air lay {np.linalg.norm(shift):.0f} mm off, "
                                                   f"more than {MAX_SHIFT_MM:g})")
    return SideRefinement(shift, air_ml, "air")

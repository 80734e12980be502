"""Lesions and bone drawn into the prepared anatomy's sinus cavities (reference space): mucosal
thickening, polyps, retention cysts, fully occupied sinuses and air-fluid levels with their sizes,
each sinus's bony wall and septum, and the lesion label image."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ..errors import SinusAnomalyError
from ..reference import SIDES, ReferenceHead
from .anatomy import ANATOMY_SPACING_MM, _anatomy, _face_weight, _tissue_layers, _white_matter
from .common import ANOMALY_TYPES, LESION_LABELS, SynthParams, _smooth_noise
from .contrast import FLUID_KINDS, FLUID_LEVELS, LESION_LEVELS, TEMPLATE_BRIGHT, WALL_LEVEL, _render

LESION_BOX_HALF_MM = 32  # lesions are drawn in a box of this half-size around each sinus
# Size ranges (mm) of the focal lesions and of thickening, each drawn log-uniformly so small ones are
# as common as in imaging series (sources in docs/synthetic-cohort.md): retention cysts' diameter
# (CBCT series: mean 6.3 +- 2.9 mm; CT series of sinus patients: mean 15.6 mm), polyps' diameter,
# and the mucosa's thickness (a normal lining is under 1 mm; thickening is graded from 2 mm up).
LESION_SIZES_MM = {"retention_cyst": (4.0, 25.0), "polyp": (4.0, 16.0), "mucosal_thickening": (2.0, 6.0)}
CYST_ON_FLOOR = 0.4  # share of retention cysts on the floor (series report 29-50 %); the others on any wall


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _draw_lesion(rng: np.random.Generator, cavity: np.ndarray, kind: str, floor_first: bool = False,
                 gravity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(lesion mask, lesion intensity map, size in mm) inside the boolean ``cavity`` box (1 mm
    voxels, [x, y, z]). The size is the drawn diameter of a cyst or of the largest polyp, the mean
    thickness of thickening, None for the types without one.

    ``floor_first``: mucosal thickening covers the walls only up to a random height (the floor
    always), thicker at the floor, as it often is. ``gravity``: unit vector (3,) along the box's
    index axes pointing down, needed by an air-fluid level (fluid fills the cavity from the side
    it points to up to a plane perpendicular to it).
    """
    depth = ndi.distance_transform_edt(cavity)  # mm from the wall, inside the cavity
    coords = np.indices(cavity.shape).astype(np.float32)
    texture = 1.0 + 0.08 * _smooth_noise(rng, cavity.shape, 2.0)
    size = None
    if kind == "mucosal_thickening":
        size = _log_uniform(rng, *LESION_SIZES_MM[kind])
        thickness = size * (1.0 + 0.45 * _smooth_noise(rng, cavity.shape, 6.0))
        if floor_first:
            z = np.argwhere(cavity)[:, 2]
            bottom, top = float(z.min()), float(z.max())
            height = (coords[2] - bottom) / max(top - bottom, 1.0)  # 0 at the floor, 1 at the roof
            reach = rng.uniform(0.25, 1.0)  # how far up the walls it reaches
            thickness = np.where(height <= reach, thickness * (1.0 + 1.0 * (1.0 - height / reach)), 0.0)
            lesion = cavity & (depth <= thickness)
        else:
            lesion = cavity & (depth <= np.maximum(thickness, 1.0))
        level = rng.uniform(150, 210)
    elif kind == "polyp":
        lesion = np.zeros_like(cavity)
        wall = np.argwhere(cavity & (depth <= 1.5))
        grad = np.stack(np.gradient(ndi.gaussian_filter(depth, 1.0)))
        size = 0.0
        for _ in range(int(rng.integers(1, 4))):
            anchor = wall[rng.integers(len(wall))]
            inward = grad[(slice(None), *anchor)]
            inward = inward / (np.linalg.norm(inward) + 1e-6)
            diameter = _log_uniform(rng, *LESION_SIZES_MM[kind])
            size = max(size, diameter)
            radius = diameter / 2.0
            centre = anchor + inward * radius * 0.7
            radii = radius * rng.uniform(0.8, 1.2, 3)
            lesion |= cavity & ((((coords - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1.0)
        level = rng.uniform(140, 200)
    elif kind == "retention_cyst":  # a dome: a sphere centred on the wall, cut by it
        wall = np.argwhere(cavity & (depth <= 1.5))
        if rng.random() < CYST_ON_FLOOR:
            wall = wall[wall[:, 2] <= np.percentile(wall[:, 2], 15)]
        anchor = wall[rng.integers(len(wall))]
        size = _log_uniform(rng, *LESION_SIZES_MM[kind])
        radius = size / 2.0
        lesion = cavity & (((coords - anchor[:, None, None, None].astype(np.float32)) ** 2).sum(0) <= radius**2)
        level = rng.uniform(190, 240)
        texture = np.ones_like(texture)  # a cyst is homogeneous fluid
    elif kind == "fully_occupied":
        lesion = cavity.copy()
        level = rng.uniform(120, 190)
        texture = 1.0 + 0.2 * _smooth_noise(rng, cavity.shape, 3.0)
    elif kind == "air_fluid_level":
        if gravity is None:
            raise SinusAnomalyError("an air-fluid level needs the direction of gravity")
        height = np.tensordot(np.asarray(gravity, np.float32), coords, axes=1)  # grows downwards
        fill = rng.uniform(0.2, 0.7)  # share of the cavity under fluid
        lesion = cavity & (height >= np.quantile(height[cavity], 1.0 - fill))
        level = rng.uniform(180, 235)
        texture = np.ones_like(texture)  # fluid is homogeneous
    else:
        raise SinusAnomalyError(f"unknown anomaly type '{kind}' (known: {', '.join(ANOMALY_TYPES)})")
    return lesion, level * texture, size


def _draw_bone(rng: np.random.Generator, cavity: np.ndarray, params: SynthParams) -> np.ndarray:
    """Bone inside the boolean ``cavity`` box of one sinus (1 mm voxels, [x, y, z]; index z up): a
    wall layer of random thickness along its edge and, with ``params.septum_rate``, a septum (a
    plate 1-2 mm thick rising from the floor to a random height, in a random vertical plane).
    Draws no random number when both are off."""
    bone = np.zeros_like(cavity)
    if tuple(params.wall_thickness_mm) != (0.0, 0.0):
        depth = ndi.distance_transform_edt(cavity)
        thickness = min(rng.uniform(*params.wall_thickness_mm), 0.25 * float(depth.max()))  # keep most of a small cavity
        bone |= cavity & (depth <= thickness)
    if params.septum_rate > 0 and rng.random() < params.septum_rate:
        inner = np.argwhere(cavity & ~bone & (ndi.distance_transform_edt(cavity) >= 3.0))
        if len(inner):
            through = inner[rng.integers(len(inner))].astype(np.float32)
            angle = rng.uniform(0.0, np.pi)
            normal = np.array([np.cos(angle), np.sin(angle), rng.uniform(-0.2, 0.2)], np.float32)
            normal /= np.linalg.norm(normal)
            thickness = rng.uniform(1.0, 2.0)
            coords = np.indices(cavity.shape).astype(np.float32)
            z = np.argwhere(cavity)[:, 2]
            top = z.min() + rng.uniform(0.4, 1.0) * (z.max() - z.min())
            plate = np.abs(np.tensordot(normal, coords - through[:, None, None, None], axes=1)) <= thickness / 2
            bone |= cavity & plate & (coords[2] <= top)
    return bone


def _lesioned_anatomy(reference: ReferenceHead, rng: np.random.Generator, anomalies: dict, contrast: str = "reference",
                      params: SynthParams = SynthParams(), gravity_lps: np.ndarray | None = None,
                      sizes: dict | None = None) -> tuple[sitk.Image, sitk.Image | None]:
    """The 1 mm anatomy in ``contrast`` with each sinus's bone (wall, septum; see :func:`_draw_bone`)
    and lesions drawn in, and its lesion label image (None when no sinus has a lesion).
    ``gravity_lps``: unit vector, down in the anatomy's LPS space (for air-fluid levels).
    ``sizes``: filled with side -> {"volume_ml", "size_mm"} of each drawn lesion."""
    head, cavity, _ = _anatomy(reference)
    bony = tuple(params.wall_thickness_mm) != (0.0, 0.0) or params.septum_rate > 0
    if contrast == "reference" and not bony and not any(anomalies.get(side) for side in SIDES):
        return head, None  # nothing to draw
    # drawn into through [x, y, z] views of SimpleITK's [z, y, x] arrays: no transposed copies of the whole head
    if contrast == "reference":
        voxels = sitk.GetArrayFromImage(head)
    else:
        level, fraction = _tissue_layers(reference)
        voxels = _render(level, rng, contrast, _white_matter(reference), fraction, _face_weight(reference))
    array = voxels.transpose(2, 1, 0)
    gravity = None if gravity_lps is None else np.asarray(head.GetDirection()).reshape(3, 3).T @ gravity_lps  # along the index axes
    label_voxels = np.zeros(voxels.shape, np.uint8)
    labels = label_voxels.transpose(2, 1, 0)
    for side in SIDES:
        kind = anomalies.get(side)
        if not kind and not bony:
            continue
        centre_idx = np.round(head.TransformPhysicalPointToContinuousIndex(reference.center_lps(side).tolist())).astype(int)
        box = tuple(slice(max(c - LESION_BOX_HALF_MM, 0), c + LESION_BOX_HALF_MM) for c in centre_idx)
        sinus = cavity[box] == LESION_LABELS[side]
        if bony:
            bone = _draw_bone(rng, sinus, params)
            soft = ndi.gaussian_filter(bone.astype(np.float32), 0.6)
            array[box] = array[box] * (1.0 - soft) + rng.uniform(*WALL_LEVEL) * TEMPLATE_BRIGHT * soft
            sinus &= ~bone
        if not kind:
            continue
        lesion, intensity, size_mm = _draw_lesion(rng, sinus, kind, params.floor_first_thickening, gravity)
        if sizes is not None:
            sizes[side] = {"volume_ml": round(float(lesion.sum()) * ANATOMY_SPACING_MM**3 / 1000.0, 4),
                           "size_mm": None if size_mm is None else round(size_mm, 2)}
        if contrast != "reference":  # the drawn level is the template's; rescale to this contrast's
            low, high = (FLUID_LEVELS if kind in FLUID_KINDS else LESION_LEVELS)[contrast]
            intensity = intensity / float(np.median(intensity)) * rng.uniform(low, high) * TEMPLATE_BRIGHT
        soft = ndi.gaussian_filter(lesion.astype(np.float32), 0.6)  # partial-volume edge
        array[box] = array[box] * (1.0 - soft) + intensity * soft
        labels[box][lesion] = LESION_LABELS[side]
    out = sitk.GetImageFromArray(voxels.astype(np.float32, copy=False))
    out.CopyInformation(head)
    if not label_voxels.any():
        return out, None
    lab = sitk.GetImageFromArray(label_voxels)
    lab.CopyInformation(head)
    return out, lab

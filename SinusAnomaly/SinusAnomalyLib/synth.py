"""Synthetic cohort: head MRIs made from the reference head, with maxillary sinus lesions of known extent.

Real clinical data are private, so this is the project's default data. Each head:

1. Anatomy: the reference head at 1 mm with both maxillary sinus cavities (slightly dilated, as a
   real adult sinus is larger than the blurred average template's) made into dark air, as on FLAIR.
2. Lesions drawn into the cavities in reference space, bright tissue in dark air like the
   paper's Figure 1b: mucosal thickening (a shell of random, uneven thickness along the wall),
   polyps (rounded masses grown from the wall), retention cysts (smooth domes on a wall, often
   the floor) and fully occupied sinuses (the whole cavity filled, heterogeneous); sizes from the
   literature, small ones included (:data:`LESION_SIZES_MM`, docs/synthetic-cohort.md); opt-in, air-fluid
   levels (fluid in the dependent part below a level horizontal in the scanner), and per sinus a
   bony wall of random thickness and a septum (see :class:`SynthParams`).
3. Shape and pose: a smooth random displacement field over the head plus a local one around the
   midface (a patient's face differs in shape from the reference), a global anisotropic scale,
   a rotation about a random axis and a translation; resampled onto a grid of random spacing
   (0.9-2 mm, anisotropic) and orientation (RAS-like, LPS-like or oblique).
4. Intensity: a smooth multiplicative bias field, Rician noise, random gain and gamma.

Ground truth: the lesion label map on the image's grid (1 = left lesion, 2 = right lesion) and the
true sinus centres: centroids of the deformed, posed cavities in the image's world RAS mm.
Everything is deterministic given the random generator; case ``i`` of a cohort with seed ``s``
uses ``numpy.random.default_rng([s, i])`` and so does not depend on the cohort's size.
"""
from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from .errors import DatasetError, SinusAnomalyError
from .fileio import write_csv_atomic, write_json_atomic
from .geometry import lps_to_ras
from .imageio import write_image
from .reference import ANATOMIES, SIDES, ReferenceHead, load_anatomy, load_reference

ANOMALY_TYPES = ("mucosal_thickening", "polyp", "retention_cyst", "fully_occupied", "air_fluid_level")
# The demo cohort's types; air-fluid levels are opt-in, as one more type changes every head's random draws.
DEFAULT_ANOMALY_TYPES = ANOMALY_TYPES[:4]
LESION_LABELS = {"left": 1, "right": 2}
ANATOMY_SPACING_MM = 1.0
AIR_LEVEL = 4.0  # reference units (uint8 scale of the template)
OUT_OF_VIEW = -1.0  # resampled value of points outside the anatomy's grid (intensities are >= 0)
LESION_BOX_HALF_MM = 32  # lesions are drawn in a box of this half-size around each sinus
# Size ranges (mm) of the focal lesions and of thickening, each drawn log-uniformly so small ones are
# as common as in imaging series (sources in docs/synthetic-cohort.md): retention cysts' diameter
# (CBCT series: mean 6.3 +- 2.9 mm; CT series of sinus patients: mean 15.6 mm), polyps' diameter,
# and the mucosa's thickness (a normal lining is under 1 mm; thickening is graded from 2 mm up).
LESION_SIZES_MM = {"retention_cyst": (4.0, 25.0), "polyp": (4.0, 16.0), "mucosal_thickening": (2.0, 6.0)}
CYST_ON_FLOOR = 0.4  # share of retention cysts on the floor (series report 29-50 %); the others on any wall


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(np.exp(rng.uniform(np.log(low), np.log(high))))


@dataclass
class SynthParams:
    """Knobs of the synthetic heads (defaults: moderate variation, as in the demo cohort)."""

    deformation_mm: float = 4.0  # amplitude of the smooth shape change (global and midface)
    max_rotation_deg: float = 15.0
    max_translation_mm: float = 20.0
    spacing_range_mm: tuple = (0.9, 2.0)
    anisotropic: bool = True
    max_scale_change: float = 0.08  # global anisotropic scale within 1 +- this
    noise_std: float = 0.03  # Rician noise, fraction of the bright-tissue intensity
    bias_strength: float = 0.3  # bias field within about exp(+-this)
    anomaly_rate: float = 0.55  # fraction of patients with at least one anomalous sinus
    # Opt-in variety (the defaults make the demo's cohort as before):
    anatomies: tuple = ("reference",)  # each head built from one of these (reference.ANATOMIES)
    contrasts: tuple = ("reference",)  # each head rendered in one of these (see CONTRASTS)
    sinus_scale_range: tuple = (1.0, 1.0)  # per sinus and axis, at its centre (~80 % of it at the walls): size, shape, asymmetry
    floor_first_thickening: bool = False  # mucosal thickening often partial, from the floor up
    anomaly_types: tuple = DEFAULT_ANOMALY_TYPES  # types an anomalous sinus draws from (ANOMALY_TYPES)
    sinus_shape_mm: float = 0.0  # per sinus: amplitude of its own smooth shape change (lobes, left/right asymmetry)
    wall_thickness_mm: tuple = (0.0, 0.0)  # per sinus: a bony wall this thick (random in range) inside the cavity's edge
    septum_rate: float = 0.0  # chance that a sinus has a septum (a thin bony wall rising from its floor)


@dataclass
class SyntheticCase:
    """One synthetic head and its ground truth."""

    patient: str
    image: sitk.Image  # float32
    lesion_labels: sitk.Image  # uint8 on the image's grid: 1 left lesion, 2 right lesion
    centers_ras: dict  # side -> np.ndarray (3,), world RAS mm of the image
    anomalies: dict  # side -> anomaly type or None
    pose: dict = field(default_factory=dict)
    lesion_sizes: dict = field(default_factory=dict)  # side -> {"volume_ml", "size_mm"} of its lesion (anatomy space)


# --------------------------------------------------------------------------- anatomy

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


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Smooth noise in [-1, 1]-ish with correlation length ``sigma`` voxels."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / (np.abs(field_).max() + 1e-6)


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


# Other MRI contrasts made from a T1 head by remapping its intensities (scaled so the bright tissue
# is 1): piecewise-linear maps (T1 value -> new value) over the T1 tissue ranges (air and bone
# below 0.1, CSF about 0.2-0.3, grey matter 0.45, white matter 0.6, fat and marrow above 0.8).
# T2: CSF bright, grey above white matter; FLAIR (the paper's contrast): CSF dark, grey above white.
CONTRAST_MAPS = {
    "t1": None,
    "t2": ((0.0, 0.0), (0.08, 0.04), (0.2, 0.9), (0.35, 0.8), (0.5, 0.6), (0.65, 0.42), (0.8, 0.7), (1.0, 0.8)),
    "flair": ((0.0, 0.0), (0.08, 0.04), (0.3, 0.1), (0.45, 0.62), (0.6, 0.45), (0.8, 0.72), (1.0, 0.78)),
}
# The face round the sinuses holds other tissues in the same T1 ranges: muscle (about 0.3-0.6 of
# the bright tissue) where the brain has grey matter, and fat and marrow above. Muscle is dark on
# T2 and FLAIR, where grey matter is bright; fat stays fairly bright; fluid (the eye's vitreous,
# T1 about 0.15) is bright on T2 and suppressed on FLAIR. So mucosa and fluid are the brightest
# things next to a sinus on T2, as radiologists read them, not as bright as the muscle round it.
FACE_CONTRAST_MAPS = {
    "t1": None,
    "t2": ((0.0, 0.0), (0.08, 0.04), (0.18, 0.6), (0.3, 0.32), (0.55, 0.3), (0.75, 0.5), (1.0, 0.68)),
    "flair": ((0.0, 0.0), (0.08, 0.04), (0.2, 0.1), (0.35, 0.3), (0.55, 0.36), (0.8, 0.62), (1.0, 0.72)),
}
FACE_MM = (30.0, 50.0)  # the face maps apply up to the first distance from either cavity, fading into the brain's by the second


# Contrasts a head can be rendered in. "reference": the template's T1 tissue with bright lesions (the
# demo cohort's look, FLAIR-like lesions); "t1", "t2", "flair": the tissue remapped as in
# CONTRAST_MAPS (FACE_CONTRAST_MAPS round the sinuses) with per-head random changes of every
# control point (in the spirit of SynthSeg), and lesions at a level relative to the bright tissue
# typical of that contrast: mucosa and fluid are intermediate on T1 and bright on T2 and FLAIR
# (fraction of the bright tissue, low-high); fluid
# (retention cysts, air-fluid levels) is darker on T1, brighter on T2, and on FLAIR anywhere from
# suppressed to bright with its protein content. Each lesion's level is drawn per case.
CONTRASTS = ("reference", "t1", "t2", "flair")
LESION_LEVELS = {"t1": (0.35, 0.6), "t2": (0.75, 1.0), "flair": (0.6, 0.9)}
FLUID_LEVELS = {"t1": (0.15, 0.45), "t2": (0.85, 1.1), "flair": (0.3, 0.85)}
FLUID_KINDS = ("retention_cyst", "air_fluid_level")
WALL_LEVEL = (0.04, 0.15)  # bony walls and septa: cortical bone gives little signal in any contrast (fraction of the bright tissue)
CONTRAST_JITTER = 0.08  # +- on each control point's output value
TEMPLATE_BRIGHT = 255.0  # reference units of the bright tissue (uint8 template: 255 = 99.9th percentile)


WHITE_MATTER_LEVEL = 0.6  # where CONTRAST_MAPS expect white matter (fraction of the bright tissue)


def _jittered_map(rng: np.random.Generator, mapping) -> tuple[np.ndarray, np.ndarray]:
    """Control points (x, y) of ``mapping`` (None: identity) with each output moved by up to
    :data:`CONTRAST_JITTER`, air kept dark."""
    mapping = mapping or ((0.0, 0.0), (0.2, 0.2), (0.45, 0.45), (0.6, 0.6), (1.0, 1.0))
    xs = np.array([x for x, _ in mapping])
    ys = np.clip(np.array([y for _, y in mapping]) + rng.uniform(-CONTRAST_JITTER, CONTRAST_JITTER, len(mapping)), 0.0, 1.2)
    ys[0] = 0.0
    return xs, ys


def _render(array: np.ndarray, rng: np.random.Generator, contrast: str, white_matter: float = WHITE_MATTER_LEVEL * TEMPLATE_BRIGHT,
            tissue_fraction: np.ndarray | None = None, face_weight: np.ndarray | None = None) -> np.ndarray:
    """Template-unit T1 anatomy ``array`` in ``contrast`` (template units); "reference" as is.

    ``white_matter`` is the anatomy's white-matter intensity: heads scaled by their brightest
    voxels (fat, vessels, artefacts) put their tissues elsewhere than the maps expect.
    ``tissue_fraction`` (same shape, in [0, 1]): the share of each voxel that its tissue fills, the
    rest being air; ``array`` is then the tissue's own level (see :func:`_tissue_layers`).
    ``face_weight`` (same shape, in [0, 1]): where :data:`FACE_CONTRAST_MAPS` apply instead of
    :data:`CONTRAST_MAPS` (see :func:`_face_weight`); None: the brain's maps everywhere.
    """
    if contrast == "reference":
        return array
    scaled = array * (WHITE_MATTER_LEVEL / max(white_matter, 1e-6))
    rendered = np.interp(scaled, *_jittered_map(rng, CONTRAST_MAPS[contrast]))
    if face_weight is not None and FACE_CONTRAST_MAPS[contrast] is not None:
        face = np.interp(scaled, *_jittered_map(rng, FACE_CONTRAST_MAPS[contrast]))
        rendered += face_weight * (face - rendered)
    rendered *= TEMPLATE_BRIGHT
    if tissue_fraction is not None:
        rendered *= tissue_fraction  # the air share of a voxel is dark in every contrast
    return rendered.astype(np.float32)


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


# --------------------------------------------------------------------------- shape and pose

def _random_rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.0, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


SINUS_SCALE_WINDOW_MM = 25.0  # Gaussian window of a sinus's own size change: ~0.8 at its walls; no folding for scales 0.7-1.3
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


def _bias_field(rng: np.random.Generator, shape, strength: float) -> np.ndarray:
    """exp of a random quadratic polynomial over the volume: a smooth intensity inhomogeneity."""
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    coeff = rng.uniform(-1, 1, len(terms)) * strength / 2.0
    return np.exp(sum(c * t for c, t in zip(coeff, terms)))


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


def _choose(rng: np.random.Generator, options: tuple, known: tuple, what: str) -> str:
    """One of ``options`` at random; no random number is drawn when there is one option."""
    choice = options[int(rng.integers(len(options)))] if len(options) > 1 else options[0]
    if choice not in known:
        raise SinusAnomalyError(f"unknown {what} '{choice}' (known: {', '.join(known)})")
    return choice


def random_anomalies(rng: np.random.Generator, anomaly_rate: float, types: tuple = DEFAULT_ANOMALY_TYPES) -> dict:
    """None, one or both sides anomalous; ``types`` equally likely."""
    anomalies = {"left": None, "right": None}
    if rng.random() < anomaly_rate:
        sides = [SIDES[int(rng.integers(2))]] if rng.random() < 0.5 else list(SIDES)
        for side in sides:
            anomalies[side] = _choose(rng, tuple(types), ANOMALY_TYPES, "anomaly type")
    return anomalies


def _random_pose(rng: np.random.Generator, params: SynthParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rotation 3 x 3, translation mm (3,), anisotropic scale (3,)) of a head in the scanner."""
    rotation = _random_rotation(rng, params.max_rotation_deg)
    translation = rng.uniform(-1, 1, 3) * params.max_translation_mm
    scale = 1.0 + rng.uniform(-params.max_scale_change, params.max_scale_change, 3)
    return rotation, translation, scale


# Down for a supine patient: towards the scanner's posterior, +y in LPS (an air-fluid level's fluid lies there).
SCANNER_GRAVITY_LPS = np.array([0.0, 1.0, 0.0])


def make_case(patient: str, rng: np.random.Generator, params: SynthParams = SynthParams(), anomalies: dict | None = None,
              reference: ReferenceHead | None = None) -> SyntheticCase:
    """One synthetic head with ground truth (see the module docstring)."""
    if anomalies is None:
        anomalies = random_anomalies(rng, params.anomaly_rate, params.anomaly_types)
    anatomy_name = _choose(rng, params.anatomies, ANATOMIES, "anatomy")
    contrast = _choose(rng, params.contrasts, CONTRASTS, "contrast")
    # ``reference`` below is the head this case is built from: the reference or another anatomy
    reference = (reference or load_reference()) if anatomy_name == "reference" else load_anatomy(anatomy_name)
    # An air-fluid level is horizontal in the scanner, so its head's pose is drawn before its lesions; other heads
    # keep the draw order of the default cohort. Gravity in the anatomy: the normal of a plane perpendicular to
    # it in the scanner, pulled back through rotation and scale (the smooth deformation tilts it slightly).
    pose_first = _random_pose(rng, params) if "air_fluid_level" in anomalies.values() else None
    gravity_lps = None
    if pose_first is not None:
        gravity_lps = pose_first[2] * (pose_first[0].T @ SCANNER_GRAVITY_LPS)
        gravity_lps /= np.linalg.norm(gravity_lps)
    sizes: dict = {}
    anatomy, lesions = _lesioned_anatomy(reference, rng, anomalies, contrast, params, gravity_lps, sizes)
    _, _, head_mask = _anatomy(reference)

    # pull transform: image point -> reference point = deformation(scale(rigid^-1(point)))
    head_centre = np.asarray(anatomy.TransformContinuousIndexToPhysicalPoint((np.asarray(anatomy.GetSize()) - 1) / 2.0))
    rotation, translation, scale = pose_first or _random_pose(rng, params)
    inverse_pose = sitk.AffineTransform(3)
    inverse_pose.SetCenter(head_centre.tolist())
    inverse_pose.SetMatrix((np.diag(1.0 / scale) @ rotation.T).ravel().tolist())
    inverse_pose.SetTranslation((-(rotation.T @ translation)).tolist())
    deformation = _displacement(reference, rng, params.deformation_mm, params.sinus_scale_range, params.sinus_shape_mm)
    pull = sitk.CompositeTransform([deformation, inverse_pose])  # the last added is applied first

    def forward(point_lps):  # reference -> image, ignoring the (small) deformation
        return rotation @ (scale * (point_lps - head_centre)) + head_centre + translation

    corners = np.argwhere(head_mask[::8, ::8, ::8]) * 8
    head_points = np.array([anatomy.TransformIndexToPhysicalPoint([int(v) for v in c]) for c in corners])
    grid = _output_grid(rng, params, np.array([forward(p) for p in head_points]))
    # outside the anatomy's grid: -1, never an intensity; a real head's field of view ends there
    image = sitk.Resample(anatomy, grid, pull, sitk.sitkLinear, OUT_OF_VIEW, sitk.sitkFloat32)
    if lesions is None:  # what resampling an empty label map would give
        lesion_labels = sitk.Image(grid.GetSize(), sitk.sitkUInt8)
        lesion_labels.CopyInformation(grid)
    else:
        lesion_labels = sitk.Resample(lesions, grid, pull, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    centers = {side: _true_centre(reference, side, pull, forward(reference.center_lps(side))) for side in SIDES}

    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    out_of_view = array == OUT_OF_VIEW
    array[out_of_view] = 0.0
    array *= _bias_field(rng, array.shape, params.bias_strength)
    bright = float(np.percentile(array[array > 20], 95)) if (array > 20).any() else 1.0
    sigma = params.noise_std * bright
    array = np.sqrt((array + rng.normal(0, sigma, array.shape)) ** 2 + rng.normal(0, sigma, array.shape) ** 2)  # Rician
    gamma = rng.uniform(0.85, 1.2)
    gain = rng.uniform(2.0, 8.0)
    array = (gain * bright * (array / bright) ** gamma).astype(np.float32)
    if anatomy_name != "reference":  # a real head's field of view ends in the face: beyond it, zero padding
        array[out_of_view] = 0.0
    out = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    out.CopyInformation(grid)
    pose = {
        "rotation_deg": round(float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1) / 2, -1, 1)))), 2),
        "translation_mm": [round(float(v), 2) for v in translation],
        "scale": [round(float(v), 4) for v in scale],
        "spacing_mm": [round(float(v), 3) for v in grid.GetSpacing()],
        "direction": [round(float(v), 4) for v in grid.GetDirection()],
        "deformation_mm": params.deformation_mm,
        "anatomy": anatomy_name,
        "contrast": contrast,
    }
    return SyntheticCase(patient, out, lesion_labels, centers, dict(anomalies), pose, sizes)


# --------------------------------------------------------------------------- variants of real heads

def remap_contrast(image: sitk.Image, contrast: str) -> sitk.Image:
    """A T1 head rendered T2- or FLAIR-like (:data:`CONTRAST_MAPS`), float32 in about [0, 1]."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    bright = float(np.percentile(array[array > np.percentile(array, 60)], 99))
    scaled = np.clip(array / max(bright, 1e-6), 0.0, 1.2)
    mapping = CONTRAST_MAPS[contrast]
    if mapping is not None:
        scaled = np.interp(scaled, *zip(*mapping)).astype(np.float32)
    out = sitk.GetImageFromArray(scaled)
    out.CopyInformation(image)
    return out


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


# --------------------------------------------------------------------------- cohort

def _suffix(index: int) -> str:
    """Mostly NIfTI; some NRRD and MetaImage so every reader gets exercised."""
    if index % 7 == 3:
        return ".nrrd"
    if index % 11 == 5:
        return ".mha"
    return ".nii.gz"


def save_preview(case: SyntheticCase, path: Path) -> Path:
    """Axial, coronal and sagittal slices through each sinus centre with the lesion outline (PNG)."""
    # a Figure with its own Agg canvas: no pyplot, so the host's plotting backend (Slicer, Jupyter) is untouched
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    from .fileio import atomic_path  # noqa: PLC0415

    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    for row, side in enumerate(SIDES):
        box = sitk.Image([64, 64, 64], sitk.sitkFloat32)  # world-aligned RAS view around the true centre
        box.SetDirection(np.diag([-1.0, -1.0, 1.0]).ravel().tolist())
        centre_lps = np.diag([-1.0, -1.0, 1.0]) @ case.centers_ras[side]
        box.SetOrigin((centre_lps - np.diag([-1.0, -1.0, 1.0]) @ np.full(3, 31.5)).tolist())
        view = sitk.GetArrayFromImage(sitk.Resample(case.image, box, sitk.Transform(), sitk.sitkLinear, 0.0)).transpose(2, 1, 0)
        mask = sitk.GetArrayFromImage(sitk.Resample(case.lesion_labels, box, sitk.Transform(), sitk.sitkNearestNeighbor, 0)).transpose(2, 1, 0)
        vmax = np.percentile(view, 99.5)
        for col, (name, take) in enumerate((("axial", lambda a: a[:, :, 32].T), ("coronal", lambda a: a[:, 32, :].T),
                                            ("sagittal", lambda a: a[32, :, :].T))):
            ax = axes[row, col]
            ax.imshow(take(view), cmap="gray", origin="lower", vmin=0, vmax=vmax)
            if (take(mask) > 0).any():
                ax.contour(take(mask) > 0, levels=[0.5], colors="r", linewidths=0.8)
            ax.set_title(f"{side}: {case.anomalies[side] or 'normal'} ({name})", fontsize=8)
            ax.axis("off")
    fig.suptitle(f"{case.patient} (true centres; red: lesion mask)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    return path


def _claim_folder(settings_path: Path, seed: int, params: SynthParams) -> None:
    """Record the cohort's seed and parameters, or refuse a folder made with other ones."""
    wanted = json.loads(json.dumps({"seed": seed, "params": asdict(params)}))  # tuples as JSON lists
    if settings_path.is_file():
        made = json.loads(settings_path.read_text())
        # a knob the folder's record lacks was added since: that folder was made with its default
        made_params = json.loads(json.dumps(asdict(SynthParams()))) | (made.get("params") or {})
        differing = [f"seed {made.get('seed')}"] if made.get("seed") != seed else []
        differing += [f"{name} {value}" for name, value in made_params.items() if wanted["params"].get(name) != value]
        if differing:
            raise DatasetError(
                f"{settings_path.parent} holds a synthetic cohort made with other settings ({', '.join(differing)}); "
                "use a new output folder, or the same seed and options to resume it")
        return
    write_json_atomic(settings_path, wanted)


UNLABELLED_PREFIX = "synth-u"  # unlabelled heads: synth-u0000, ...; labelled ones are synth-0000, ...
UNLABELLED_STREAM = 1  # an unlabelled head's seed is [seed, index, 1]: a random stream apart from the labelled heads'


def generate_cohort(out_dir: str | Path, n_cases: int, seed: int, params: SynthParams = SynthParams(), progress: bool = True,
                    previews: int = 4, n_unlabelled: int = 0) -> Path:
    """Write a cohort of ``n_cases`` heads (see docs/synthetic-cohort.md: images/, masks/, labels.csv, truth.json, previews/).

    With ``n_unlabelled``, also that many heads of the same kind (same lesion mix) whose labels are
    withheld: ``synth-u0000``, ... in images/ and masks/, listed in ``unlabelled.csv``
    (``patient,image``), never in ``labels.csv``; their truth goes to ``unlabelled_truth.json``
    (for checking only). They draw from random streams of their own, so the labelled heads are the
    same with or without them.

    Resumable: a case whose image, mask and truth entry exist is not made again (``truth.json`` is
    rewritten atomically after every case, ``labels.csv`` at the end); resuming with another seed
    or other settings is refused rather than mixing two cohorts. ``synth.json`` records the seed
    and parameters before the first case, so resuming with other settings (which would mix heads
    of two cohorts) raises :class:`DatasetError`.
    """
    if n_cases < 1:
        raise SinusAnomalyError(f"--cases must be at least 1 (got {n_cases})")
    if n_unlabelled < 0:
        raise SinusAnomalyError(f"--unlabelled must be at least 0 (got {n_unlabelled})")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    _claim_folder(out_dir / "synth.json", seed, params)
    truth = _write_heads(out_dir, out_dir / "truth.json", "synth-", n_cases, lambda index: [seed, index], params,
                         "synthetic heads", progress, previews)
    unlabelled = _write_heads(out_dir, out_dir / "unlabelled_truth.json", UNLABELLED_PREFIX, n_unlabelled,
                              lambda index: [seed, index, UNLABELLED_STREAM], params, "unlabelled heads", progress) if n_unlabelled else {}
    write_json_atomic(out_dir / "synth.json", {"seed": seed, "cases": n_cases, "params": asdict(params),
                                               **({"unlabelled": n_unlabelled} if n_unlabelled else {})})
    rows = [[patient, side, int(entry[side]["anomaly"] is not None), entry[side]["anomaly"] or "normal", Path(entry["image"]).name]
            for patient, entry in truth.items() for side in SIDES]
    write_csv_atomic(out_dir / "labels.csv", ["patient", "side", "label", "anomaly_type", "image"], rows)
    if n_unlabelled:
        write_csv_atomic(out_dir / "unlabelled.csv", ["patient", "image"],
                         [[patient, Path(entry["image"]).name] for patient, entry in unlabelled.items()])
    return out_dir


def stored_as_integers(image: sitk.Image) -> sitk.Image:
    """``image`` rounded to int16, as scanners store MRI: a third of float32's file, written three
    times as fast (a float's noisy low bits do not compress)."""
    array = sitk.GetArrayViewFromImage(image)
    if array.max() > np.iinfo(np.int16).max or array.min() < np.iinfo(np.int16).min:
        raise SinusAnomalyError(f"intensities {array.min():.0f}..{array.max():.0f} do not fit in int16")
    return sitk.Cast(sitk.Round(image), sitk.sitkInt16)


def _write_heads(out_dir: Path, truth_path: Path, prefix: str, n: int, seed_of, params: SynthParams, desc: str,
                 progress: bool, previews: int = 0) -> dict:
    """Make the heads ``<prefix>0000`` ... of ``n`` (those already made are kept), recording each in
    ``truth_path`` as it is written; ``seed_of(index)`` seeds head ``index``. Returns the truth of
    the ``n`` heads, sorted by patient. Previews of up to ``previews`` anomalous heads in total."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    truth = json.loads(truth_path.read_text()) if truth_path.is_file() else {}
    reference = load_reference()
    shown = sum(1 for p in (out_dir / "previews").glob("*.png")) if (out_dir / "previews").is_dir() else 0
    for index in tqdm(range(n), desc=desc, unit="head", disable=not progress):
        patient = f"{prefix}{index:04d}"
        image_name = f"{patient}{_suffix(index)}"
        mask_name = f"{patient}_lesions.nii.gz"
        if patient in truth and (out_dir / "images" / image_name).is_file() and (out_dir / "masks" / mask_name).is_file():
            continue
        case = make_case(patient, np.random.default_rng(seed_of(index)), params, reference=reference)
        write_image(stored_as_integers(case.image), out_dir / "images" / image_name)
        write_image(case.lesion_labels, out_dir / "masks" / mask_name)
        truth[patient] = {
            "image": f"images/{image_name}",
            "lesion_mask": f"masks/{mask_name}",
            **{side: {"center_ras_mm": [round(float(v), 3) for v in case.centers_ras[side]], "anomaly": case.anomalies[side],
                      **({"lesion": case.lesion_sizes[side]} if side in case.lesion_sizes else {})}
               for side in SIDES},
            "pose": case.pose,
        }
        write_json_atomic(truth_path, {k: truth[k] for k in sorted(truth)})
        if shown < previews and any(case.anomalies.values()):
            save_preview(case, out_dir / "previews" / f"{patient}.png")
            shown += 1
    truth = {k: v for k, v in sorted(truth.items()) if int(k[len(prefix):]) < n}
    write_json_atomic(truth_path, truth)
    return truth

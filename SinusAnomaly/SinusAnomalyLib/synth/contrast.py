"""Contrast rendering: a T1 head's intensities remapped T1-, T2- or FLAIR-like (per-head jittered
maps, the face's own maps round the sinuses), the lesion and bone levels of each contrast, and the
scanner's smooth bias field."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

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
    rest being air; ``array`` is then the tissue's own level (see :func:`.anatomy._tissue_layers`).
    ``face_weight`` (same shape, in [0, 1]): where :data:`FACE_CONTRAST_MAPS` apply instead of
    :data:`CONTRAST_MAPS` (see :func:`.anatomy._face_weight`); None: the brain's maps everywhere.
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


def _bias_field(rng: np.random.Generator, shape, strength: float) -> np.ndarray:
    """exp of a random quadratic polynomial over the volume: a smooth intensity inhomogeneity."""
    axes = [np.linspace(-1, 1, s, dtype=np.float32) for s in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    terms = [x, y, z, x * y, x * z, y * z, x * x - 0.33, y * y - 0.33, z * z - 0.33]
    coeff = rng.uniform(-1, 1, len(terms)) * strength / 2.0
    return np.exp(sum(c * t for c, t in zip(coeff, terms)))

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

The package, one job a module: :mod:`.anatomy` prepares each anatomy (1 mm head with air-filled
cavities, cavity labels, head mask, tissue layers; cached), :mod:`.contrast` renders contrasts
(intensity maps, lesion and bone levels, bias field), :mod:`.lesions` draws lesions and bone,
:mod:`.pose` the shape change, pose, output grid and true centres (and :func:`pose_variant` for real
heads), :mod:`.case` puts one head together (:func:`make_case`), :mod:`.preview` draws its PNG,
:mod:`.cohort` writes a cohort (:func:`generate_cohort`); :mod:`.common` holds what they share
(:class:`SynthParams`, :class:`SyntheticCase`, the anomaly types and label values).
"""
from __future__ import annotations

from .anatomy import AIR_CEILING, AIR_LEVEL, ANATOMY_SPACING_MM, TISSUE_FLOOR
from .case import OUT_OF_VIEW, SCANNER_GRAVITY_LPS, make_case, random_anomalies
from .cohort import UNLABELLED_PREFIX, UNLABELLED_STREAM, generate_cohort, stored_as_integers
from .common import ANOMALY_TYPES, DEFAULT_ANOMALY_TYPES, LESION_LABELS, SyntheticCase, SynthParams
from .contrast import (CONTRAST_JITTER, CONTRAST_MAPS, CONTRASTS, FACE_CONTRAST_MAPS, FACE_MM, FLUID_KINDS, FLUID_LEVELS,
                       LESION_LEVELS, TEMPLATE_BRIGHT, WALL_LEVEL, WHITE_MATTER_LEVEL, remap_contrast)
from .lesions import CYST_ON_FLOOR, LESION_BOX_HALF_MM, LESION_SIZES_MM
from .pose import SINUS_SCALE_LIMITS, SINUS_SCALE_WINDOW_MM, SINUS_SHAPE_LENGTH_MM, SINUS_SHAPE_WINDOW_MM, pose_variant
from .preview import save_preview

__all__ = [
    "AIR_CEILING", "AIR_LEVEL", "ANATOMY_SPACING_MM", "ANOMALY_TYPES", "CONTRASTS", "CONTRAST_JITTER", "CONTRAST_MAPS",
    "CYST_ON_FLOOR", "DEFAULT_ANOMALY_TYPES", "FACE_CONTRAST_MAPS", "FACE_MM", "FLUID_KINDS", "FLUID_LEVELS",
    "LESION_BOX_HALF_MM", "LESION_LABELS", "LESION_LEVELS", "LESION_SIZES_MM", "OUT_OF_VIEW", "SCANNER_GRAVITY_LPS",
    "SINUS_SCALE_LIMITS", "SINUS_SCALE_WINDOW_MM", "SINUS_SHAPE_LENGTH_MM", "SINUS_SHAPE_WINDOW_MM", "SynthParams",
    "SyntheticCase", "TEMPLATE_BRIGHT", "TISSUE_FLOOR", "UNLABELLED_PREFIX", "UNLABELLED_STREAM", "WALL_LEVEL",
    "WHITE_MATTER_LEVEL", "generate_cohort", "make_case", "pose_variant", "random_anomalies", "remap_contrast",
    "save_preview", "stored_as_integers",
]

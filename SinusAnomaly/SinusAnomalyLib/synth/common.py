"""What every step of a synthetic head shares: its knobs (:class:`SynthParams`), the head it makes
with its truth (:class:`SyntheticCase`), the anomaly types and lesion label values, and the smooth
random field shapes and textures are drawn from."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

ANOMALY_TYPES = ("mucosal_thickening", "polyp", "retention_cyst", "fully_occupied", "air_fluid_level")
# The demo cohort's types; air-fluid levels are opt-in, as one more type changes every head's random draws.
DEFAULT_ANOMALY_TYPES = ANOMALY_TYPES[:4]
LESION_LABELS = {"left": 1, "right": 2}


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


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Smooth noise in [-1, 1]-ish with correlation length ``sigma`` voxels."""
    field_ = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field_ / (np.abs(field_).max() + 1e-6)

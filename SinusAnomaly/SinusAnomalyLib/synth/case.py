"""One synthetic head: draws its anomalies, anatomy, contrast and pose, and puts the steps together
(lesioned anatomy, deformation and pose, the scanner's grid, bias, noise, gain and gamma) into a
:class:`SyntheticCase` with its ground truth."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..errors import SinusAnomalyError
from ..reference import ANATOMIES, SIDES, ReferenceHead, load_anatomy, load_reference
from .anatomy import _anatomy
from .common import ANOMALY_TYPES, DEFAULT_ANOMALY_TYPES, SyntheticCase, SynthParams
from .contrast import CONTRASTS, _bias_field
from .lesions import _lesioned_anatomy
from .pose import _displacement, _output_grid, _random_pose, _true_centre

OUT_OF_VIEW = -1.0  # resampled value of points outside the anatomy's grid (intensities are >= 0)


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


# Down for a supine patient: towards the scanner's posterior, +y in LPS (an air-fluid level's fluid lies there).
SCANNER_GRAVITY_LPS = np.array([0.0, 1.0, 0.0])


def make_case(patient: str, rng: np.random.Generator, params: SynthParams = SynthParams(), anomalies: dict | None = None,
              reference: ReferenceHead | None = None) -> SyntheticCase:
    """One synthetic head with ground truth (see the package docstring, :mod:`SinusAnomalyLib.synth`)."""
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

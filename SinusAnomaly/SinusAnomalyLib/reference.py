"""The reference head: a reduced copy of pydeface's average T1 head with both sinus centres.

Files in ``SinusAnomaly/Resources/Reference`` (made by ``Resources/Scripts/make_reference_head.py``):
``reference_head.nii.gz`` (uint8, axis-aligned, 1.5 mm), ``reference_sinus_labels.nii.gz``
(1 = left, 2 = right maxillary sinus air cavity) and ``reference.json`` (centres in world RAS mm,
cavity extents, the midface region used by the local registration refinement).
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .resultformat import SIDES  # noqa: F401  (re-exported: the sides every module iterates)
RESOURCES_ENV = "SINUS_ANOMALY_RESOURCES"


def resources_dir() -> Path:
    """The module's ``Resources`` folder (overridable with $SINUS_ANOMALY_RESOURCES): inside the
    package when installed from a wheel (pyproject.toml), else beside it (the Slicer module, a checkout)."""
    override = os.environ.get(RESOURCES_ENV)
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    return package / "Resources" if (package / "Resources").is_dir() else package.parent / "Resources"


@dataclass(frozen=True, eq=False)  # hashed by identity: one loaded reference per process
class ReferenceHead:
    """The reference head and its landmarks. Coordinates are world RAS millimetres."""

    image: sitk.Image  # float32, LPS physical space as SimpleITK keeps it
    sinus_labels: sitk.Image  # uint8, 1 = left, 2 = right cavity
    centers_ras: dict  # side -> np.ndarray (3,)
    midface_center_ras: np.ndarray
    midface_half_size_mm: np.ndarray
    sha256: str
    meta: dict

    def center_lps(self, side: str) -> np.ndarray:
        return np.diag([-1.0, -1.0, 1.0]) @ self.centers_ras[side]


@functools.lru_cache(maxsize=4)
def cavity_points_lps(reference: ReferenceHead, side: str) -> np.ndarray:
    """Physical points (N x 3, LPS mm) of the side's sinus cavity voxels in the reference."""
    labels = sitk.GetArrayViewFromImage(reference.sinus_labels).transpose(2, 1, 0)
    index = np.argwhere(labels == SIDES.index(side) + 1).astype(float)
    direction = np.asarray(reference.sinus_labels.GetDirection()).reshape(3, 3)
    return (index * np.asarray(reference.sinus_labels.GetSpacing())) @ direction.T + np.asarray(reference.sinus_labels.GetOrigin())


@functools.lru_cache(maxsize=2)
def load_reference(folder: str | None = None) -> ReferenceHead:
    """Load (once per process) the reference head shipped with the module."""
    root = Path(folder) if folder else resources_dir() / "Reference"
    head_path = root / "reference_head.nii.gz"
    meta = json.loads((root / "reference.json").read_text())
    image = sitk.Cast(sitk.ReadImage(str(head_path)), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(root / "reference_sinus_labels.nii.gz"), sitk.sitkUInt8)
    return ReferenceHead(
        image=image,
        sinus_labels=labels,
        centers_ras={s: np.asarray(meta[s]["center_ras_mm"], float) for s in SIDES},
        midface_center_ras=np.asarray(meta["midface_region"]["center_ras_mm"], float),
        midface_half_size_mm=np.asarray(meta["midface_region"]["half_size_mm"], float),
        sha256=hashlib.sha256(head_path.read_bytes()).hexdigest(),
        meta=meta,
    )


# Heads with annotated maxillary sinus cavities the synthetic cohort can be built from: the
# reference, and the real heads of Resources/Anatomies (Resources/Scripts/make_real_heads.py).
# Colin27 and the single-subject T1 end inside the sinuses (their cavities are the visible parts);
# the ROBEX atlas shows both whole.
ANATOMIES = ("reference", "colin27", "single_subject_t1", "robex_atlas")


@functools.lru_cache(maxsize=4)
def load_anatomy(name: str) -> ReferenceHead:
    """One of :data:`ANATOMIES` as a :class:`ReferenceHead` (image, cavity labels, centres)."""
    if name == "reference":
        return load_reference()
    if name not in ANATOMIES:
        raise ValueError(f"unknown anatomy '{name}' (known: {', '.join(ANATOMIES)})")
    root = resources_dir() / "Anatomies"
    meta = json.loads((root / "real_heads.json").read_text())["heads"][name]
    head_path = root / meta["file"]
    centres = {side: np.asarray(meta[side]["visible_center_ras_mm"], float) for side in SIDES}
    return ReferenceHead(
        image=sitk.Cast(sitk.ReadImage(str(head_path)), sitk.sitkFloat32),
        sinus_labels=sitk.ReadImage(str(root / meta["labels_file"]), sitk.sitkUInt8),
        centers_ras=centres,
        midface_center_ras=np.mean([centres[side] for side in SIDES], axis=0),
        midface_half_size_mm=load_reference().midface_half_size_mm,
        sha256=hashlib.sha256(head_path.read_bytes()).hexdigest(),
        meta=meta,
    )


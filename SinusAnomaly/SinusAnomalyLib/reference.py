"""The reference head: a reduced copy of pydeface's average T1 head, and the reference sinus.

Files in ``SinusAnomaly/Resources/Reference``:

* ``reference_head.nii.gz`` (uint8, axis-aligned, 1.5 mm; ``Resources/Scripts/make_reference_head.py``);
* ``reference_sinus_atlas.nii.gz``: the reference sinus (1 = left, 2 = right), built from real
  heads' cavities mapped through the registration (:mod:`.sinusatlas`,
  ``Resources/Scripts/make_reference_sinus.py``): what crops are centred on, coverage is measured
  against, and the synthetic cohort paints the reference anatomy's sinuses from;
* ``reference_sinus_labels.nii.gz``: the average's own dark sinus cores, too small and too high
  (5.4 mL), kept as the prior the reference sinus is built with (:func:`load_template_cores`);
* ``reference.json``: centres, extents and volumes of both (``left``/``right``: the reference
  sinus; ``template_core``: the average's cores), and the midface region of the registration.
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


def label_points_lps(labels: sitk.Image, value: int) -> np.ndarray:
    """Physical points (N x 3, LPS mm) of the voxels of ``labels`` holding ``value``."""
    index = np.argwhere(sitk.GetArrayViewFromImage(labels).transpose(2, 1, 0) == value).astype(float)
    direction = np.asarray(labels.GetDirection()).reshape(3, 3)
    return (index * np.asarray(labels.GetSpacing())) @ direction.T + np.asarray(labels.GetOrigin())


@functools.lru_cache(maxsize=4)
def cavity_points_lps(reference: ReferenceHead, side: str) -> np.ndarray:
    """Physical points (N x 3, LPS mm) of the side's sinus cavity voxels in the reference."""
    return label_points_lps(reference.sinus_labels, SIDES.index(side) + 1)


def _reference_head(root: Path, labels_file: str, sinus, fingerprinted: tuple) -> ReferenceHead:
    """The reference head of ``root`` with the sinus labels ``labels_file`` and the centres of
    ``sinus(meta)`` (the part of ``reference.json`` holding ``left``/``right``); ``sha256`` over the
    files named in ``fingerprinted``."""
    meta = json.loads((root / "reference.json").read_text(encoding="utf-8"))
    return ReferenceHead(
        image=sitk.Cast(sitk.ReadImage(str(root / "reference_head.nii.gz")), sitk.sitkFloat32),
        sinus_labels=sitk.ReadImage(str(root / labels_file), sitk.sitkUInt8),
        centers_ras={s: np.asarray(sinus(meta)[s]["center_ras_mm"], float) for s in SIDES},
        midface_center_ras=np.asarray(meta["midface_region"]["center_ras_mm"], float),
        midface_half_size_mm=np.asarray(meta["midface_region"]["half_size_mm"], float),
        sha256=hashlib.sha256(b"".join((root / name).read_bytes() for name in fingerprinted)).hexdigest(),
        meta=meta,
    )


@functools.lru_cache(maxsize=2)
def load_reference(folder: str | None = None) -> ReferenceHead:
    """Load (once per process) the reference head shipped with the module, with the reference sinus.

    Its ``sha256`` covers the head and the sinus crops are centred on: a bundle made with either
    changed would see other crops.
    """
    return _reference_head(Path(folder) if folder else resources_dir() / "Reference", "reference_sinus_atlas.nii.gz",
                           lambda meta: meta, ("reference_head.nii.gz", "reference_sinus_atlas.nii.gz"))


@functools.lru_cache(maxsize=1)
def load_template_cores() -> ReferenceHead:
    """The reference head with the average's own dark sinus cores as its sinus (``template_core``):
    the prior and the grid the reference sinus is built on (:mod:`.sinusatlas`)."""
    return _reference_head(resources_dir() / "Reference", "reference_sinus_labels.nii.gz",
                           lambda meta: meta["template_core"], ("reference_head.nii.gz",))


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
    meta = json.loads((root / "real_heads.json").read_text(encoding="utf-8"))["heads"][name]
    reference_meta = json.loads((resources_dir() / "Reference" / "reference.json").read_text(encoding="utf-8"))
    head_path = root / meta["file"]
    centres = {side: np.asarray(meta[side]["visible_center_ras_mm"], float) for side in SIDES}
    return ReferenceHead(
        image=sitk.Cast(sitk.ReadImage(str(head_path)), sitk.sitkFloat32),
        sinus_labels=sitk.ReadImage(str(root / meta["labels_file"]), sitk.sitkUInt8),
        centers_ras=centres,
        midface_center_ras=np.mean([centres[side] for side in SIDES], axis=0),
        midface_half_size_mm=np.asarray(reference_meta["midface_region"]["half_size_mm"], float),
        sha256=hashlib.sha256(head_path.read_bytes()).hexdigest(),
        meta=meta,
    )


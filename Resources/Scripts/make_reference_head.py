#!/usr/bin/env python
"""Build the reduced reference head shipped in ``SinusAnomaly/Resources/Reference``.

Source: the average T1 head ``pydeface/data/mean_reg2mean.nii.gz`` of the PyPI package
pydeface 2.1.0 (MIT licence, notice shipped beside the output as ``LICENSE-pydeface.txt``).

What it does, and why:

1. Resample the template onto an axis-aligned RAS grid of ``--spacing`` mm (default 1.5) in the
   file's own world frame, cropped to the head with a margin, stored as uint8. World millimetres
   are kept exactly, so centres measured on the original stay valid on the reduced copy.
2. Measure each maxillary sinus as the air cavity around a seed point: on the 1 mm original,
   lightly smoothed (Gaussian sigma 0.7 voxel), voxels darker than ``--air-threshold`` (in the
   template's raw units) inside a 61-voxel box, opened twice with a 6-connected structuring element
   (cuts the thin bridges into the nasal cavity), and the connected component holding the seed.
   The threshold was chosen by scanning 30..50: below 38 the cavity shrinks to its dark core,
   above 40 the left cavity merges with the nasal cavity (its extent jumps from ~28 mm to ~48 mm).
   The centres are the centroids of these cavities in world RAS millimetres.
3. Write the sinus cavity label map (1 = left, 2 = right) on the reduced grid, and
   ``reference.json`` with centres, cavity extents and volumes, and the registration region.

Run:  python Resources/Scripts/make_reference_head.py --template PATH/mean_reg2mean.nii.gz
(or with pydeface installed, without --template).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "SinusAnomaly" / "Resources" / "Reference"
# Seeds inside each cavity (world RAS mm, +x = patient's right), read off the template by eye.
SEEDS_RAS = {"left": (-23.7, 61.9, -56.6), "right": (19.9, 58.7, -58.2)}


def find_template(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    import pydeface  # noqa: PLC0415  (only needed to locate the file)

    return Path(pydeface.__file__).parent / "data" / "mean_reg2mean.nii.gz"


def measure_cavity(data: np.ndarray, affine: np.ndarray, seed_ras, threshold: float) -> np.ndarray:
    """Boolean mask of the air cavity holding ``seed_ras`` (on the template's own grid)."""
    smooth = ndi.gaussian_filter(data, 0.7)
    ijk = np.round(np.linalg.inv(affine) @ np.r_[seed_ras, 1.0]).astype(int)[:3]
    half = 30
    box = tuple(slice(int(c) - half, int(c) + half + 1) for c in ijk)
    dark = ndi.binary_opening(smooth[box] < threshold, ndi.generate_binary_structure(3, 1), iterations=2)
    labels, _ = ndi.label(dark)
    seed_label = labels[half, half, half]
    if seed_label == 0:
        raise SystemExit(f"seed {seed_ras} is not inside a dark cavity at threshold {threshold}")
    mask = np.zeros(data.shape, bool)
    mask[box] = labels == seed_label
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--template", help="path of mean_reg2mean.nii.gz (default: from installed pydeface)")
    parser.add_argument("--spacing", type=float, default=1.5, help="voxel size of the reduced copy (mm)")
    parser.add_argument("--air-threshold", type=float, default=38.0, help="air threshold in template units")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    template_path = find_template(args.template)
    img = nib.load(str(template_path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    affine = img.affine

    # 1. cavities on the original 1 mm grid
    cavities = {}
    for side, seed in SEEDS_RAS.items():
        mask = measure_cavity(data, affine, seed, args.air_threshold)
        ijk = np.argwhere(mask)
        ras = ijk @ affine[:3, :3].T + affine[:3, 3]
        voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
        cavities[side] = {
            "center_ras_mm": [round(float(v), 2) for v in ras.mean(0)],
            "extent_ras_mm": [round(float(v), 1) for v in ras.max(0) - ras.min(0)],
            "volume_ml": round(float(mask.sum() * voxel_ml), 2),
            "mask": mask,
        }

    # 2. reduced, axis-aligned grid covering the head with a 6 mm margin
    head = ndi.binary_opening(data > 0.1 * np.percentile(data, 99), iterations=2)
    ijk = np.argwhere(head)
    corners = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    lo_ijk, hi_ijk = ijk.min(0), ijk.max(0)
    box_ijk = lo_ijk + corners * (hi_ijk - lo_ijk)
    box_ras = box_ijk @ affine[:3, :3].T + affine[:3, 3]
    lo = np.floor(box_ras.min(0) - 6.0)
    hi = np.ceil(box_ras.max(0) + 6.0)
    shape = np.ceil((hi - lo) / args.spacing).astype(int) + 1
    out_affine = np.diag([args.spacing] * 3 + [1.0])
    out_affine[:3, 3] = lo
    # map output voxels -> template voxels and interpolate
    vox2vox = np.linalg.inv(affine) @ out_affine
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    src = vox2vox[:3, :3] @ grid + vox2vox[:3, 3:4]
    # pre-smooth to the new voxel size (anti-aliasing), then trilinear
    sigma = max(0.0, (args.spacing**2 - 1.0) ** 0.5 / 2.355)
    reduced = ndi.map_coordinates(ndi.gaussian_filter(data, sigma), src, order=1).reshape(shape)
    scale = 255.0 / float(np.percentile(data, 99.9))
    reduced_u8 = np.clip(np.round(reduced * scale), 0, 255).astype(np.uint8)
    labels = np.zeros(shape, np.uint8)
    for value, side in ((1, "left"), (2, "right")):
        frac = ndi.map_coordinates(cavities[side]["mask"].astype(np.float32), src, order=1).reshape(shape)
        labels[frac >= 0.5] = value

    args.out.mkdir(parents=True, exist_ok=True)
    head_img = nib.Nifti1Image(reduced_u8, out_affine)
    head_img.set_qform(out_affine, code=1)
    head_img.set_sform(out_affine, code=1)
    nib.save(head_img, str(args.out / "reference_head.nii.gz"))
    lab_img = nib.Nifti1Image(labels, out_affine)
    lab_img.set_qform(out_affine, code=1)
    lab_img.set_sform(out_affine, code=1)
    nib.save(lab_img, str(args.out / "reference_sinus_labels.nii.gz"))

    centres = np.array([cavities["left"]["center_ras_mm"], cavities["right"]["center_ras_mm"]])
    meta = {
        "source": "pydeface 2.1.0, pydeface/data/mean_reg2mean.nii.gz (MIT licence)",
        "source_sha256": hashlib.sha256(template_path.read_bytes()).hexdigest(),
        "frame": "world RAS millimetres of the source file (+x = patient's right)",
        "spacing_mm": args.spacing,
        "shape": [int(v) for v in shape],
        "intensity_scale": "uint8, 255 = 99.9th percentile of the template",
        "air_threshold_template_units": args.air_threshold,
        "sinus_labels": {"1": "left maxillary sinus air cavity", "2": "right maxillary sinus air cavity"},
        "left": {k: v for k, v in cavities["left"].items() if k != "mask"},
        "right": {k: v for k, v in cavities["right"].items() if k != "mask"},
        # Region for the local (midface) refinement of the registration: a box around both
        # sinuses, the nose, the maxilla and the orbit floors.
        "midface_region": {
            "center_ras_mm": [round(float(v), 1) for v in centres.mean(0)],
            "half_size_mm": [50.0, 45.0, 40.0],
        },
    }
    (args.out / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    licence = template_path.parent.parent.parent / "pydeface-2.1.0.dist-info" / "licenses" / "LICENSE.txt"
    if licence.exists():
        shutil.copy(licence, args.out / "LICENSE-pydeface.txt")
    print(json.dumps({k: meta[k] for k in ("left", "right", "shape")}, indent=2))


if __name__ == "__main__":
    main()

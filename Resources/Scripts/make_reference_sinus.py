#!/usr/bin/env python
"""Build the reference sinus (``SinusAnomaly/Resources/Reference/reference_sinus_atlas.nii.gz``).

The reference head's own sinus cavities (``reference_sinus_labels.nii.gz``, the average's dark
cores) are too small and sit too high (``SinusAnomalyLib.sinusatlas``). The reference sinus is
instead built from the real heads of ``SinusAnomaly/Resources/Anatomies``: each is registered to
the reference as a scan to classify is, its annotated cavities are mapped back onto the
reference grid, and per voxel the share of heads showing the voxel whose cavity covers it (the
average's core a half-weight prior) gives a probabilistic cavity; the reference sinus is where
it reaches 0.5. Its centroid is the crop centre; ``reference.json``'s ``left``/``right`` record
it (centre, extent, volume, the heads it was built from), ``template_core`` the average's cores.

Run:  python Resources/Scripts/make_reference_sinus.py [--without NAME ...]
(``--without`` leaves heads out, as the benchmark's leave-one-out protocol does.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "SinusAnomaly"))

from SinusAnomalyLib.reference import (ANATOMIES, SIDES, label_points_lps, load_anatomy, load_template_cores,  # noqa: E402
                                       resources_dir)
from SinusAnomalyLib.sinusatlas import MIN_PROBABILITY, PRIOR_WEIGHT, build_atlas, map_cavity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--without", nargs="*", default=[], help="real heads to leave out")
    parser.add_argument("--out", type=Path, default=resources_dir() / "Reference")
    args = parser.parse_args()
    root = resources_dir() / "Reference"
    reference = load_template_cores()
    names = [name for name in ANATOMIES if name != "reference" and name not in args.without]
    mapped = [map_cavity(load_anatomy(name), reference, name) for name in names]
    atlas = build_atlas(mapped, reference)
    args.out.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(atlas.labels, str(args.out / "reference_sinus_atlas.nii.gz"), useCompression=True)
    meta = json.loads((root / "reference.json").read_text())
    for value, side in ((1, "left"), (2, "right")):
        ras = label_points_lps(atlas.labels, value) * [-1.0, -1.0, 1.0]
        meta[side] = {"center_ras_mm": [round(float(v), 2) for v in atlas.centers_ras[side]],
                      "extent_ras_mm": [round(float(v), 1) for v in ras.max(0) - ras.min(0)],
                      "volume_ml": round(atlas.volume_ml(side), 2)}
    meta["sinus_atlas"] = {
        "file": "reference_sinus_atlas.nii.gz",
        "built_from": names,
        "rule": (f"share of the heads showing a voxel whose mapped cavity covers it, the average's core a "
                 f"{PRIOR_WEIGHT:g}-head prior; reference sinus where it is >= {MIN_PROBABILITY:g} "
                 "(largest connected part); SinusAnomalyLib.sinusatlas"),
        "command": "python Resources/Scripts/make_reference_sinus.py" + "".join(f" --without {n}" for n in args.without),
    }
    (args.out / "reference.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({side: meta[side] for side in SIDES}, indent=2))


if __name__ == "__main__":
    main()

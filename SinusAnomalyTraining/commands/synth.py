"""Make a synthetic cohort of head MRIs with known maxillary sinus lesions.

Heads are built from the shipped reference head under random pose, voxel spacing, orientation,
smooth shape deformation, bias field, noise and intensity changes; none, one or both sinuses
carry mucosal thickening, polyps, retention cysts or are fully occupied. Deterministic by seed.

Writes DIR/images/ (NIfTI, some NRRD and MHA), DIR/masks/<patient>_lesions.nii.gz (1 left, 2 right
lesion), DIR/labels.csv (patient, side, label, anomaly_type, image), DIR/truth.json (true sinus
centres in RAS mm, pose) and DIR/previews/*.png. Re-running resumes.
"""
from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from SinusAnomalyLib.synth import SynthParams, generate_cohort


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=20, help="number of synthetic patients (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    defaults = SynthParams()
    parser.add_argument("--deformation-mm", type=float, default=defaults.deformation_mm, help="shape change amplitude")
    parser.add_argument("--max-rotation-deg", type=float, default=defaults.max_rotation_deg)
    parser.add_argument("--max-translation-mm", type=float, default=defaults.max_translation_mm)
    parser.add_argument("--anomaly-rate", type=float, default=defaults.anomaly_rate,
                        help="fraction of patients with at least one anomalous sinus")
    parser.add_argument("--previews", type=int, default=4, help="PNG previews of the first anomalous cases")


def run(args: argparse.Namespace) -> int:
    params = SynthParams(deformation_mm=args.deformation_mm, max_rotation_deg=args.max_rotation_deg,
                         max_translation_mm=args.max_translation_mm, anomaly_rate=args.anomaly_rate)
    out = generate_cohort(args.out, args.cases, args.seed, params, previews=args.previews)
    with open(out / "labels.csv", newline="") as fh:
        types = Counter(row["anomaly_type"] for row in csv.DictReader(fh))
    print(f"{args.cases} synthetic heads in {out}/images; sinuses: "
          + ", ".join(f"{n} {t}" for t, n in sorted(types.items())))
    print(f"labels: {out}/labels.csv; truth: {out}/truth.json; lesion masks: {out}/masks; previews: {out}/previews")
    return 0

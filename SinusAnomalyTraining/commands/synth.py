"""Make a synthetic cohort of head MRIs with known maxillary sinus lesions.

Heads are built from the shipped reference head under random pose, voxel spacing, orientation,
smooth shape deformation, bias field, noise and intensity changes; none, one or both sinuses
carry mucosal thickening, polyps, retention cysts or are fully occupied. Options add variety:
other anatomies (real heads, see --anatomies), other contrasts (T1-, T2-, FLAIR-like with randomised tissue intensities), each sinus's own size
and shape, floor-first mucosal thickening, air-fluid levels, bony walls and septa. Deterministic by seed.

Writes DIR/images/ (NIfTI, some NRRD and MHA), DIR/masks/<patient>_lesions.nii.gz (1 left, 2 right
lesion), DIR/labels.csv (patient, side, label, anomaly_type, image), DIR/truth.json (true sinus
centres in RAS mm, pose) and DIR/previews/*.png. With --unlabelled M, also M heads whose labels
are withheld (same lesion mix), listed in DIR/unlabelled.csv (patient, image) for
'prepare --unlabelled', their truth in DIR/unlabelled_truth.json. Re-running resumes.
"""
from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from SinusAnomalyLib.reference import ANATOMIES
from SinusAnomalyLib.synth import ANOMALY_TYPES, CONTRASTS, SINUS_SCALE_LIMITS, SynthParams, generate_cohort


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=20, help="number of synthetic patients (default 20)")
    parser.add_argument("--unlabelled", type=int, default=0, metavar="M",
                        help="also M heads of the same kind with their labels withheld (synth-u0000, ...), listed in "
                             "DIR/unlabelled.csv, never in labels.csv: the unlabelled set for pretraining (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    defaults = SynthParams()
    parser.add_argument("--deformation-mm", type=float, default=defaults.deformation_mm, help="shape change amplitude")
    parser.add_argument("--max-rotation-deg", type=float, default=defaults.max_rotation_deg)
    parser.add_argument("--max-translation-mm", type=float, default=defaults.max_translation_mm)
    parser.add_argument("--anomaly-rate", type=float, default=defaults.anomaly_rate,
                        help="fraction of patients with at least one anomalous sinus")
    parser.add_argument("--anatomies", type=_anatomy_names, default=defaults.anatomies, metavar="NAMES",
                        help="build each head from one of these, comma-separated: reference (default), colin27, "
                             "single_subject_t1 (real heads; their fields of view end inside the sinuses)")
    parser.add_argument("--contrasts", type=_names, default=defaults.contrasts, metavar="NAMES",
                        help="render each head in one of these, comma-separated: reference (default: the template's "
                             "T1 with bright lesions), t1, t2, flair (tissue intensities randomised per head)")
    parser.add_argument("--sinus-scale", type=_range, default=defaults.sinus_scale_range, metavar="LOW,HIGH",
                        help="scale each sinus about its centre by a random factor per axis in this range "
                             "(size, shape, asymmetry; default 1,1: none; e.g. 0.7,1.3)")
    parser.add_argument("--floor-first-thickening", action="store_true",
                        help="mucosal thickening covers the walls from the floor up to a random height")
    parser.add_argument("--anomaly-types", type=_anomaly_names, default=defaults.anomaly_types, metavar="NAMES",
                        help="types an anomalous sinus draws from, comma-separated: " + ", ".join(ANOMALY_TYPES)
                             + " (default: all but air_fluid_level)")
    parser.add_argument("--sinus-shape-mm", type=_bounded(0.0, 4.0), default=defaults.sinus_shape_mm, metavar="MM",
                        help="each sinus's own smooth shape change of up to this many mm (lobes, left/right "
                             "asymmetry; default 0: none; at most 4)")
    parser.add_argument("--wall-thickness", type=_range_within(0.0, 4.0), default=defaults.wall_thickness_mm,
                        metavar="LOW,HIGH", help="each sinus gets a bony wall of random thickness in this range, mm, "
                                                 "inside its cavity's edge (default 0,0: none; e.g. 0,2.5)")
    parser.add_argument("--septum-rate", type=_bounded(0.0, 1.0), default=defaults.septum_rate, metavar="P",
                        help="chance that a sinus has a septum rising from its floor (default 0)")
    parser.add_argument("--previews", type=int, default=4, help="PNG previews of the first anomalous cases")


def _choices(text: str, known: tuple, what: str) -> tuple:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names or any(name not in known for name in names):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what} from {', '.join(known)}, not {text!r}")
    return names


def _names(text: str) -> tuple:
    return _choices(text, CONTRASTS, "contrasts")


def _anatomy_names(text: str) -> tuple:
    return _choices(text, ANATOMIES, "anatomies")


def _anomaly_names(text: str) -> tuple:
    return _choices(text, ANOMALY_TYPES, "anomaly types")


def _range_within(lowest: float, highest: float):
    def parse(text: str) -> tuple:
        try:
            low, high = (float(part) for part in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected LOW,HIGH like {lowest:g},{highest:g}, not {text!r}") from None
        if not lowest <= low <= high <= highest:
            raise argparse.ArgumentTypeError(f"expected {lowest:g} <= LOW <= HIGH <= {highest:g}, not {text!r}")
        return (low, high)
    return parse


_range = _range_within(*SINUS_SCALE_LIMITS)


def _bounded(lowest: float, highest: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not lowest <= value <= highest:
            raise argparse.ArgumentTypeError(f"expected a number from {lowest:g} to {highest:g}, not {text!r}")
        return value
    return parse


def run(args: argparse.Namespace) -> int:
    params = SynthParams(deformation_mm=args.deformation_mm, max_rotation_deg=args.max_rotation_deg,
                         max_translation_mm=args.max_translation_mm, anomaly_rate=args.anomaly_rate,
                         anatomies=tuple(args.anatomies), contrasts=tuple(args.contrasts),
                         sinus_scale_range=tuple(args.sinus_scale),
                         floor_first_thickening=args.floor_first_thickening, anomaly_types=tuple(args.anomaly_types),
                         sinus_shape_mm=args.sinus_shape_mm, wall_thickness_mm=tuple(args.wall_thickness),
                         septum_rate=args.septum_rate)
    out = generate_cohort(args.out, args.cases, args.seed, params, previews=args.previews, n_unlabelled=args.unlabelled)
    with open(out / "labels.csv", newline="") as fh:
        types = Counter(row["anomaly_type"] for row in csv.DictReader(fh))
    print(f"{args.cases} synthetic heads in {out}/images; sinuses: "
          + ", ".join(f"{n} {t}" for t, n in sorted(types.items())))
    print(f"labels: {out}/labels.csv; truth: {out}/truth.json; lesion masks: {out}/masks; previews: {out}/previews")
    if args.unlabelled:
        print(f"{args.unlabelled} unlabelled heads (labels withheld): {out}/unlabelled.csv; "
              f"their truth, for checking only: {out}/unlabelled_truth.json")
    return 0

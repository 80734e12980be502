#!/usr/bin/env python
"""How often a bundle's out-of-distribution warning fires: on held-out heads like its training
cohort's and on heads of real anatomies and contrasts it was not trained on.

For each setting, N synthetic heads (DIR/<setting>/cohort, resumable) are classified with the
bundle; printed per setting: sinuses assessed, how many the check flagged, heads refused, and the
median reconstruction error against the bundle's range. Needs a bundle with an ``ood`` block
(exported since issue 26).

    python benchmarks/ood_check.py BUNDLE --out DIR [--heads 8] [--seed 100]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from SinusAnomalyLib.bundle import load_bundle
from SinusAnomalyLib.errors import ImageError, RegistrationError
from SinusAnomalyLib.heatmap import ood_range_of
from SinusAnomalyLib.inference import classify
from SinusAnomalyLib.synth import SynthParams, generate_cohort

SETTINGS = {
    "like training (reference anatomy and contrast)": SynthParams(),
    "colin27 anatomy": SynthParams(anatomies=("colin27",)),
    "single_subject_t1 anatomy": SynthParams(anatomies=("single_subject_t1",)),
    "t1 contrast (randomised tissue levels)": SynthParams(contrasts=("t1",)),
    "t2 contrast": SynthParams(contrasts=("t2",)),
    "flair contrast": SynthParams(contrasts=("flair",)),
}


def check(bundle, folder: Path, params: SynthParams, heads: int, seed: int) -> dict:
    cohort = generate_cohort(folder / "cohort", n_cases=heads, seed=seed, params=params, previews=0, progress=False)
    flags, errors, refused = [], [], 0
    for case in json.loads((cohort / "truth.json").read_text(encoding="utf-8")).values():
        try:
            result = classify(cohort / case["image"], bundle)
        except (ImageError, RegistrationError):
            refused += 1
            continue
        for r in result.sides.values():
            if r.out_of_distribution is not None:
                flags.append(r.out_of_distribution)
                errors.append(r.reconstruction_error)
    return {"assessed": len(flags), "fired": int(sum(flags)), "refused": refused,
            "median_error": float(np.median(errors)) if errors else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=100, help="cohort seed (default 100: not the demo's 0 or 1)")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle)
    ranged = ood_range_of(bundle.meta, bundle.path)
    if ranged is None:
        parser.error(f"{args.bundle} has no 'ood' block (exported before issue 26): nothing to check")
    print(f"bundle {args.bundle.name}: OOD range {ranged.describe()} (training {ranged.low:.4f}-{ranged.high:.4f}, "
          f"margin {ranged.margin:g}); {args.heads} heads per setting, seed {args.seed}")
    print("| setting | sinuses assessed | flagged | heads refused | median error |")
    print("|---|---|---|---|---|")
    for k, (name, params) in enumerate(SETTINGS.items()):
        m = check(bundle, args.out / f"setting{k}", params, args.heads, args.seed + k)
        print(f"| {name} | {m['assessed']} | {m['fired']} | {m['refused']} | {m['median_error']:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

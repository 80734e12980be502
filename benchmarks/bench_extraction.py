#!/usr/bin/env python
"""Extraction speed, accuracy and the quality gate, on synthetic and on real heads, in one run.

1. Synthetic heads (made from the reference, truth known): the full extraction and, for
   comparison, the one without the midface stage; seconds and centre errors.
2. Real heads the project did not make (``SinusAnomaly/Resources/Anatomies``: Colin27 and a single-subject
   T1), each as it comes and in ``--real-poses`` posed, regridded copies rendered T1-, T2- and
   FLAIR-like: accepted or not, seconds, quality, coverage and centre error. Both heads end inside
   the sinuses, so the error is like for like: centre of the visible air cavity against the
   centre of the shown part of the mapped reference cavity (``Testing/heads.py``).
3. The quality gate: the specificity score (registration ``quality``) and the coverage on those
   real heads and on scans that must be refused (skull-stripped brain, defaced, field of view
   above the sinuses, noise, phantom, torso), each as made and posed.

Prints per head and pose, then the summary lines with the ratios to the 5 s budget.

    python benchmarks/bench_extraction.py [--heads 8] [--real-poses 8] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

from heads import CONTRASTS, RealHead, negative_scans, posed, real_heads, visible_centre_error  # noqa: E402
from SinusAnomalyLib.errors import SinusAnomalyError  # noqa: E402
from SinusAnomalyLib.extraction import MIN_COVERAGE, cavity_shown, extract_sinuses  # noqa: E402
from SinusAnomalyLib.imageio import read_image, write_image  # noqa: E402
from SinusAnomalyLib.reference import SIDES, cavity_points_lps, load_reference  # noqa: E402
from SinusAnomalyLib.registration import MIN_QUALITY, register_to_reference  # noqa: E402
from SinusAnomalyLib.synth import SynthParams, make_case  # noqa: E402

BUDGET_S = 5.0


def synthetic(args, reference) -> None:
    params = SynthParams(deformation_mm=args.deformation_mm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.heads):
            case = make_case(f"bench-{i}", np.random.default_rng([args.seed, i]), params)
            path = Path(tmp) / f"head{i}.nii.gz"
            write_image(case.image, path)
            timings, errors = {}, {}
            for name, refine in (("full", True), ("no-midface", False)):
                start = time.perf_counter()
                result = extract_sinuses(read_image(path), reference, source=str(path), refine_midface=refine)
                timings[name] = time.perf_counter() - start
                errors[name] = max(float(np.linalg.norm(result.centers_ras[s] - case.centers_ras[s])) for s in SIDES)
            rows.append((timings, errors))
            print(f"synthetic head {i}: {'x'.join(map(str, case.image.GetSize()))} voxels of "
                  f"{'x'.join(f'{s:.2f}' for s in case.image.GetSpacing())} mm | full {timings['full']:.2f} s, "
                  f"max centre error {errors['full']:.1f} mm | without midface stage {timings['no-midface']:.2f} s, "
                  f"{errors['no-midface']:.1f} mm", flush=True)
    full_t = [r[0]["full"] for r in rows]
    base_t = [r[0]["no-midface"] for r in rows]
    full_e = [r[1]["full"] for r in rows]
    base_e = [r[1]["no-midface"] for r in rows]
    print(f"\nsynthetic: {len(rows)} heads, deformation {args.deformation_mm} mm")
    print(f"  seconds per head (read + register + crop): median {statistics.median(full_t):.2f}, max {max(full_t):.2f}")
    print(f"  ratio median time / {BUDGET_S:.0f} s budget: {statistics.median(full_t) / BUDGET_S:.2f}  (max: {max(full_t) / BUDGET_S:.2f})")
    print(f"  ratio time full / without midface stage: {statistics.median(full_t) / statistics.median(base_t):.2f}")
    print(f"  worst centre error per head, median: full {statistics.median(full_e):.2f} mm, without midface {statistics.median(base_e):.2f} mm")
    print(f"  worst centre error overall: full {max(full_e):.2f} mm, without midface {max(base_e):.2f} mm\n")


def scores(head: RealHead, reference) -> tuple[float, float]:
    """(quality, best coverage) of a scan, whatever the gate says; nan when the fit itself fails."""
    try:
        reg = register_to_reference(head.image, reference, head.name, check=False)
    except SinusAnomalyError:
        return float("nan"), float("nan")
    return reg.quality, max(float(cavity_shown(head.image, reg, cavity_points_lps(reference, s)).mean()) for s in SIDES)


def real(args, reference) -> None:
    positives, errors, seconds, refused = [], [], [], []
    for head in real_heads():
        for variant in [head] + [posed(head, i, CONTRASTS[i % len(CONTRASTS)]) for i in range(args.real_poses)]:
            start = time.perf_counter()
            try:
                result = extract_sinuses(variant.image, reference, source=variant.name)
            except SinusAnomalyError as exc:
                refused.append(variant.name)
                print(f"{variant.name:34s} REFUSED: {exc}", flush=True)
                continue
            seconds.append(time.perf_counter() - start)
            side_errors = [visible_centre_error(variant, result, reference, s) for s in SIDES]
            errors.extend(side_errors)
            positives.append((result.registration.quality, max(result.coverage.values())))
            print(f"{variant.name:34s} {seconds[-1]:5.2f} s | quality {result.registration.quality:.2f} | coverage "
                  f"{result.coverage['left']:.2f} / {result.coverage['right']:.2f} | centre error "
                  f"{side_errors[0]:.1f} / {side_errors[1]:.1f} mm", flush=True)
    total = len(positives) + len(refused)
    print(f"\nreal heads: {len(positives)} of {total} accepted (goal: all)")
    if errors:
        print(f"  centre error (each side, like for like): median {statistics.median(errors):.2f} mm (goal <= 4), "
              f"max {max(errors):.2f} mm (goal <= 8)")
        print(f"  seconds per head: median {statistics.median(seconds):.2f}, max {max(seconds):.2f}; "
              f"ratio median / {BUDGET_S:.0f} s budget: {statistics.median(seconds) / BUDGET_S:.2f} (max: {max(seconds) / BUDGET_S:.2f})\n")

    negatives = []
    colin = real_heads()[0]
    for name, image in negative_scans(colin).items():
        for variant in (RealHead(name, image, {}), posed(RealHead(name, image, {}), 100, "t1")):
            quality, coverage = scores(variant, reference)
            try:
                extract_sinuses(variant.image, reference, source=variant.name)
                verdict = "ACCEPTED (should be refused)"
            except SinusAnomalyError as exc:
                verdict = f"refused: {str(exc).split(': ', 1)[1]}"
            negatives.append((quality, coverage, verdict.startswith("refused")))
            print(f"{variant.name:34s} quality {quality:5.2f} | best coverage {coverage:.2f} | {verdict}", flush=True)
    quality_pos = [q for q, _ in positives]
    print(f"\nquality gate (refuse below {MIN_QUALITY}; sides below coverage {MIN_COVERAGE} are not assessable, "
          f"both below: refused):")
    if quality_pos:
        print(f"  real heads:  quality {min(quality_pos):.2f}-{max(quality_pos):.2f} (median {statistics.median(quality_pos):.2f}), "
              f"best coverage {min(c for _, c in positives):.2f}-{max(c for _, c in positives):.2f}")
    shown = [(q, c) for q, c, _ in negatives if np.isfinite(q)]
    if shown:
        print(f"  must refuse: quality {min(q for q, _ in shown):.2f}-{max(q for q, _ in shown):.2f}, "
              f"best coverage {min(c for _, c in shown):.2f}-{max(c for _, c in shown):.2f}")
    print(f"  refused: {sum(r for *_, r in negatives)} of {len(negatives)} that must be refused")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=8, help="synthetic heads (0: none)")
    parser.add_argument("--real-poses", type=int, default=8, help="posed copies of each real head (0: as they come only)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--deformation-mm", type=float, default=10.0, help="strength of the synthetic head-shape deformation")
    parser.add_argument("--threads", type=int, default=2, help="ITK threads (the target machine has 2 cores)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    reference = load_reference()
    extract_sinuses(real_heads()[0].image, reference)  # imports and per-process caches, not timed
    if args.heads:
        synthetic(args, reference)
    real(args, reference)


if __name__ == "__main__":
    main()

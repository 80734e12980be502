#!/usr/bin/env python
"""Extraction speed and accuracy on synthetic heads, measured side by side in one run.

For each head (written to disk first, so reading counts): the full extraction (rigid, whole-head
affine, midface affine) and, for comparison, the extraction without the midface stage. Prints
seconds per head, the ratio to the 5 s budget, the cost and benefit of the midface stage as
ratios, and the centre errors against the synthetic ground truth.

    python benchmarks/bench_extraction.py [--heads 8] [--deformation-mm 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from SinusAnomalyLib.extraction import extract_sinuses
from SinusAnomalyLib.imageio import read_image, write_image
from SinusAnomalyLib.reference import SIDES, load_reference
from SinusAnomalyLib.synth import SynthParams, make_case

BUDGET_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--deformation-mm", type=float, default=10.0, help="strength of the head-shape deformation")
    parser.add_argument("--threads", type=int, default=2, help="ITK threads (the target machine has 2 cores)")
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    reference = load_reference()
    params = SynthParams(deformation_mm=args.deformation_mm)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        extract_sinuses(make_case("warmup", np.random.default_rng(0), params).image, reference)  # imports, caches
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
            rows.append((timings, errors, case.image.GetSize(), case.image.GetSpacing()))
            print(
                f"head {i}: {'x'.join(map(str, case.image.GetSize()))} voxels of "
                f"{'x'.join(f'{s:.2f}' for s in case.image.GetSpacing())} mm | "
                f"full {timings['full']:.2f} s, max centre error {errors['full']:.1f} mm | "
                f"without midface stage {timings['no-midface']:.2f} s, {errors['no-midface']:.1f} mm"
            )

    full_t = [r[0]["full"] for r in rows]
    base_t = [r[0]["no-midface"] for r in rows]
    full_e = [r[1]["full"] for r in rows]
    base_e = [r[1]["no-midface"] for r in rows]
    print()
    print(f"threads: {args.threads}; heads: {len(rows)}; deformation: {args.deformation_mm} mm")
    print(f"extraction seconds per head (read + register + crop): median {statistics.median(full_t):.2f}, max {max(full_t):.2f}")
    print(f"ratio median time / {BUDGET_S:.0f} s budget: {statistics.median(full_t) / BUDGET_S:.2f}  (max: {max(full_t) / BUDGET_S:.2f})")
    print(f"ratio time full / without midface stage: {statistics.median(full_t) / statistics.median(base_t):.2f}")
    print(f"worst centre error per head, median: full {statistics.median(full_e):.2f} mm, without midface stage {statistics.median(base_e):.2f} mm")
    print(f"worst centre error overall: full {max(full_e):.2f} mm, without midface stage {max(base_e):.2f} mm")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Extraction speed, accuracy and the quality gate, on synthetic and on real heads, in one run.

1. Synthetic heads (made from the reference, truth known, T1/T2/FLAIR, lesions included): the full
   extraction and, for comparison, the one without the side placement (``sinusrefine``); seconds
   and centre errors per lesion kind.
2. Real heads the project did not make (``SinusAnomaly/Resources/Anatomies``: Colin27, a
   single-subject T1, the ROBEX atlas), each as it comes and in ``--real-poses`` posed, regridded
   copies rendered T1-, T2- and FLAIR-like, each against a reference sinus built WITHOUT it
   (leave one out, ``Testing/heads.py``): accepted or not, seconds, quality, coverage and centre
   error: against the whole cavity where the field of view shows it (the ROBEX atlas), else like
   for like (centre of the visible air cavity against that of the shown part of the placed
   reference sinus). ``--extra-heads FILE.json`` adds heads measured on locally (not shipped).
   Then copies of the ROBEX atlas whose field of view ends inside the sinuses: coverage against
   the true share of each cavity in view.
3. The quality gate: the specificity score (registration ``quality``) and the coverage on those
   real heads and on scans that must be refused (skull-stripped brain, defaced, field of view
   above the sinuses, noise, phantom, torso), each as made and posed.

Prints per head and pose, then the summary lines with the ratios to the 5 s budget.

    python benchmarks/bench_extraction.py [--heads 8] [--real-poses 8] [--threads 2] [--extra-heads FILE.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))

from heads import (CONTRASTS, RealHead, floor_cut, full_centre_error, negative_scans, posed, real_heads,  # noqa: E402
                   reference_without, visible_centre_error)
from SinusAnomalyLib.errors import SinusAnomalyError  # noqa: E402
from SinusAnomalyLib.extraction import MIN_COVERAGE, cavity_shown, extract_sinuses  # noqa: E402
from SinusAnomalyLib.imageio import read_image, write_image  # noqa: E402
from SinusAnomalyLib.reference import SIDES, cavity_points_lps, load_reference  # noqa: E402
from SinusAnomalyLib.registration import MIN_QUALITY, register_to_reference  # noqa: E402
from SinusAnomalyLib.synth import SynthParams, make_case  # noqa: E402

BUDGET_S = 5.0


def synthetic(args, reference) -> None:
    """Synthetic heads (truth known; lesions included): extraction with and without the side placement."""
    params = SynthParams(deformation_mm=args.deformation_mm, contrasts=("t1", "t2", "flair"))
    timings, errors = {"full": [], "no side placement": []}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.heads):
            case = make_case(f"bench-{i}", np.random.default_rng([args.seed, i]), params)
            path = Path(tmp) / f"head{i}.nii.gz"
            write_image(case.image, path)
            line = []
            for name, refine in (("full", True), ("no side placement", False)):
                start = time.perf_counter()
                result = extract_sinuses(read_image(path), reference, source=str(path), refine_sides=refine)
                timings[name].append(time.perf_counter() - start)
                for s in SIDES:
                    kind = case.anomalies[s] or "normal"
                    errors.setdefault((name, kind), []).append(float(np.linalg.norm(result.centers_ras[s] - case.centers_ras[s])))
                line.append(f"{name} {timings[name][-1]:.2f} s")
            print(f"synthetic head {i} ({case.pose['contrast']}; {case.anomalies['left'] or 'normal'} / "
                  f"{case.anomalies['right'] or 'normal'}): {', '.join(line)}", flush=True)
    print(f"\nsynthetic: {args.heads} heads, deformation {args.deformation_mm} mm, T1/T2/FLAIR")
    for name, seconds in timings.items():
        print(f"  {name}: seconds per head median {statistics.median(seconds):.2f}, max {max(seconds):.2f}; "
              f"ratio median / {BUDGET_S:.0f} s budget {statistics.median(seconds) / BUDGET_S:.2f}")
    for (name, kind), values in sorted(errors.items(), key=lambda item: (item[0][1], item[0][0])):
        print(f"  centre error, {kind:20s} {name:18s}: median {statistics.median(values):.2f} mm, max {max(values):.2f} mm "
              f"({len(values)} sides)")
    for name in timings:
        every = [v for (n, _), values in errors.items() if n == name for v in values]
        print(f"  centre error, every side {name:18s}: median {statistics.median(every):.2f} mm, max {max(every):.2f} mm\n")


def scores(head: RealHead, reference) -> tuple[float, float]:
    """(quality, best coverage) of a scan, whatever the gate says; nan when the fit itself fails."""
    try:
        reg = register_to_reference(head.image, reference, head.name, check=False)
    except SinusAnomalyError:
        return float("nan"), float("nan")
    return reg.quality, max(float(cavity_shown(head.image, reg, cavity_points_lps(reference, s)).mean()) for s in SIDES)


def _extra_heads(path: Path | None) -> list[RealHead]:
    """Heads named in a JSON file {name: {"file": ..., "seeds_ras_mm": {"left": [x, y, z], "right": ...}}},
    annotated as the shipped ones are (make_real_heads.visible_cavity; the medial plane about the
    seeds' midpoint): heads measured on locally that the project may not ship."""
    if path is None:
        return []
    import nibabel as nib  # noqa: PLC0415

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Resources" / "Scripts"))
    from make_real_heads import visible_cavity  # noqa: PLC0415

    heads = []
    for name, spec in json.loads(path.read_text(encoding="utf-8")).items():
        file = (path.parent / spec["file"]).resolve()
        nifti = nib.as_closest_canonical(nib.squeeze_image(nib.load(str(file))))
        data, affine = np.asarray(nifti.dataobj, np.float32), nifti.affine
        middle = np.mean([spec["seeds_ras_mm"][side][0] for side in SIDES])
        centred = affine.copy()
        centred[0, 3] -= middle
        centres = {}
        for side in SIDES:
            seed = np.asarray(spec["seeds_ras_mm"][side], float) - [middle, 0.0, 0.0]
            ras = np.argwhere(visible_cavity(data, centred, seed, side)) @ affine[:3, :3].T + affine[:3, 3]
            centres[side] = ras.mean(0)
        heads.append(RealHead(name, read_image(file), centres, bool(spec.get("cavity_wholly_in_view", True))))
    return heads


def _measure(variant: RealHead, reference, placements: dict, rows: dict) -> None:
    """Extract ``variant`` once per placement (name -> refine_sides) and record the centre errors:
    against the whole cavity where it is in view, like for like where it is not."""
    texts = []
    for placement, refine in placements.items():
        start = time.perf_counter()
        try:
            result = extract_sinuses(variant.image, reference, source=variant.name, refine_sides=refine)
        except SinusAnomalyError as exc:
            rows.setdefault((placement, "refused"), []).append(variant.name)
            texts.append(f"{placement}: REFUSED ({exc})")
            continue
        seconds = time.perf_counter() - start
        score = full_centre_error if variant.whole_cavity else None
        errors = [score(variant, result, s) if score else visible_centre_error(variant, result, reference, s) for s in SIDES]
        kind = "whole" if variant.whole_cavity else "visible"
        rows.setdefault((placement, variant.anatomy or variant.name.split()[0], kind), []).extend(errors)
        rows.setdefault((placement, "seconds"), []).append(seconds)
        rows.setdefault((placement, "quality"), []).append((result.registration.quality, max(result.coverage.values())))
        texts.append(f"{placement}: {seconds:4.1f} s, q {result.registration.quality:.2f}, coverage "
                     f"{result.coverage['left']:.2f}/{result.coverage['right']:.2f}, error ({kind}) {errors[0]:.1f}/{errors[1]:.1f} mm")
    print(f"{variant.name:34s} " + " | ".join(texts), flush=True)


def real(args, reference) -> None:
    """Real heads, each against a reference sinus built without it (leave one out), with and without
    the side placement; the extra heads (not in the reference sinus) against the shipped one."""
    placements = {"air placement": True, "reference sinus only": False}
    rows: dict = {}
    for head in real_heads():
        loo = reference_without(head.anatomy)
        for variant in [head] + [posed(head, i, CONTRASTS[i % len(CONTRASTS)]) for i in range(args.real_poses)]:
            _measure(variant, loo, placements, rows)
    for head in _extra_heads(args.extra_heads):
        for variant in [head] + [posed(head, i, CONTRASTS[i % len(CONTRASTS)]) for i in range(args.real_poses)]:
            _measure(variant, reference, placements, rows)
    print("\nreal heads, centre error per side (each shipped head against the reference sinus built without it):")
    for key, errors in sorted((k, v) for k, v in rows.items() if len(k) == 3):
        print(f"  {key[0]:21s} {key[1]:22s} ({key[2]:7s} cavity): median {statistics.median(errors):.2f} mm, "
              f"max {max(errors):.2f} mm over {len(errors)} sides")
    for placement in placements:
        refused = rows.get((placement, "refused"), [])
        seconds = rows.get((placement, "seconds"), [])
        print(f"  {placement}: refused {len(refused)} {refused if refused else ''}")
        if seconds:
            print(f"  {placement}: seconds per head median {statistics.median(seconds):.2f}, max {max(seconds):.2f}; "
                  f"ratio median / {BUDGET_S:.0f} s budget: {statistics.median(seconds) / BUDGET_S:.2f}")
    positives = rows.get(("air placement", "quality"), [])

    print("\ncoverage of copies whose field of view ends inside the sinuses (truth: share of the annotated cavity in view):")
    for head in real_heads():
        if not head.whole_cavity:
            continue
        loo = reference_without(head.anatomy)
        for share in (0.9, 0.75, 0.5):
            cut, truth = floor_cut(head, share)
            for variant in (cut, posed(cut, 50, "t1")):
                result = extract_sinuses(variant.image, loo, source=variant.name)
                print(f"  {variant.name:34s} coverage {result.coverage['left']:.2f} / {result.coverage['right']:.2f}, "
                      f"true {truth['left']:.2f} / {truth['right']:.2f}, difference "
                      f"{result.coverage['left'] - truth['left']:+.2f} / {result.coverage['right'] - truth['right']:+.2f}", flush=True)

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
    parser.add_argument("--extra-heads", type=Path, help="JSON naming more real heads and a seed in each sinus (see _extra_heads)")
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

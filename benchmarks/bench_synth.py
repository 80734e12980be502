#!/usr/bin/env python
"""Seconds per synthetic head (``sinus-anomaly synth``), default and full-variety settings, side by side.

Heads of the two settings alternate, so a change of load on the machine hits both alike. Each head
is timed as ``synth`` makes it: ``make_case`` (anatomy with lesions, pose, resampling, intensity)
and the writing of its image and lesion mask. The one-off cost of preparing each anatomy (cached
for the rest of a run) is timed first and reported apart. Prints per head, then the medians and
their ratios to the 2 s goal (issue 15). Besides wall seconds it prints the process's CPU seconds
(all threads), which other processes on a busy machine inflate much less: on a quiet machine the
wall time lies between CPU seconds / threads and CPU seconds.

    python benchmarks/bench_synth.py [--heads 6] [--seed 0]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from SinusAnomalyLib import synth
from SinusAnomalyLib.imageio import write_image
from SinusAnomalyLib.reference import ANATOMIES, load_anatomy, load_reference
from SinusAnomalyLib.synth import ANOMALY_TYPES, SynthParams, make_case
from SinusAnomalyLib.synth.anatomy import _anatomy, _face_weight, _tissue_layers, _white_matter

GOAL_S = 2.0

# The full variety of docs/synthetic-cohort.md: synth --anatomies reference,colin27,single_subject_t1 --contrasts t1,t2,flair
# --sinus-scale 0.7,1.3 --floor-first-thickening --anomaly-types <all five> --sinus-shape-mm 3
# --wall-thickness 0,2.5 --septum-rate 0.3
SETTINGS = {
    "default": SynthParams(),
    "full variety": SynthParams(anatomies=ANATOMIES, contrasts=("t1", "t2", "flair"), sinus_scale_range=(0.7, 1.3),
                                floor_first_thickening=True, anomaly_types=ANOMALY_TYPES, sinus_shape_mm=3.0,
                                wall_thickness_mm=(0.0, 2.5), septum_rate=0.3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=6, help="heads per setting (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    reference = load_reference()
    for name in ANATOMIES:  # what synth does once per run and anatomy
        start = time.perf_counter()
        head = reference if name == "reference" else load_anatomy(name)
        _anatomy(head)
        _white_matter(head)
        _tissue_layers(head)
        _face_weight(head)
        print(f"anatomy {name}: prepared once in {time.perf_counter() - start:.2f} s")

    seconds = {setting: [] for setting in SETTINGS}
    cpu_seconds = {setting: [] for setting in SETTINGS}
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(args.heads):
            for setting, params in SETTINGS.items():
                start, cpu_start = time.perf_counter(), time.process_time()
                case = make_case(f"bench-{index}", np.random.default_rng([args.seed, index]), params, reference=reference)
                made = time.perf_counter()
                write_image(synth.stored_as_integers(case.image), Path(tmp) / f"{index}.nii.gz")  # as synth writes it
                write_image(case.lesion_labels, Path(tmp) / f"{index}_lesions.nii.gz")
                done = time.perf_counter()
                seconds[setting].append(done - start)
                cpu_seconds[setting].append(time.process_time() - cpu_start)
                kinds = ", ".join(f"{side} {kind or 'normal'}" for side, kind in case.anomalies.items())
                print(f"{setting:>12} head {index}: {done - start:.2f} s (make {made - start:.2f}, write {done - made:.2f}; "
                      f"CPU {cpu_seconds[setting][-1]:.2f} s) | "
                      f"{case.pose['anatomy']}, {case.pose['contrast']}, {'x'.join(map(str, case.image.GetSize()))} voxels | {kinds}")
    for setting, values in seconds.items():
        median = statistics.median(values)
        print(f"{setting}: median {median:.2f} s per head, max {max(values):.2f} s over {len(values)} heads "
              f"(CPU median {statistics.median(cpu_seconds[setting]):.2f} s); ratio to the {GOAL_S:.0f} s goal {median / GOAL_S:.2f}")
    print(f"full variety / default (medians): {statistics.median(seconds['full variety']) / statistics.median(seconds['default']):.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Classify speed: per scan with the model loaded (warm), and a whole cold CLI call, side by side.

Bundles with random weights (speed does not depend on the weights) at the demo's size (32^3,
quarter-width networks) and at the paper's size (64^3, full width), each with ``--folds``
classifiers and CAEs, on synthetic heads written to disk. Budgets: 3 s warm, 10 s cold, 2 cores.

    python benchmarks/bench_classify.py [--heads 4] [--folds 2] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from SinusAnomalyLib.bundle import build_untrained_bundle, load_bundle
from SinusAnomalyLib.imageio import write_image
from SinusAnomalyLib.inference import classify, save_classification
from SinusAnomalyLib.reference import load_reference
from SinusAnomalyLib.synth import make_case

SIZES = {
    "demo": {"crop": 32, "widths": [16, 32, 64, 128], "cae": {"channels": [8, 16, 32], "latent_dim": 128}},
    "paper": {"crop": 64, "widths": [64, 128, 256, 512], "cae": {"channels": [16, 32, 64], "latent_dim": 512}},
}


def random_bundle(path: Path, size: dict, folds: int) -> Path:
    return build_untrained_bundle(path, size["crop"], size["widths"], size["cae"]["channels"], size["cae"]["latent_dim"], folds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    reference = load_reference()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        heads = []
        for i in range(args.heads):
            path = tmp / f"head{i}.nii.gz"
            write_image(make_case(f"h{i}", np.random.default_rng([99, i]), reference=reference).image, path)
            heads.append(path)
        results = {}
        for name, size in SIZES.items():
            bundle_path = random_bundle(tmp / f"{name}.sabundle", size, args.folds)
            start = time.perf_counter()
            bundle = load_bundle(bundle_path)
            load_s = time.perf_counter() - start
            classify(heads[0], bundle, "cpu", reference)  # warm-up
            warm = []
            for i, head in enumerate(heads):
                start = time.perf_counter()
                save_classification(classify(head, bundle, "cpu", reference), bundle, tmp / f"out-{name}-{i}")
                warm.append(time.perf_counter() - start)
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "SinusAnomalyTraining", "classify", str(heads[0]), "--model", str(bundle_path),
                            "--out", str(tmp / f"cold-{name}"), "--device", "cpu"], check=True, env=env, capture_output=True)
            cold = time.perf_counter() - start
            results[name] = (statistics.median(warm), max(warm), cold, load_s, bundle_path.stat().st_size / 1e6)
            print(f"{name:5s} bundle ({args.folds} folds, {results[name][4]:.0f} MB, loads in {load_s:.2f} s): "
                  f"warm median {results[name][0]:.2f} s (max {results[name][1]:.2f}), cold CLI {cold:.2f} s")
    print()
    print(f"threads {args.threads}, heads {args.heads}")
    for name, (warm_med, warm_max, cold, _, _) in results.items():
        print(f"{name:5s}: ratio warm / 3 s budget {warm_med / 3.0:.2f} (max {warm_max / 3.0:.2f}); ratio cold / 10 s budget {cold / 10.0:.2f}")
    print(f"ratio paper / demo warm time: {results['paper'][0] / results['demo'][0]:.2f}")


if __name__ == "__main__":
    main()

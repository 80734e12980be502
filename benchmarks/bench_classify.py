#!/usr/bin/env python
"""Classify speed: per scan with the model loaded (warm), and whole cold CLI calls, side by side.

Bundles with random weights (speed does not depend on the weights) at the demo's size (32^3,
quarter-width networks, 2 folds as the demo trains) and at the paper's size (64^3, full width,
5 folds as the paper's cross-validation), on synthetic heads written to disk. Budgets: 3 s warm,
10 s cold, 2 cores. Cold calls are separate processes (``python -m SinusAnomalyTraining
classify``), so they pay for Python, torch and MONAI imports and reading the bundle; whether the
bundle and libraries are still in the OS file cache varies, which is why several are timed.

    python benchmarks/bench_classify.py [--heads 4] [--cold-runs 3] [--threads 2] [--folds N]
"""
from __future__ import annotations

import argparse
import copy
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
    "demo": {"crop": 32, "widths": [16, 32, 64, 128], "cae": {"channels": [8, 16, 32], "latent_dim": 128}, "folds": 2},
    "paper": {"crop": 64, "widths": [64, 128, 256, 512], "cae": {"channels": [16, 32, 64], "latent_dim": 512}, "folds": 5},
}
WARM_BUDGET_S, COLD_BUDGET_S = 3.0, 10.0


def random_bundle(path: Path, size: dict, folds: int) -> Path:
    return build_untrained_bundle(path, size["crop"], size["widths"], size["cae"]["channels"], size["cae"]["latent_dim"], folds)


def layout_ratio(bundle, reps: int = 5) -> float:
    """Model time (every fold's classifier and the CAE, both sides) channels-last 3D over
    contiguous, alternated ``reps`` times, best of each: what :func:`inference._channels_last` buys."""
    sizes = [bundle.cae_crop_size] + [bundle.model_crop_size] * len(bundle.classifiers)  # each network's input edge
    batches = [torch.rand(2, 1, s, s, s) for s in sizes]
    nets = {"contiguous": [m.to(memory_format=torch.contiguous_format) for m in (bundle.cae, *bundle.classifiers)]}
    nets["channels_last"] = [copy.deepcopy(m).to(memory_format=torch.channels_last_3d) for m in nets["contiguous"]]
    inputs = {"contiguous": batches, "channels_last": [b.contiguous(memory_format=torch.channels_last_3d) for b in batches]}
    best = {name: float("inf") for name in nets}
    with torch.inference_mode():
        for _ in range(reps):
            for name, models in nets.items():
                start = time.perf_counter()
                for model, x in zip(models, inputs[name]):
                    model(x)
                best[name] = min(best[name], time.perf_counter() - start)
    return best["channels_last"] / best["contiguous"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--cold-runs", type=int, default=3)
    parser.add_argument("--folds", type=int, default=None, help="folds of both bundles (default: demo 2, paper 5)")
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
            folds = args.folds or size["folds"]
            bundle_path = random_bundle(tmp / f"{name}.sabundle", size, folds)
            start = time.perf_counter()
            bundle = load_bundle(bundle_path)
            load_s = time.perf_counter() - start
            classify(heads[0], bundle, "cpu", reference)  # warm-up
            warm = []
            for i, head in enumerate(heads):
                start = time.perf_counter()
                save_classification(classify(head, bundle, "cpu", reference), bundle, tmp / f"out-{name}-{i}")
                warm.append(time.perf_counter() - start)
            layout = layout_ratio(bundle)
            del bundle
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
            cold = []
            for i in range(args.cold_runs):
                start = time.perf_counter()
                subprocess.run([sys.executable, "-m", "SinusAnomalyTraining", "classify", str(heads[i % len(heads)]),
                                "--model", str(bundle_path), "--out", str(tmp / f"cold-{name}-{i}"), "--device", "cpu"],
                               check=True, env=env, capture_output=True)
                cold.append(time.perf_counter() - start)
            results[name] = {"warm": warm, "cold": cold, "layout": layout}
            print(f"{name:5s} bundle ({folds} folds, {bundle_path.stat().st_size / 1e6:.0f} MB, loads in {load_s:.2f} s): "
                  f"warm median {statistics.median(warm):.2f} s (max {max(warm):.2f}), "
                  f"cold CLI median {statistics.median(cold):.2f} s (max {max(cold):.2f})")
    print()
    print(f"threads {args.threads}, heads {args.heads}, cold runs {args.cold_runs}")
    for name, r in results.items():
        print(f"{name:5s}: ratio warm / {WARM_BUDGET_S:.0f} s budget {statistics.median(r['warm']) / WARM_BUDGET_S:.2f} "
              f"(max {max(r['warm']) / WARM_BUDGET_S:.2f}); ratio cold / {COLD_BUDGET_S:.0f} s budget "
              f"{statistics.median(r['cold']) / COLD_BUDGET_S:.2f} (max {max(r['cold']) / COLD_BUDGET_S:.2f})")
    for name, r in results.items():
        print(f"{name:5s}: ratio channels-last / contiguous model time: {r['layout']:.2f}")
    print(f"ratio paper / demo warm time: {statistics.median(results['paper']['warm']) / statistics.median(results['demo']['warm']):.2f}")


if __name__ == "__main__":
    main()

"""How much air the normal sinuses of each anatomy show the classifier (issue 24, item 4).

The leave-one-anatomy-out check found that the held-out ROBEX atlas's normal sinuses score
above every threshold chosen on the other anatomies (docs/default-model.md). This prints, per
anatomy, for the normal sinuses of its held-out pool and focal test pool as the recipe's 32^3
classifier sees them: the median share of dark voxels (below ``focal_lesions.DARK_LEVEL``) in the
crop's central 12^3 voxels (24 mm around the sinus centre), the median air level and noise inside
the cavity ``focal_lesions.find_cavity`` finds, and that cavity's median volume (it runs on into
air outside the head, or into a dark region where the scan's field of view ends).

With ``--predictions DIR`` (a folder of the check's ``predictions-without-<anatomy>-seed<k>.csv``,
e.g. ``docs/default-model/heads120``) it also prints, per held-out anatomy, Spearman's rank
correlation between a normal sinus's dark share and its probability (mean over the seeds): does
less air in view mean a higher score within one anatomy too?

    python benchmarks/held_out_air.py --work /work/loao [--predictions docs/default-model/heads120]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly"), str(ROOT / "benchmarks")]

from focal_probe import crops_of, held_out_sinuses, pooled_sinuses  # noqa: E402
from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402
from SinusAnomalyTraining.defaultmodel import read_table  # noqa: E402
from SinusAnomalyTraining.focal_lesions import DARK_LEVEL, find_cavity  # noqa: E402

SIZE = 32  # the recipe's crop size
CORE = slice(10, 22)  # the central 12^3 voxels of a 32^3 crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--predictions", type=Path, help="folder of the check's predictions-without-*-seed*.csv")
    args = parser.parse_args()
    print("| anatomy | normal sinuses | dark share of the central 24 mm | air level in the cavity | air noise (SD) | cavity mL |")
    print("|---|---|---|---|---|---|")
    for anatomy in ANATOMIES:
        crops, types = held_out_sinuses(args.work, anatomy, SIZE)
        crops = crops[:, 0].numpy()[types == "normal"]
        cavities = [(crop, find_cavity(crop)) for crop in crops]
        cavities = [(crop, c) for crop, c in cavities if c is not None]
        dark = np.median(dark_share(crops))
        level = np.median([crop[c.mask].mean() for crop, c in cavities])
        noise = np.median([crop[c.mask].std() for crop, c in cavities])
        volume = np.median([c.mask.sum() * (64.0 / SIZE) ** 3 / 1000.0 for _, c in cavities])
        print(f"| {anatomy} | {len(crops)} | {dark:.2f} | {level:.3f} | {noise:.3f} | {volume:.1f} |")
    if args.predictions:
        print_air_score_correlation(args.work, args.predictions)


def dark_share(crops: np.ndarray) -> np.ndarray:
    """(n,) share of dark voxels in the central 12^3 of ``(n, 32, 32, 32)`` crops."""
    return (crops[:, CORE, CORE, CORE] < DARK_LEVEL).mean((1, 2, 3))


def print_air_score_correlation(work: Path, predictions: Path) -> None:
    """Per held-out anatomy: Spearman's rho between dark share and mean probability of its normal sinuses in the pool."""
    probabilities: dict[tuple[str, str], list[float]] = {}
    for path in sorted(predictions.glob("predictions-without-*-seed*.csv")):
        for row in read_table(path):
            if row["anomaly_type"] == "normal":
                probabilities.setdefault((row["patient"], row["side"]), []).append(float(row["probability"]))
    dataset, sinuses = pooled_sinuses(work, "all")
    print(f"\nNormal sinuses of each held-out pool, probabilities from {predictions} (mean over seeds):\n")
    print("| anatomy | normal sinuses | median probability | Spearman rho, dark share vs probability |")
    print("|---|---|---|---|")
    for anatomy in ANATOMIES:
        rows = [i for i, sinus in enumerate(sinuses) if sinus["anatomy"] == anatomy and sinus["anomaly_type"] == "normal"
                and (dataset.manifest[i].patient, dataset.manifest[i].side) in probabilities]
        if len(rows) < 3:
            continue
        crops = crops_of(dataset, rows, SIZE, bilateral=False)[:, 0].numpy()
        dark = dark_share(crops)
        score = np.array([np.mean(probabilities[(dataset.manifest[i].patient, dataset.manifest[i].side)]) for i in rows])
        print(f"| {anatomy} | {len(rows)} | {np.median(score):.2f} | {spearmanr(dark, score)[0]:.2f} |")


if __name__ == "__main__":
    main()

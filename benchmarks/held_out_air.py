"""How much air the normal sinuses of each anatomy show the classifier (issue 24, item 4).

The leave-one-anatomy-out check found that the held-out ROBEX atlas's normal sinuses score
above every threshold chosen on the other anatomies (docs/default-model.md). This prints, per
anatomy, for the normal sinuses of its held-out pool and focal test pool as the recipe's 32^3
classifier sees them: the median share of dark voxels (below ``focal_lesions.DARK_LEVEL``) in the
crop's central 12^3 voxels (24 mm around the sinus centre), the median air level and noise inside
the cavity ``focal_lesions.find_cavity`` finds, and that cavity's median volume (it runs on into
air outside the head, or into a dark region where the scan's field of view ends).

    python benchmarks/held_out_air.py --work /work/loao
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly"), str(ROOT / "benchmarks")]

from focal_probe import held_out_sinuses  # noqa: E402
from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402
from SinusAnomalyTraining.focal_lesions import DARK_LEVEL, find_cavity  # noqa: E402

SIZE = 32  # the recipe's crop size
CORE = slice(10, 22)  # the central 12^3 voxels of a 32^3 crop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    print("| anatomy | normal sinuses | dark share of the central 24 mm | air level in the cavity | air noise (SD) | cavity mL |")
    print("|---|---|---|---|---|---|")
    for anatomy in ANATOMIES:
        crops, types = held_out_sinuses(args.work, anatomy, SIZE)
        crops = crops[:, 0].numpy()[types == "normal"]
        cavities = [(crop, find_cavity(crop)) for crop in crops]
        cavities = [(crop, c) for crop, c in cavities if c is not None]
        dark = np.median((crops[:, CORE, CORE, CORE] < DARK_LEVEL).mean((1, 2, 3)))
        level = np.median([crop[c.mask].mean() for crop, c in cavities])
        noise = np.median([crop[c.mask].std() for crop, c in cavities])
        volume = np.median([c.mask.sum() * (64.0 / SIZE) ** 3 / 1000.0 for _, c in cavities])
        print(f"| {anatomy} | {len(crops)} | {dark:.2f} | {level:.3f} | {noise:.3f} | {volume:.1f} |")


if __name__ == "__main__":
    main()

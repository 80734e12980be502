#!/usr/bin/env python
"""What synth makes of each real anatomy's maxillary sinus, as a picture (issue 24, item 4).

For each anatomy of ``Resources/Anatomies`` (and the reference), an axial slice through its left
sinus's centre, 64 mm wide at 1 mm: the anatomy as it comes, the air-filled head synth builds its
heads from (``synth.anatomy._anatomy``), and that head with the cavity synth labels (red). Prints
each cavity's volume. The leave-one-anatomy-out check calls many of the held-out ROBEX atlas's
normal sinuses anomalous; this shows what they look like.

    python benchmarks/anatomy_cavities.py --out docs/default-model/anatomy-cavities.png
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly")]

from SinusAnomalyLib.reference import ANATOMIES, load_anatomy, load_reference  # noqa: E402
from SinusAnomalyLib.synth.anatomy import ANATOMY_SPACING_MM, _anatomy  # noqa: E402

HALF_MM = 32


def main() -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = parser.parse_args()
    fig, axes = plt.subplots(len(ANATOMIES), 3, figsize=(7.5, 2.6 * len(ANATOMIES)))
    for row, name in zip(axes, ANATOMIES):
        head = load_reference() if name == "reference" else load_anatomy(name)
        air_head, cavity, _ = _anatomy(head)
        original = sitk.Resample(head.image, air_head, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        as_array = lambda image: sitk.GetArrayFromImage(image).transpose(2, 1, 0)  # noqa: E731  [x, y, z] like cavity
        centre = np.argwhere(cavity == 1).mean(0).round().astype(int)
        half = int(HALF_MM / ANATOMY_SPACING_MM)
        box = tuple(slice(max(c - half, 0), c + half) for c in centre[:2]) + (centre[2],)
        shown = [as_array(original)[box], as_array(air_head)[box], as_array(air_head)[box]]
        top = np.percentile(shown[0], 99)
        for ax, image, title in zip(row, shown, ("as it comes", "air-filled (synth)", "synth's cavity")):
            ax.imshow(image.T, cmap="gray", origin="lower", vmin=0, vmax=top)
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
        row[2].contour((cavity[box] == 1).T, levels=[0.5], colors="r", origin="lower", linewidths=0.8)
        volumes = [(cavity == side).sum() * ANATOMY_SPACING_MM**3 / 1000 for side in (1, 2)]
        print(f"{name}: cavity {volumes[0]:.1f} mL left, {volumes[1]:.1f} mL right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=70)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

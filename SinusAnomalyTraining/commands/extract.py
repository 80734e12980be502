"""Locate both maxillary sinuses in a head MRI and write 64 mm crops.

The head (NIfTI, NRRD, MHA or a DICOM series folder; any pose, spacing and orientation) is
registered to the shipped reference head; the reference's sinus centres are mapped into the
scan, and 64 x 64 x 64 crops of 1 mm voxels are cut around them along the reference's axes
(right crop mirrored onto the left), intensities scaled to [0, 1] by the 1st/99th percentiles.

Writes DIR/left_crop.nii.gz, DIR/right_crop.nii.gz (their affines place them in the scan's world
space, so they overlay the input in any viewer) and DIR/extraction.json (centres in RAS mm,
transform, registration quality, per side the coverage: the share of the sinus in view). With
--preview also DIR/preview.png. The image is read and DIR created and checked before the
registration; one process at a time writes DIR.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from SinusAnomalyLib.extraction import extract_sinuses, save_extraction
from SinusAnomalyLib.fileio import locked_output_folder
from SinusAnomalyLib.imageio import read_image


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", help="head MRI: .nii/.nii.gz/.nrrd/.mha file or a DICOM series folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--preview", action="store_true", help="also write preview.png with slices of both crops")


def run(args: argparse.Namespace) -> int:
    image = read_image(args.image)  # a bad image is reported before anything is created
    with locked_output_folder(args.out, "extraction folder"):  # checked before the registration's seconds
        result = extract_sinuses(image, source=str(args.image))
        save_extraction(result, args.out)
    if args.preview:
        from SinusAnomalyTraining.plots import save_crop_preview  # noqa: PLC0415

        save_crop_preview(result.arrays(), args.out / "preview.png", title=Path(args.image).name)
    reg = result.registration.summary()
    for side in ("left", "right"):
        x, y, z = result.centers_ras[side]
        shown = "" if result.assessable(side) else " (not assessable: too little of it in view)"
        print(f"{side:5s} sinus centre (RAS mm): {x:7.1f} {y:7.1f} {z:7.1f}, coverage {result.coverage[side]:.2f}{shown}")
    print(f"registration quality {reg['quality']:.2f}, rotation {reg['rotation_deg']:.1f} deg, {reg['seconds']:.1f} s")
    print(f"wrote {args.out}/left_crop.nii.gz, right_crop.nii.gz, extraction.json")
    return 0

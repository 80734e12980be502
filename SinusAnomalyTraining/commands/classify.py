"""Classify both maxillary sinuses of head MRIs with a model bundle.

One image: DIR/result.json (per side: probability, verdict, threshold, spread across folds,
estimated anomalous volume in mL, centre, crop geometry), DIR/heatmap.nii.gz (residual heat map
in [0, 1]) and DIR/labelmap.nii.gz (1 left, 2 right anomaly) on the INPUT image's grid, so they
overlay it exactly in any viewer, and DIR/left_crop.nii.gz, DIR/right_crop.nii.gz.

Batch: IMAGE may be a folder of images (or DICOM series folders) or a CSV with an 'image'
column; each scan gets DIR/<name>/ and a row in DIR/results.csv; a bad scan is reported in its
row and the others go on (exit code 1 if any failed).

--model takes a bundle path or the name of a bundle in the models folder
($SINUS_ANOMALY_MODELS or ~/.sinus-anomaly/models).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from SinusAnomalyLib.bundle import load_bundle
from SinusAnomalyLib.errors import DatasetError, SinusAnomalyError
from SinusAnomalyLib.fileio import write_csv_atomic
from SinusAnomalyLib.imageio import IMAGE_SUFFIXES, is_image_path
from SinusAnomalyLib.inference import classify, save_classification
from SinusAnomalyLib.reference import SIDES, load_reference

from .. import runtime

BATCH_COLUMNS = ["image", "status", "error"] + [f"{s}_{k}" for s in SIDES for k in ("probability", "verdict", "spread", "volume_ml")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="head MRI file, DICOM series folder, folder of images, or CSV with an 'image' column")
    parser.add_argument("--model", required=True, help="bundle file or name in the models folder")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def _scan_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def batch_inputs(target: Path) -> list[Path] | None:
    """The scans of a batch (folder of images or CSV), or None for a single image."""
    if target.is_file() and target.suffix.lower() == ".csv":
        with open(target, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            if "image" not in (reader.fieldnames or []):
                raise DatasetError(f"{target}: no 'image' column (columns: {', '.join(reader.fieldnames or [])})")
            return [(target.parent / row["image"]).resolve() if not Path(row["image"]).is_absolute() else Path(row["image"])
                    for row in reader if row["image"].strip()]
    if target.is_dir():
        # images or series sub-folders; a folder of DICOM files alone is one scan
        entries = sorted(p for p in target.iterdir() if is_image_path(p) or (p.is_dir() and any(p.iterdir())))
        return entries or None
    return None


def run(args: argparse.Namespace) -> int:
    device = runtime.select_device(args.device)
    reference = load_reference()
    bundle = load_bundle(args.model, expected_reference_sha256=reference.sha256).to(device)
    scans = batch_inputs(args.image)
    if scans is None:
        result = classify(args.image, bundle, device, reference)
        save_classification(result, bundle, args.out)
        for side in SIDES:
            r = result.sides[side]
            print(f"{side:5s}: p(anomalous) {r.probability:.3f} (spread {r.spread:.3f}) -> {r.verdict} "
                  f"(threshold {r.threshold:.3f}), anomalous volume {r.anomalous_volume_ml:.2f} mL")
        print(f"{result.seconds:.1f} s; wrote {args.out}/result.json, heatmap.nii.gz, labelmap.nii.gz")
        return 0
    from tqdm.auto import tqdm  # noqa: PLC0415

    rows, failed = [], 0
    for scan in tqdm(scans, desc="classify", unit="scan"):
        row = {"image": str(scan)}
        try:
            result = classify(scan, bundle, device, reference)
            save_classification(result, bundle, args.out / _scan_name(scan))
            row["status"] = "ok"
            for side in SIDES:
                r = result.sides[side]
                row.update({f"{side}_probability": r.probability, f"{side}_verdict": r.verdict,
                            f"{side}_spread": r.spread, f"{side}_volume_ml": r.anomalous_volume_ml})
        except SinusAnomalyError as exc:
            failed += 1
            row.update(status="failed", error=str(exc))
            tqdm.write(f"skipped {scan}: {exc}")
        rows.append(row)
        # after every scan, so the table survives an interruption
        write_csv_atomic(args.out / "results.csv", BATCH_COLUMNS, ([r.get(c) for c in BATCH_COLUMNS] for r in rows))
    print(f"{len(rows) - failed} of {len(rows)} scans classified; {args.out}/results.csv")
    return 1 if failed else 0

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
import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Only SimpleITK-based modules here: torch and MONAI (about 4 s to import on two cores) are
# imported in run(), while the first scan is already being read and registered.
from SinusAnomalyLib.bundlefile import describe_bundle, read_bundle_file
from SinusAnomalyLib.errors import DatasetError, ImageError, SinusAnomalyError
from SinusAnomalyLib.extraction import extract_sinuses
from SinusAnomalyLib.fileio import write_csv_atomic
from SinusAnomalyLib.imageio import IMAGE_SUFFIXES, is_image_path, read_image
from SinusAnomalyLib.modelstore import resolve_bundle
from SinusAnomalyLib.reference import SIDES, ReferenceHead, load_reference

log = logging.getLogger(__name__)
PREFETCH = 2  # scans read and registered ahead of the networks (bounded: each holds an image)

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


def _read_and_extract(scan: Path, reference: ReferenceHead) -> tuple:
    """(image, extraction, seconds) of one scan: the SimpleITK part of classifying it."""
    start = time.perf_counter()
    image = read_image(scan)
    extraction = extract_sinuses(image, reference, source=str(scan))
    return image, extraction, time.perf_counter() - start


def _prefetched(scans: list[Path], reference: ReferenceHead):
    """Yield (scan, Future of :func:`_read_and_extract`) in order, keeping ``PREFETCH`` under way.

    ITK releases the GIL, so registration of the next scans overlaps torch's import and the
    network passes of the current scan.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract") as pool:
        pending: deque[tuple[Path, Future]] = deque()
        queue = iter(scans)
        try:
            while True:
                while len(pending) < PREFETCH:
                    scan = next(queue, None)
                    if scan is None:
                        break
                    pending.append((scan, pool.submit(_read_and_extract, scan, reference)))
                if not pending:
                    return
                yield pending.popleft()
        finally:
            for _, future in pending:  # interrupted: do not start what is queued
                future.cancel()


def run(args: argparse.Namespace) -> int:
    reference = load_reference()
    model = resolve_bundle(args.model)  # a wrong name fails now, not after torch has loaded
    scans = batch_inputs(args.image)
    single = scans is None
    if single and not args.image.exists():
        raise ImageError(args.image, "does not exist")
    if not single and not scans:
        raise DatasetError(f"{args.image}: lists no scans")
    prefetch = _prefetched([args.image] if single else scans, reference)
    first = next(prefetch)  # starts reading and registering before torch is imported
    # the bundle's bytes are read and checked meanwhile too (file reads and hashing release the GIL)
    bundle_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bundle")
    bundle_file = bundle_reader.submit(read_bundle_file, model, reference.sha256)
    bundle_reader.shutdown(wait=False)
    start = time.perf_counter()

    from SinusAnomalyLib.bundle import load_bundle  # noqa: PLC0415
    from SinusAnomalyLib.inference import classify_extraction, save_classification  # noqa: PLC0415

    from .. import runtime  # noqa: PLC0415

    device = runtime.select_device(args.device)
    log.debug("torch and MONAI imported in %.2f s", time.perf_counter() - start)
    try:
        start = time.perf_counter()
        bundle = load_bundle(bundle_file.result()).to(device)
        log.debug("bundle %s ready %.2f s after torch\n%s", model, time.perf_counter() - start, describe_bundle(bundle.meta))
    except BaseException:
        prefetch.close()
        raise

    def classify_scan(scan: Path, future: Future):
        start = time.perf_counter()
        image, extraction, extract_seconds = future.result()
        log.debug("%s: read and extracted in %.2f s (waited %.2f s for it)", scan, extract_seconds, time.perf_counter() - start)
        result = classify_extraction(image, extraction, bundle, device, reference)
        log.debug("%s: networks and maps in %.2f s", scan, result.seconds)
        result.seconds += extract_seconds
        return result

    if single:
        scan, future = first
        prefetch.close()
        result = classify_scan(scan, future)
        save_classification(result, bundle, args.out)
        for side in SIDES:
            r = result.sides[side]
            print(f"{side:5s}: p(anomalous) {r.probability:.3f} (spread {r.spread:.3f}) -> {r.verdict} "
                  f"(threshold {r.threshold:.3f}), anomalous volume {r.anomalous_volume_ml:.2f} mL")
        print(f"{result.seconds:.1f} s; wrote {args.out}/result.json, heatmap.nii.gz, labelmap.nii.gz")
        return 0
    from tqdm.auto import tqdm  # noqa: PLC0415

    def all_scans():
        yield first
        yield from prefetch

    rows, failed = [], 0
    for scan, future in tqdm(all_scans(), total=len(scans), desc="classify", unit="scan"):
        row = {"image": str(scan)}
        try:
            result = classify_scan(scan, future)
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
    prefetch.close()
    print(f"{len(rows) - failed} of {len(rows)} scans classified; {args.out}/results.csv")
    return 1 if failed else 0

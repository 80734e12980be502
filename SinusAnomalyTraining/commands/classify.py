"""Classify both maxillary sinuses of head MRIs with a model bundle.

One image: DIR/result.json (per side: how much of the sinus is in view, probability, verdict,
threshold, spread across folds, estimated anomalous volume in mL, centre, crop geometry; the
bundle's fingerprint; warnings), DIR/heatmap.nii.gz (residual heat map in [0, 1]) and
DIR/labelmap.nii.gz (1 left, 2 right anomaly) on the INPUT image's grid, so they overlay it
exactly in any viewer, and DIR/left_crop.nii.gz, DIR/right_crop.nii.gz. A side too little of
which is in view is "not assessable": no probability, no verdict, no heat map.

The folder is written whole: into a temporary folder beside DIR, renamed into place at the end
(an interrupted run leaves an earlier result in DIR untouched). DIR must be new, empty, or hold
an earlier result; one process at a time writes it.

Batch: IMAGE may be a folder of images (or DICOM series folders) or a CSV with an 'image'
column; each scan gets its own folder DIR/<name>/ and a row in DIR/results.csv (its 'output'
column names the folder); a bad scan is reported in its row and the others go on (exit code 1 if
any failed). <name> is the file name without its suffixes; scans of one batch that share it (a
study export's p1/flair.nii.gz and p2/flair.nii.gz) are told apart by their parent folders
(p1_flair, p2_flair), then by a number, so no scan's result replaces another's.

--model takes a bundle path or the name of a bundle in the models folder
($SINUS_ANOMALY_MODELS or ~/.sinus-anomaly/models). Without --model the default bundle the
extension ships is used (trained on synthetic heads only, not a medical device; see
docs/default-model.md), and the log and result.json say so.
"""
from __future__ import annotations

import argparse
import logging
import time
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

# Only SimpleITK-based modules here: torch and MONAI (about 4 s to import on two cores) are
# imported in run(), while the first scan is already being registered.
from SinusAnomalyLib.bundlefile import describe_bundle, read_bundle_file, read_bundle_manifest
from SinusAnomalyLib.labels import read_csv_table
from SinusAnomalyLib.errors import DatasetError, SinusAnomalyError
from SinusAnomalyLib.extraction import extract_sinuses
from SinusAnomalyLib.fileio import locked_output_folder, locked_result_folder, write_csv_atomic
from SinusAnomalyLib.imageio import IMAGE_SUFFIXES, is_image_path, read_image
from SinusAnomalyLib.errors import BundleError
from SinusAnomalyLib import modelstore
from SinusAnomalyLib.modelstore import resolve_bundle
from SinusAnomalyLib.reference import ReferenceHead, load_reference
from SinusAnomalyLib.resultformat import RESULT_FILES, SIDES

log = logging.getLogger(__name__)
PREFETCH = 2  # scans read and registered ahead of the networks (bounded: each holds an image)
RESULTS_CSV = "results.csv"

BATCH_COLUMNS = (["image", "status", "error", "output"]
                 + [f"{s}_{k}" for s in SIDES for k in ("coverage", "verdict", "probability", "spread", "volume_ml")]
                 + ["warnings"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="head MRI file, DICOM series folder, folder of images, or CSV with an 'image' column")
    parser.add_argument("--model", default=None, help="bundle file or name in the models folder (default: the shipped default "
                                                    "bundle, trained on synthetic heads)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")


def _scan_name(path: Path) -> str:
    name = path.name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_names(scans: list[Path]) -> list[str]:
    """One output folder name per scan, distinct within the batch (also ignoring case, as file
    systems on macOS and Windows do): the scan's name; where scans share it, preceded by as few of
    its parent folders as tell it from the others; a number after any name still taken."""
    def key(scan: Path, depth: int) -> tuple:
        return tuple(part.casefold() for part in scan.parent.relative_to(scan.parent.anchor).parts[-depth:]) if depth else ()

    stems = Counter(_scan_name(scan).casefold() for scan in scans)
    names = []
    for scan in scans:
        name = _scan_name(scan)
        if stems[name.casefold()] > 1:
            rivals = [other for other in scans if other != scan and _scan_name(other).casefold() == name.casefold()]
            levels = len(scan.parent.relative_to(scan.parent.anchor).parts)
            depth = next((d for d in range(1, levels + 1) if all(key(other, d) != key(scan, d) for other in rivals)), min(1, levels))
            name = "_".join([*scan.parent.parts[len(scan.parent.parts) - depth:], name])
        names.append(name)
    taken, unique = set(), []
    for name in names:
        candidate, number = name, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{name}_{number}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


def batch_inputs(target: Path) -> list[Path] | None:
    """The scans of a batch (folder of images or CSV), or None for a single image."""
    if target.is_file() and target.suffix.lower() == ".csv":
        header, rows = read_csv_table(target, what="scan list")
        if "image" not in header:
            raise DatasetError(f"{target}: no 'image' column (columns: {', '.join(h for h in header if h) or 'none'})")
        return [(target.parent / row["image"]).resolve() if not Path(row["image"]).is_absolute() else Path(row["image"])
                for _, row in rows if row["image"]]
    if target.is_dir():
        # images or series sub-folders; a folder of DICOM files alone is one scan
        entries = sorted(p for p in target.iterdir() if is_image_path(p) or (p.is_dir() and any(p.iterdir())))
        return entries or None
    return None


def _read_and_extract(scan: Path, reference: ReferenceHead, image=None) -> tuple:
    """(image, extraction, seconds) of one scan: the SimpleITK part of classifying it."""
    start = time.perf_counter()
    image = read_image(scan) if image is None else image
    extraction = extract_sinuses(image, reference, source=str(scan))
    return image, extraction, time.perf_counter() - start


def _prefetched(scans: list[Path], reference: ReferenceHead, first_image=None):
    """Yield (scan, Future of :func:`_read_and_extract`) in order, keeping ``PREFETCH`` under way.

    ITK releases the GIL, so registration of the next scans overlaps torch's import and the
    network passes of the current scan. ``first_image``: the first scan, already read.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="extract") as pool:
        pending: deque[tuple[Path, Future]] = deque()
        queue = iter(scans)
        image = first_image
        try:
            while True:
                while len(pending) < PREFETCH:
                    scan = next(queue, None)
                    if scan is None:
                        break
                    pending.append((scan, pool.submit(_read_and_extract, scan, reference, image)))
                    image = None
                if not pending:
                    return
                yield pending.popleft()
        finally:
            for _, future in pending:  # interrupted: do not start what is queued
                future.cancel()


def _side_text(side: str, r) -> str:
    if not r.assessable:
        return f"{side:5s}: not assessable ({r.coverage:.0%} of the sinus in view)"
    volume = "" if r.anomalous_volume_ml is None else f", anomalous volume {r.anomalous_volume_ml:.2f} mL"
    return (f"{side:5s}: p(anomalous) {r.probability:.3f} (spread {r.spread:.3f}) -> {r.verdict} "
            f"(threshold {r.threshold:.3f}){volume}, {r.coverage:.0%} in view"
            + (", UNLIKE THE TRAINING DATA" if r.out_of_distribution else ""))


def _default_model():
    model = modelstore.default_bundle()
    if model is None:
        raise BundleError(modelstore.DEFAULT_BUNDLE, "no --model given and this installation has no default bundle; "
                                          "pass --model BUNDLE (a .sabundle file or a name in the models folder)")
    log.warning("no --model: using the default bundle %s (trained on synthetic heads only; not a medical device)", model)
    return model


def run(args: argparse.Namespace) -> int:
    reference = load_reference()
    model = resolve_bundle(args.model) if args.model else _default_model()  # a wrong name fails now, not after torch has loaded
    read_bundle_manifest(model, reference.sha256)  # bundle.json's digest and content: milliseconds
    scans = batch_inputs(args.image)
    single = scans is None
    if not single and not scans:
        raise DatasetError(f"{args.image}: lists no scans")
    if single:
        first_image = read_image(args.image)  # a bad image is reported before torch loads
        with locked_result_folder(args.out, RESULT_FILES):
            return _classify(args, reference, model, [args.image], single, first_image)
    with locked_output_folder(args.out, "batch output folder"):
        return _classify(args, reference, model, scans, single, None)


def _classify(args: argparse.Namespace, reference: ReferenceHead, model: Path, scans: list[Path], single: bool, first_image) -> int:
    prefetch = _prefetched(scans, reference, first_image)
    first = next(prefetch)  # starts registering before torch is imported
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
        log.debug("bundle %s (fingerprint %s) ready %.2f s after torch\n%s", model, bundle.fingerprint,
                  time.perf_counter() - start, describe_bundle(bundle.meta))
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
        for warning in result.warnings:
            log.warning("%s: warning: %s", scan, warning)
        return result

    if single:
        scan, future = first
        prefetch.close()
        result = classify_scan(scan, future)
        save_classification(result, bundle, args.out)
        for side in SIDES:
            print(_side_text(side, result.sides[side]))
        print(f"{result.seconds:.1f} s; wrote {args.out}/result.json, heatmap.nii.gz, labelmap.nii.gz")
        return 0
    from tqdm.auto import tqdm  # noqa: PLC0415

    def all_scans():
        yield first
        yield from prefetch

    rows, failed = [], 0
    folders = output_names(scans)
    for folder, (scan, future) in zip(folders, tqdm(all_scans(), total=len(scans), desc="classify", unit="scan")):
        row = {"image": str(scan)}
        try:
            result = classify_scan(scan, future)
            save_classification(result, bundle, args.out / folder)
            row.update(status="ok", output=folder)
            for side in SIDES:
                r = result.sides[side]
                row.update({f"{side}_coverage": r.coverage, f"{side}_verdict": r.verdict, f"{side}_probability": r.probability,
                            f"{side}_spread": r.spread, f"{side}_volume_ml": r.anomalous_volume_ml})
            row["warnings"] = "; ".join(result.warnings)
        except SinusAnomalyError as exc:
            failed += 1
            row.update(status="failed", error=str(exc))
            tqdm.write(f"skipped {scan}: {exc}")
        rows.append(row)
        # after every scan, so the table survives an interruption
        write_csv_atomic(args.out / RESULTS_CSV, BATCH_COLUMNS, ([r.get(c) for c in BATCH_COLUMNS] for r in rows))
    prefetch.close()
    print(f"{len(rows) - failed} of {len(rows)} scans classified; {args.out}/{RESULTS_CSV}")
    return 1 if failed else 0

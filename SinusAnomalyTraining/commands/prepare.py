"""Extract every scan of a cohort, cache the sinus crops and build patient-level splits.

--labels is a CSV with one row per sinus: patient, side (left/right), label (0 normal, 1 anomalous),
anomaly_type, and optionally image (file or DICOM folder relative to --images). Without an image
column the image of patient P is --images/P.nii.gz (or .nii, .nrrd, .mha, or a DICOM folder P).

--unlabelled is the unlabelled set for pretraining (the paper's D_u): a CSV list with columns
patient and optionally image (relative to --images, as in the labels CSV; e.g. the unlabelled.csv
of 'sinus-anomaly synth --unlabelled'), or a folder whose every scan is one patient (named after
the file or DICOM folder). Its scans are extracted and cached the same way, resumably, a bad one
skipped with a line in failures.csv; their crops go to unlabelled_crops.npy and
unlabelled_manifest.csv, never into the splits. A patient in both sets is refused.

Writes into --out: scans/<patient>/ (cached crops, reused on the next run unless the image
changed), crops.npy (all crops, float16, N x 64^3), manifest.csv (one row per sinus),
splits.json (held-out test patients, K folds, nested label fractions; the two sinuses of a
patient are always in the same split), failures.csv (scans skipped and why) and dataset.json
(summary; written last). Interrupted runs resume where they stopped. The labels table may be
comma-, semicolon- or tab-separated. --out is created and checked before any scan is registered,
and one process at a time writes it (the lock file DATASET/.sinus-anomaly.lock).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from SinusAnomalyLib.dataset import PrepareReport, prepare_dataset
from SinusAnomalyLib.splits import DEFAULT_FRACTIONS
from SinusAnomalyLib.workers import default_workers


def _percentages(text: str) -> list[float]:
    """"10,20,100" -> [0.1, 0.2, 1.0]."""
    try:
        return [float(part) / 100 for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated percentages like 10,20,100, not {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, metavar="DIR", help="folder of head MRIs")
    parser.add_argument("--labels", required=True, type=Path, metavar="CSV", help="labels CSV (one row per sinus)")
    parser.add_argument("--out", required=True, type=Path, metavar="DATASET", help="dataset folder to create or resume")
    parser.add_argument("--unlabelled", type=Path, metavar="CSV|FOLDER",
                        help="unlabelled scans for pretraining: a CSV list (patient[,image]) or a folder of scans")
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="cross-validation folds (default 5)")
    parser.add_argument("--test-fraction", type=float, default=0.2, metavar="F",
                        help="fraction of patients held out for testing (default 0.2)")
    parser.add_argument("--fractions", type=_percentages, default=list(DEFAULT_FRACTIONS), metavar="PERCENTS",
                        help="label fractions of each fold's training sinuses, in %% (default 10,20,40,60,80,100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--workers", type=int, default=default_workers(), metavar="N",
                        help=f"processes extracting scans side by side (default here {default_workers()}: the cores, at most 4)")


def format_report(report: PrepareReport) -> str:
    """The summary table printed after preparing."""
    def row(name: str, counts: dict) -> str:
        return f"{name:<14s} {counts['patients']:>8d} {counts['sinuses']:>8d} {counts['normal']:>8d} {counts['anomalous']:>9d}"

    splits = report.split_counts
    lines = [
        f"scans: {report.n_scans_prepared} of {report.n_patients_listed} prepared "
        f"({report.n_scans_extracted} extracted, {report.n_scans_reused} reused from the cache), "
        f"{len(report.failures)} failed",
        "",
        f"{'':<14s} {'patients':>8s} {'sinuses':>8s} {'normal':>8s} {'anomalous':>9s}",
        row("all", {"patients": report.n_scans_prepared, "sinuses": report.n_sinuses,
                    "normal": report.n_normal, "anomalous": report.n_anomalous}),
        row("test", splits["test"]),
    ]
    for k, fold in enumerate(splits["folds"]):
        lines.append(row(f"fold {k} train", fold["train"]))
        lines.append(row(f"fold {k} val", fold["val"]))
    lines.append("")
    lines.append("anomaly types: " + ", ".join(f"{name} {n}" for name, n in report.anomaly_types.items()))
    if report.unlabelled is not None:
        u = report.unlabelled
        lines.append(f"unlabelled set: {u['patients']} of {u['patients_listed']} scans prepared ({u['extracted']} extracted, "
                     f"{u['reused']} reused), {u['failed']} failed; {u['sinuses']} sinuses for pretraining")
    if report.failures:
        lines.append(f"failed scans (see {report.out_dir / 'failures.csv'}): "
                     + ", ".join(f.patient for f in report.failures[:10])
                     + (f" and {len(report.failures) - 10} more" if len(report.failures) > 10 else ""))
    lines.append(f"wrote {report.out_dir}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    report = prepare_dataset(
        args.images, args.labels, args.out,
        n_folds=args.folds, test_fraction=args.test_fraction, fractions=args.fractions,
        seed=args.seed, progress=not args.no_progress, unlabelled=args.unlabelled, workers=args.workers,
    )
    print(format_report(report))
    return 0

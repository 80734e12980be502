"""Export a finished run as a model bundle (.sabundle): every fold's CAE and classifier plus metadata.

The bundle is one file: crop geometry, intensity normalisation, the reference head's checksum,
the decision threshold chosen on validation, the metrics, a training data summary and versions,
with a checksum per member; loading it never unpickles anything. --install also copies it into
the per-user models folder ($SINUS_ANOMALY_MODELS or ~/.sinus-anomaly/models), where the Slicer
module and `classify --model NAME` find it.
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from SinusAnomalyLib.bundle import load_bundle
from SinusAnomalyLib.bundlefile import describe_bundle
from SinusAnomalyLib.errors import OutputError
from SinusAnomalyLib.fileio import atomic_path, check_output_folder
from SinusAnomalyLib.modelstore import BUNDLE_SUFFIX, models_folder

from ..config import METHODS
from ..export import DEFAULT_RESIDUAL_THRESHOLD, THRESHOLD_RULES, export_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder (sinus-anomaly run / finetune)")
    parser.add_argument("--out", required=True, type=Path, help=f"bundle file to write (*{BUNDLE_SUFFIX})")
    parser.add_argument("--method", choices=METHODS, default="residual", help="pretraining method of the classifiers (default residual)")
    parser.add_argument("--fraction", type=float, default=100, help="label fraction of the classifiers (default 100)")
    parser.add_argument("--residual-threshold", type=float, default=None,
                        help="heat-map level marking anomalous voxels in the label map (default: chosen on the validation "
                             f"sinuses' lesion masks when the run's cohort has them, else {DEFAULT_RESIDUAL_THRESHOLD})")
    parser.add_argument("--threshold-rule", choices=sorted(THRESHOLD_RULES), default="youden",
                        help="what the verdict threshold maximises on the validation predictions: youden (sensitivity + "
                             "specificity, the default) or f1 (the paper's metric)")
    parser.add_argument("--install", action="store_true", help="also copy the bundle into the per-user models folder")


def run(args: argparse.Namespace) -> int:
    out = args.out if args.out.name.endswith(BUNDLE_SUFFIX) else args.out.with_name(args.out.name + BUNDLE_SUFFIX)
    check_output_folder(out.parent)
    if out.is_dir():
        raise OutputError(out, "is a folder; a bundle is written as one file")
    path = export_run(args.run, out, args.method, args.fraction, args.residual_threshold, threshold_rule=args.threshold_rule)
    bundle = load_bundle(path)  # what was written must load
    print(f"bundle {path}: {len(bundle.classifiers)} fold(s), threshold {bundle.threshold:.3f}, "
          f"{path.stat().st_size / 1e6:.1f} MB, fingerprint {bundle.fingerprint}")
    print(describe_bundle(bundle.meta))
    if args.install:
        folder = models_folder()
        with atomic_path(folder / path.name) as tmp:
            shutil.copyfile(path, tmp)
        print(f"installed as {folder / path.name}")
    return 0

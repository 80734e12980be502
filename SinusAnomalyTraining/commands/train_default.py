"""Build the default model the extension ships, reproducibly, from synthetic heads only.

Makes a synthetic pool per real anatomy of Resources/Anatomies (T1/T2/FLAIR-like contrasts, sinus
size and shape variety, bony walls, septa, every lesion kind at the literature's sizes, plus an
unlabelled set for pretraining), extracts every head once (prepare: 2 patient-level folds and a
15 % in-distribution test set; in a work folder of benchmarks/loao.py its extraction is reused),
trains configs/default.json (CAE, residual pretraining, fine-tuning with and without it at 100 %
labels; on the CPU the folds side by side in --workers processes) and exports the fold ensemble of
defaultmodel.METHOD (without pretraining: it held as well on unseen anatomy) as
OUT/synthetic-default.sabundle. Its
bundle.json records that it was trained on synthetic heads, by which command, at which commit,
and that it is not a medical device. What it is worth on anatomy it never saw is measured by
benchmarks/transfer_check.sh (docs/default-model.md). Every step resumes when re-run.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from SinusAnomalyLib.bundle import load_bundle
from SinusAnomalyLib.bundlefile import describe_bundle
from SinusAnomalyLib.dataset import prepare_dataset
from SinusAnomalyLib.fileio import check_output_folder
from SinusAnomalyLib.modelstore import DEFAULT_BUNDLE
from SinusAnomalyLib.workers import default_workers

from .. import pipeline, runtime
from ..config import load_config
from ..defaultmodel import (CONFIG, INTENDED_USE, METHOD, RECIPE_FOLDS, RECIPE_TEST_FRACTION, PoolSizes, anatomy_of, combine_pools,
                           link_cached_scans, make_pools, pool_patients, source_commit)
from ..export import export_run
from ._training import locked_run_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="work folder (pools, dataset, run, bundle)")
    parser.add_argument("--heads", type=int, default=PoolSizes.labelled, help=f"labelled heads per anatomy (default {PoolSizes.labelled})")
    parser.add_argument("--unlabelled", type=int, default=PoolSizes.unlabelled,
                        help=f"unlabelled heads per anatomy for pretraining (default {PoolSizes.unlabelled})")
    parser.add_argument("--focal-heads", type=int, default=PoolSizes.focal,
                        help=f"labelled heads per anatomy whose anomalous sinuses are polyps or retention cysts "
                             f"(default {PoolSizes.focal})")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default 0)")
    parser.add_argument("--device", default=None, help="torch device (default: the configuration's, auto)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help=f"processes making pools, extracting heads and (on the CPU, one thread each) training folds "
                             f"side by side (default here {default_workers()}: the cores, at most 4)")


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    check_output_folder(args.out)
    config = load_config(CONFIG).replace(seed=args.seed)
    if args.device:
        config = config.replace(device=args.device)
    runtime.set_deterministic(config.deterministic)
    device = runtime.select_device(config.device)
    pools = make_pools(args.out, PoolSizes(args.heads, args.unlabelled, args.focal_heads), workers=args.workers)
    tables = combine_pools(pools, args.out / "all")  # the layout of benchmarks/loao.py: one work folder serves both
    dataset_dir = args.out / "dataset"
    linked = link_cached_scans(args.out / "all" / "dataset", dataset_dir, pool_patients(tables["labels"], tables["unlabelled"]))
    if linked:
        print(f"{linked} scans' extraction reused from {args.out / 'all' / 'dataset'} (the leave-one-anatomy-out check's)")
    prepare_dataset(tables["images"], tables["labels"], dataset_dir, n_folds=RECIPE_FOLDS, test_fraction=RECIPE_TEST_FRACTION,
                    fractions=[1.0], seed=0, unlabelled=tables["unlabelled"], workers=args.workers)
    with locked_run_folder(args.out / "run"):
        if device.type == "cpu" and args.workers > 1:
            pipeline.train_folds_side_by_side(config, dataset_dir, args.out / "run", args.workers)
        pipeline.run_pipeline(config, dataset_dir, args.out / "run", device)  # evaluates (and trains what is left)
    command = "sinus-anomaly " + " ".join(shlex.quote(a) for a in sys.argv[sys.argv.index("train-default"):]) \
        if "train-default" in sys.argv else "sinus-anomaly train-default"
    provenance = {
        "intended_use": INTENDED_USE,
        "trained_on": f"synthetic heads only: {args.heads} labelled and {args.unlabelled} unlabelled per anatomy, and "
                      f"{args.focal_heads} whose anomalous sinuses are polyps or retention cysts "
                      f"({', '.join(dict.fromkeys(map(anatomy_of, pools)))}), made by sinus-anomaly synth",
        "command": command,
        "commit": source_commit(),
        "seed": args.seed,
        "transfer": "leave-one-anatomy-out results: docs/default-model.md",
    }
    bundle_path = export_run(args.out / "run", args.out / DEFAULT_BUNDLE.name, METHOD, 100,
                             name="synthetic-default (synthetic heads; not a medical device)", provenance=provenance)
    bundle = load_bundle(bundle_path)
    print(describe_bundle(bundle.meta))
    print(f"default bundle {bundle_path} ({bundle_path.stat().st_size / 1e6:.1f} MB, fingerprint {bundle.fingerprint}) "
          f"in {(time.perf_counter() - started) / 60:.1f} min; to ship it: copy it to {DEFAULT_BUNDLE}")
    return 0

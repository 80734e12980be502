"""Run the whole method on a small synthetic cohort: the README's main command.

1. a synthetic cohort with known lesions (DIR/cohort), plus unlabelled heads of the same kind
   whose labels are withheld (the paper's unlabelled set D_u);
2. dataset preparation: both sinuses of every head located and cropped, patient-level splits and
   label fractions, the unlabelled set cached beside them (DIR/dataset);
3. the method with the CPU-sized 'demo' configuration (DIR/run): per fold a CAE on normal
   training sinuses, its residuals of the unlabelled set (and of every labelled crop),
   residual-reconstruction pretraining on the unlabelled set, and fine-tuning with and without
   pretraining at 10 % and 100 % of the labels; evaluation on the held-out test patients;
4. a model bundle (DIR/bundle/synthetic-demo.sabundle) and one held-out head classified with it
   (DIR/classified/<patient>/: result.json, heat map and label map on the head's grid);
5. the bundle applied to heads made from the real anatomies the cohort is not made from (Colin27
   and the single-subject T1; DIR/transfer/): how far a model of one anatomy carries to others;
6. DIR/report.md with the results table, ROC/PR curves, residual examples, the residual maps'
   voxel-wise AUROC against the true lesion masks and the sinus centres' error against the truth,
   and the bundle's heat-map scale, label Dice and volume error per lesion kind, and how often its
   out-of-distribution check fired (test sinuses, heads of the other anatomies).

Re-running resumes finished work. About 5-10 minutes on 2 CPU cores. The numbers describe
synthetic data and a scaled-down configuration: they show the workflow, not clinical performance.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from SinusAnomalyLib.bundle import ModelBundle, load_bundle
from SinusAnomalyLib.dataset import load_dataset, prepare_dataset
from SinusAnomalyLib.errors import ImageError, InvalidValueError, RegistrationError
from SinusAnomalyLib.inference import classify, save_classification
from SinusAnomalyLib.numberformat import format_number
from SinusAnomalyLib.fileio import write_text_atomic
from SinusAnomalyLib.synth import SynthParams, generate_cohort

from .. import lesion_types, localisation, pipeline, plots, report as evaluation_report, runtime, stages
from ..config import chosen_folds, load_config
from ..evaluation import binary_metrics
from ..export import export_run
from ..heatmap_report import heatmap_lines, ood_count
from ._training import locked_run_folder

# Real heads shipped with the module that the demo's cohort (built from the reference) is not made from
OTHER_ANATOMIES = ("colin27", "single_subject_t1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--cases", type=int, default=48, help="synthetic labelled patients (default 48)")
    parser.add_argument("--unlabelled", type=int, default=24, metavar="M",
                        help="synthetic unlabelled patients for pretraining (default 24; 0: pretrain on the folds' training sinuses)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--config", default="demo", help="training configuration (default: the CPU-sized 'demo')")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), default=None, help="default: the configuration's")
    parser.add_argument("--transfer-heads", type=int, default=12, metavar="N",
                        help="heads made from the real anatomies the cohort is not made from, classified with the "
                             "demo's bundle (default 12; 0: skip)")


def centre_errors(cohort: Path, dataset: Path) -> list[float]:
    """Distances (mm) between extracted and true sinus centres, over all prepared scans."""
    truth = json.loads((cohort / "truth.json").read_text(encoding="utf-8"))
    errors = []
    for patient, case in sorted(truth.items()):
        summary_path = dataset / "scans" / patient / "extraction.json"
        if not summary_path.exists():
            continue
        found = json.loads(summary_path.read_text(encoding="utf-8"))
        for side in ("left", "right"):
            errors.append(float(np.linalg.norm(np.subtract(found[side]["center_ras_mm"], case[side]["center_ras_mm"]))))
    return errors


def classify_other_anatomies(folder: Path, bundle: ModelBundle, device, n_heads: int, seed: int) -> dict:
    """Make ``n_heads`` heads from :data:`OTHER_ANATOMIES` (the demo's lesion kinds and contrast) in
    ``folder``/cohort and classify them with ``bundle``. Returns ``binary_metrics`` of the assessed
    sinuses at the bundle's threshold (``auroc``; ``specificity``: normal sinuses called normal),
    ``by_type`` (:func:`lesion_types.by_type` at that threshold) and ``heads_refused``: heads
    refused by the extraction or with no assessable side. With no assessed sinus at all, only
    ``n`` (0) and ``heads_refused``."""
    cohort = generate_cohort(folder / "cohort", n_cases=n_heads, seed=seed, params=SynthParams(anatomies=OTHER_ANATOMIES),
                             previews=0)
    truth, kinds, probabilities, refused, results = [], [], [], 0, []
    for patient, case in json.loads((cohort / "truth.json").read_text(encoding="utf-8")).items():
        try:
            result = classify(cohort / case["image"], bundle, device)
        except (ImageError, RegistrationError):  # not located, or neither side in view enough
            refused += 1
            continue
        results.append(result)
        for side, r in result.sides.items():
            if r.probability is not None:
                truth.append(int(case[side]["anomaly"] is not None))
                kinds.append(case[side]["anomaly"] or "normal")
                probabilities.append(r.probability)
    if not truth:
        return {"n": 0, "heads_refused": refused}
    return {**binary_metrics(truth, probabilities, bundle.threshold), "heads_refused": refused, "ood": ood_count(results),
            "by_type": lesion_types.by_type(kinds, truth, probabilities, bundle.threshold)}


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    if args.transfer_heads < 0:  # checked before the long work, not after it
        raise InvalidValueError(f"--transfer-heads must be 0 or more (got {args.transfer_heads})")
    out = args.out
    config = load_config(args.config).replace(seed=args.seed, folds="all")
    if args.device:
        config = config.replace(device=args.device)
    runtime.set_deterministic(config.deterministic)  # before CUDA starts: it sets CUBLAS_WORKSPACE_CONFIG
    device = runtime.select_device(config.device)

    cohort = generate_cohort(out / "cohort", n_cases=args.cases, seed=args.seed, n_unlabelled=args.unlabelled)
    dataset_dir = out / "dataset"
    prepare_dataset(cohort / "images", cohort / "labels.csv", dataset_dir, n_folds=2, seed=args.seed,
                    unlabelled=cohort / "unlabelled.csv" if args.unlabelled else None)
    with locked_run_folder(out / "run"):
        evaluation = pipeline.run_pipeline(config, dataset_dir, out / "run", device)

    dataset = load_dataset(dataset_dir)
    masks = localisation.lesion_masks_in_crops(cohort, dataset, config.crop_size)
    test_ids = [r.sample_id for r in dataset.manifest if r.patient in set(dataset.splits.test)]
    localisations = []
    residuals = {}
    for fold in chosen_folds(config, len(dataset.splits.folds)):
        residuals = stages.load_residuals(pipeline.fold_context(config, dataset, out / "run", fold, device))
        localisations.append(localisation.residual_auroc(residuals, masks, test_ids))
    examples = plots.save_residual_examples(dataset, residuals, masks, config.crop_size, out / "residual_examples.png")
    errors = centre_errors(cohort, dataset_dir)

    # the deliverable a clinician would load: a bundle, tried on one held-out synthetic head
    bundle_path = export_run(out / "run", out / "bundle" / "synthetic-demo.sabundle", "residual", 100,
                             name="synthetic-demo (trying the workflow only)")
    bundle = load_bundle(bundle_path).to(device)
    cohort_truth = json.loads((cohort / "truth.json").read_text(encoding="utf-8"))
    test_patients = sorted(dataset.splits.test)
    anomalous = [p for p in test_patients if any(cohort_truth[p][s]["anomaly"] for s in ("left", "right"))]
    held_out = (anomalous or test_patients)[0]
    truth = cohort_truth[held_out]
    classified = classify(cohort / truth["image"], bundle, device)
    save_classification(classified, bundle, out / "classified" / held_out)
    transfer = classify_other_anatomies(out / "transfer", bundle, device, args.transfer_heads, args.seed + 1) if args.transfer_heads else None

    evaluation_dir = out / "run" / "evaluation"
    for plot in evaluation["plots"]:
        shutil.copyfile(plot, out / Path(plot).name)
    table = (evaluation_dir / "report.md").read_text(encoding="utf-8").split("\n| pretraining")[1].split("\n\n")[0]
    minutes = (time.perf_counter() - started) / 60.0
    report = [
        "# SinusAnomaly demo",
        "",
        f"Synthetic cohort of {args.cases} labelled heads and {args.unlabelled} unlabelled ones (seed {args.seed}), "
        f"configuration `{args.config}` (crops {config.crop_size}^3, encoder widths {list(config.encoder_widths)}), "
        f"{minutes:.1f} min. Synthetic data and a scaled-down configuration: this shows the workflow, not clinical performance.",
        "",
        evaluation["pretraining_data"],
        "",
        "## Sinus extraction",
        "",
        f"Centre error against the synthetic truth over {len(errors)} sinuses: median {np.median(errors):.1f} mm, "
        f"max {np.max(errors):.1f} mm." if errors else "No scans were prepared.",
        "",
        "## Residual maps vs true lesions (test patients' anomalous sinuses)",
        "",
        "| fold | voxel-wise AUROC (pooled) | median per sinus | sinuses |",
        "|---|---|---|---|",
        *[f"| {k} | {m['auroc']:.3f} | {m['per_sinus_median']:.3f} | {m['n_sinuses']} |" for k, m in enumerate(localisations)],
        "",
        f"![residual examples]({examples.name})",
        "",
        "## Classification of the held-out test patients",
        "",
        "| pretraining" + table,
        *evaluation_report.per_type_lines(evaluation["table"]),
        "",
        *[f"![{Path(p).stem}]({Path(p).name})" for p in evaluation["plots"]],
        "",
        f"Details: `{evaluation_dir / 'report.md'}`, per-fold metrics beside it.",
        "",
        "## Model bundle and one classified head",
        "",
        f"Bundle: `{bundle_path}` (residual pretraining, 100 % labels, {len(bundle.classifiers)} folds, "
        f"threshold {bundle.threshold:.2f}). Held-out head `{held_out}` "
        f"(`{out / 'classified' / held_out}`, {classified.seconds:.1f} s):",
        "",
        "| side | truth | probability | spread | verdict | anomalous volume (mL) |",
        "|---|---|---|---|---|---|",
        *[f"| {side} | {truth[side]['anomaly'] or 'normal'} | {format_number(r.probability, 2)} | {format_number(r.spread, 2)} | "
          f"{r.verdict} | {format_number(r.anomalous_volume_ml, 1)} |" for side, r in classified.sides.items()],
        "",
    ]
    report += ["## Heat map, label map and out-of-distribution check", "",
               *heatmap_lines(bundle.meta, {f"the {args.transfer_heads} heads from {', '.join(OTHER_ANATOMIES)}": transfer["ood"]}
                              if transfer and transfer["n"] else None)]
    if transfer is not None and transfer["n"] == 0:
        report += ["## The bundle on anatomies it never saw", "",
                   f"None of the {args.transfer_heads} heads made from {', '.join(OTHER_ANATOMIES)} had a sinus the "
                   f"extraction could assess (`{out / 'transfer'}`).", ""]
    elif transfer is not None:
        report += [
            "## The bundle on anatomies it never saw",
            "",
            f"{args.transfer_heads} heads made like the cohort's but from other real heads ({', '.join(OTHER_ANATOMIES)}; "
            f"`{out / 'transfer'}`), classified with the bundle: AUROC {format_number(transfer['auroc'], 2)} over "
            f"{transfer['n']} assessed sinuses ({transfer['n_positive']} anomalous), "
            f"{format_number(100 * transfer['specificity'], 0)} % of normal sinuses called normal, "
            f"{format_number(100 * transfer['recall'], 0)} % of anomalous ones called anomalous"
            + (f"; {transfer['heads_refused']} heads had no assessable sinus" if transfer["heads_refused"] else "") + ". "
            "The demo's cohort is built from one anatomy and one contrast; this shows how far its model carries "
            "to other anatomies in that contrast. `benchmarks/transfer_check.sh` trains on several anatomies and "
            "contrasts and holds one anatomy out.",
            "",
            "| lesion type | sinuses | AUROC against the normal ones | called anomalous |",
            "|---|---|---|---|",
            *[f"| {kind} | {m['n']} | {format_number(m['auroc'], 2)} | {format_number(100 * m['sensitivity'], 0)} % |"
              for kind, m in transfer["by_type"].items()],
            "",
        ]
    write_text_atomic(out / "report.md", "\n".join(report))
    print("\n".join(report))
    print(f"demo finished in {minutes:.1f} min; report: {out / 'report.md'}")
    return 0

#!/usr/bin/env bash
# Leave-one-anatomy-out transfer check (issue 15): train the demo configuration on synthetic heads
# made from the reference and Colin27 with all of synth's variety (T1/T2/FLAIR-like contrasts, each
# sinus scaled 0.7-1.3 and reshaped, bony walls, septa, floor-first thickening, air-fluid levels),
# pretraining on an unlabelled set of such heads (the paper's D_u), then classify heads made from the
# held-out single-subject anatomy and print AUROC and the share of normal sinuses called normal, per
# contrast, for each held-out set (one per seed) and over all of them, and for each fold's model
# alone; per lesion kind, its AUROC against the normal sinuses and how many were called anomalous. With several training seeds, the same data are trained on once per seed: at this size the
# training seed alone moves the results, and their spread is what a single number hides. Every
# step resumes when re-run.
#
#   bash benchmarks/transfer_check.sh [OUT_DIR] [LABELLED_HEADS] [UNLABELLED_HEADS] [HELD_OUT_HEADS] [HELD_OUT_SEEDS] [TRAINING_SEEDS]
#   (defaults 48, 48, 24, 12 and 0; the demo's cohort is 48 labelled and 24 unlabelled heads;
#   HELD_OUT_SEEDS: comma-separated, one held-out set of HELD_OUT_HEADS heads per seed;
#   TRAINING_SEEDS: comma-separated, one training run (the demo configuration with that seed) per seed)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-transfer_out}
labelled=${2:-48}
unlabelled=${3:-48}
held_out=${4:-24}
seeds=${5:-12}
training_seeds=${6:-0}
sa=".venv/bin/sinus-anomaly"
variety=(--contrasts t1,t2,flair --sinus-scale 0.7,1.3 --sinus-shape-mm 3 --wall-thickness 0,2.5
  --septum-rate 0.2 --floor-first-thickening
  --anomaly-types mucosal_thickening,polyp,retention_cyst,fully_occupied,air_fluid_level --previews 0)
training_variety=()  # options for the training heads only (none now; see docs/synthetic-cohort.md)
$sa synth --out "$out/train_cohort" --cases "$labelled" --unlabelled "$unlabelled" --seed 11 --anatomies reference,colin27 \
  "${variety[@]}" "${training_variety[@]}"
$sa prepare --images "$out/train_cohort/images" --labels "$out/train_cohort/labels.csv" --out "$out/dataset" \
  --unlabelled "$out/train_cohort/unlabelled.csv" --folds 2 --test-fraction 0.25 --fractions 10,100 --no-progress
for seed in ${seeds//,/ }; do
  $sa synth --out "$out/heldout_seed$seed" --cases "$held_out" --seed "$seed" --anatomies single_subject_t1 "${variety[@]}"
done
for train in ${training_seeds//,/ }; do
  .venv/bin/python -c 'import json, sys; c = json.load(open("SinusAnomalyTraining/configs/demo.json")); c["seed"] = int(sys.argv[2]); json.dump(c, open(sys.argv[1], "w"), indent=2)' \
    "$out/demo_train$train.json" "$train"
  $sa run --config "$out/demo_train$train.json" --dataset "$out/dataset" --run-dir "$out/run_train$train"
  $sa export "$out/run_train$train" --out "$out/transfer_train$train.sabundle" --method residual --fraction 100
  for seed in ${seeds//,/ }; do
    $sa classify "$out/heldout_seed$seed/images" --model "$out/transfer_train$train.sabundle" --out "$out/classified_seed${seed}_train$train" || true
  done
done
.venv/bin/python - "$out" "$seeds" "$training_seeds" <<'PY'
import csv, json, sys
from pathlib import Path
import numpy as np
from SinusAnomalyLib.bundlefile import read_bundle_meta
from SinusAnomalyTraining.evaluation import binary_metrics
from SinusAnomalyTraining.lesion_types import by_type
out, seeds, training_seeds = sys.argv[1], sys.argv[2].split(","), sys.argv[3].split(",")


def sinuses_of(seed, train):
    """(contrast, anomaly kind or None, probability, verdict, fold probabilities) of every assessed held-out sinus."""
    truth = json.load(open(f"{out}/heldout_seed{seed}/truth.json"))
    classified = f"{out}/classified_seed{seed}_train{train}"
    found = []
    for row in csv.DictReader(open(f"{classified}/results.csv")):
        patient = Path(row["image"]).name.split(".")[0]
        assessed = [side for side in ("left", "right") if row[f"{side}_verdict"] in ("normal", "anomalous")]
        if not assessed:  # a refused scan has no result.json
            continue
        result = json.load(open(f"{classified}/{patient}/result.json"))
        for side in assessed:
            found.append((truth[patient]["pose"]["contrast"], truth[patient][side]["anomaly"], float(row[f"{side}_probability"]),
                          row[f"{side}_verdict"], result["sides"][side]["fold_probabilities"]))
    return found


def auroc_text(metrics):
    return "-" if metrics["single_class"] else f"{metrics['auroc']:.2f}"


def share(flags):
    return float(np.mean(flags)) if flags else float("nan")


def scores(group):
    """AUROC of the probabilities, and classify's verdicts as a user sees them: which normal sinuses it
    called normal, which anomalous ones anomalous (a model that calls everything normal gets the first
    share right and the second wrong)."""
    metrics = binary_metrics([int(s[1] is not None) for s in group], [s[2] for s in group])
    normal_verdicts = [s[3] == "normal" for s in group if s[1] is None]
    anomalous_verdicts = [s[3] == "anomalous" for s in group if s[1] is not None]
    return metrics, normal_verdicts, anomalous_verdicts


def summary(group):
    metrics, normal_verdicts, anomalous_verdicts = scores(group)
    return (f"{len(group)} sinuses, {len(anomalous_verdicts)} anomalous; AUROC {auroc_text(metrics)}; normal sinuses called normal "
            f"{sum(normal_verdicts)}/{len(normal_verdicts)} ({100 * share(normal_verdicts):.0f} %), anomalous ones anomalous "
            f"{sum(anomalous_verdicts)}/{len(anomalous_verdicts)} ({100 * share(anomalous_verdicts):.0f} %)")


def per_fold(group, fold_thresholds):
    """Each fold's model alone at its own validation threshold: how far the ensemble's verdicts rest on one fold."""
    label = [int(s[1] is not None) for s in group]
    parts = []
    for k, threshold in enumerate(fold_thresholds):
        metrics = binary_metrics(label, [s[4][k] for s in group], threshold)
        parts.append(f"fold {k}: AUROC {auroc_text(metrics)}, {100 * metrics['specificity']:.0f} % of normals called normal "
                     f"at its threshold {threshold:.2f}")
    return "; ".join(parts)


overall = {}
for train in training_seeds:
    meta = read_bundle_meta(f"{out}/transfer_train{train}.sabundle")
    fold_thresholds = meta["fold_thresholds"]
    print(f"training seed {train}:")
    sets = {seed: sinuses_of(seed, train) for seed in seeds}
    for seed, sinuses in sets.items():
        print(f"held-out anatomy (single_subject_t1), seed {seed}: {summary(sinuses)} (goals: AUROC >= 0.85, >= 75 % of normals)")
        for contrast in sorted({s[0] for s in sinuses}):
            print(f"  {contrast}: {summary([s for s in sinuses if s[0] == contrast])}")
    everything = [s for sinuses in sets.values() for s in sinuses]
    if len(sets) > 1:
        print(f"all {len(sets)} held-out sets: {summary(everything)}")
    print(f"  each fold's model alone: {per_fold(everything, fold_thresholds)}")
    # classify's verdict rule: the probability (6 decimals in results.csv) against the bundle's threshold
    kinds = by_type([s[1] or "normal" for s in everything], [int(s[1] is not None) for s in everything],
                    [s[2] for s in everything], meta["threshold"])
    print("  by kind against the normal sinuses: " + ", ".join(
        f"{kind} AUROC {'-' if np.isnan(m['auroc']) else format(m['auroc'], '.2f')}, called anomalous "
        f"{round(m['sensitivity'] * m['n'])}/{m['n']}" for kind, m in kinds.items()))
    metrics, normal_verdicts, anomalous_verdicts = scores(everything)
    overall[train] = (metrics["auroc"], share(normal_verdicts), share(anomalous_verdicts))
if len(overall) > 1:
    aurocs, normals, anomalous = zip(*overall.values())
    print(f"over {len(overall)} training seeds ({', '.join(overall)}), all held-out sets: AUROC "
          + ", ".join(f"{a:.2f}" for a in aurocs) + f" (mean {np.mean(aurocs):.2f}); normal sinuses called normal "
          + ", ".join(f"{100 * n:.0f} %" for n in normals) + f" (mean {100 * np.mean(normals):.0f} %); anomalous ones anomalous "
          + ", ".join(f"{100 * n:.0f} %" for n in anomalous) + f" (mean {100 * np.mean(anomalous):.0f} %)")
PY

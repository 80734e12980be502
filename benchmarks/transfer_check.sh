#!/usr/bin/env bash
# Leave-one-anatomy-out transfer check (issue 15): train the demo configuration on synthetic heads
# made from the reference and Colin27 with all of synth's variety (T1/T2/FLAIR-like contrasts, each
# sinus scaled 0.7-1.3 and reshaped, bony walls, septa, floor-first thickening, air-fluid levels),
# pretraining on an unlabelled set of such heads (the paper's D_u), then classify heads made from the
# held-out single-subject anatomy and print AUROC and the share of normal sinuses called normal, per
# contrast, for each held-out set (one per seed) and over all of them, and for each fold's model
# alone. Every step resumes when re-run.
#
#   bash benchmarks/transfer_check.sh [OUT_DIR] [LABELLED_HEADS] [UNLABELLED_HEADS] [HELD_OUT_HEADS] [HELD_OUT_SEEDS]
#   (defaults 48, 48, 24 and 12; the demo's cohort is 48 labelled and 24 unlabelled heads;
#   HELD_OUT_SEEDS: comma-separated, one held-out set of HELD_OUT_HEADS heads per seed)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-transfer_out}
labelled=${2:-48}
unlabelled=${3:-48}
held_out=${4:-24}
seeds=${5:-12}
sa=".venv/bin/sinus-anomaly"
variety=(--contrasts t1,t2,flair --sinus-scale 0.7,1.3 --sinus-shape-mm 3 --wall-thickness 0,2.5
  --septum-rate 0.2 --floor-first-thickening
  --anomaly-types mucosal_thickening,polyp,retention_cyst,fully_occupied,air_fluid_level --previews 0)
$sa synth --out "$out/train_cohort" --cases "$labelled" --unlabelled "$unlabelled" --seed 11 --anatomies reference,colin27 "${variety[@]}"
$sa prepare --images "$out/train_cohort/images" --labels "$out/train_cohort/labels.csv" --out "$out/dataset" \
  --unlabelled "$out/train_cohort/unlabelled.csv" --folds 2 --test-fraction 0.25 --fractions 10,100 --no-progress
$sa run --config demo --dataset "$out/dataset" --run-dir "$out/run"
$sa export "$out/run" --out "$out/transfer.sabundle" --method residual --fraction 100
for seed in ${seeds//,/ }; do
  $sa synth --out "$out/heldout_seed$seed" --cases "$held_out" --seed "$seed" --anatomies single_subject_t1 "${variety[@]}"
  $sa classify "$out/heldout_seed$seed/images" --model "$out/transfer.sabundle" --out "$out/classified_seed$seed" || true
done
.venv/bin/python - "$out" "$seeds" <<'PY'
import csv, json, sys
from collections import defaultdict
from pathlib import Path
import numpy as np
from SinusAnomalyLib.bundlefile import read_bundle_meta
from SinusAnomalyTraining.evaluation import binary_metrics
out, seeds = sys.argv[1], sys.argv[2].split(",")
fold_thresholds = read_bundle_meta(f"{out}/transfer.sabundle")["fold_thresholds"]


def sinuses_of(seed):
    """(contrast, anomaly kind or None, probability, verdict, fold probabilities) of every assessed held-out sinus."""
    truth = json.load(open(f"{out}/heldout_seed{seed}/truth.json"))
    found = []
    for row in csv.DictReader(open(f"{out}/classified_seed{seed}/results.csv")):
        patient = Path(row["image"]).name.split(".")[0]
        for side in ("left", "right"):
            if row[f"{side}_verdict"] in ("normal", "anomalous"):  # a refused scan has no result.json
                result = json.load(open(f"{out}/classified_seed{seed}/{patient}/result.json"))
                found.append((truth[patient]["pose"]["contrast"], truth[patient][side]["anomaly"], float(row[f"{side}_probability"]),
                              row[f"{side}_verdict"], result["sides"][side]["fold_probabilities"]))
    return found


def auroc_text(metrics):
    return "-" if metrics["single_class"] else f"{metrics['auroc']:.2f}"


def summary(group):
    label = [int(s[1] is not None) for s in group]
    normal_verdicts = [s[3] == "normal" for s in group if s[1] is None]  # classify's verdicts, as a user sees them
    auroc = auroc_text(binary_metrics(label, [s[2] for s in group]))
    return (f"{len(group)} sinuses, {sum(label)} anomalous; AUROC {auroc}; normal sinuses called normal "
            f"{sum(normal_verdicts)}/{len(normal_verdicts)} ({100 * np.mean(normal_verdicts) if normal_verdicts else float('nan'):.0f} %)")


def per_fold(group):
    """Each fold's model alone at its own validation threshold: how far the ensemble's verdicts rest on one fold."""
    label = [int(s[1] is not None) for s in group]
    parts = []
    for k, threshold in enumerate(fold_thresholds):
        metrics = binary_metrics(label, [s[4][k] for s in group], threshold)
        parts.append(f"fold {k}: AUROC {auroc_text(metrics)}, {100 * metrics['specificity']:.0f} % of normals called normal "
                     f"at its threshold {threshold:.2f}")
    return "; ".join(parts)


sets = {seed: sinuses_of(seed) for seed in seeds}
for seed, sinuses in sets.items():
    print(f"held-out anatomy (single_subject_t1), seed {seed}: {summary(sinuses)} (goals: AUROC >= 0.85, >= 75 % of normals)")
    for contrast in sorted({s[0] for s in sinuses}):
        print(f"  {contrast}: {summary([s for s in sinuses if s[0] == contrast])}")
everything = [s for sinuses in sets.values() for s in sinuses]
if len(sets) > 1:
    print(f"all {len(sets)} held-out sets: {summary(everything)}")
print(f"  each fold's model alone: {per_fold(everything)}")
found = defaultdict(list)
for s in everything:
    if s[1] is not None:
        found[s[1]].append(s[3] == "anomalous")
print("  called anomalous, by kind: " + ", ".join(f"{kind} {sum(v)}/{len(v)}" for kind, v in sorted(found.items())))
PY

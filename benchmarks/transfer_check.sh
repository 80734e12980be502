#!/usr/bin/env bash
# Leave-one-anatomy-out transfer check of the default model's recipe (issues 15, 24, 30): for every
# real anatomy in turn and every training seed, the recipe of `sinus-anomaly train-default`
# (configs/default.json) is trained on synthetic heads of the other anatomies (all contrasts,
# shape variety, every lesion kind at the literature's sizes, an unlabelled set for pretraining)
# and its bundle classifies every head made from the held-out anatomy. Prints and writes
# (OUT_DIR/loao.md, OUT_DIR/loao.json, per-sinus predictions in OUT_DIR/without-*/) AUROC,
# specificity and sensitivity at the bundle's threshold, per lesion type and per contrast, as mean
# and spread over seeds; polyps and retention cysts also on a focal test pool of 48 more heads per
# anatomy (loao.py --focal-heads). Every step resumes when re-run. docs/default-model.md holds its
# last result.
#
#   bash benchmarks/transfer_check.sh [OUT_DIR] [TRAINING_SEEDS] [HEADS_PER_ANATOMY] [UNLABELLED_PER_ANATOMY]
#   (defaults transfer_out, 0,1,2, and the recipe's pool sizes, defaultmodel.PoolSizes: 240 and 16;
#   pools and extraction of about 1,200 heads in worker processes, then 4 x 3 training runs. The
#   check in docs/default-model.md passed --methods none --config benchmarks/loao-cae1.json: the
#   same classifiers with a 1-epoch CAE, about 3 minutes per training on one core)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-transfer_out}
seeds=${2:-0,1,2}
sizes=()
[ -n "${3:-}" ] && sizes+=(--heads "$3")
[ -n "${4:-}" ] && sizes+=(--unlabelled "$4")
.venv/bin/python benchmarks/loao.py --work "$out" --seeds "$seeds" "${sizes[@]}"

#!/usr/bin/env bash
# Issue 28's focused grid for one cohort seed: a synthetic cohort of that seed, prepared once, then
# `experiment --config grid-residual` (no pretraining, residual pretraining with the paper's
# per-crop target, BYOL) and `grid-residual-cohort` (the cohort-scaled target) in a second run
# folder started as a copy of the first one's folds, so only the residuals, the residual
# pretraining and its fine-tunings are made again. Every step resumes when re-run.
# `python benchmarks/residual_grid.py --work WORK --seeds ...` then tabulates the seeds together
# (docs/grid-residual.md).
#
#   bash benchmarks/residual_grid.sh WORK SEED [LABELLED] [UNLABELLED]   (defaults 150 and 200)
#
# Two seeds fit side by side on 2 cores with THREADS=1 each (the default); THREADS=2 for one alone.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$1
seed=$2
labelled=${3:-150}
unlabelled=${4:-200}
threads=${THREADS:-1}
export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=$threads
cli=(.venv/bin/python -m SinusAnomalyTraining)
cohort="$work/cohort-s$seed"
dataset="$work/ds-s$seed"
per_crop="$work/run-s$seed-residual"
cohort_scaled="$work/run-s$seed-cohort"
mkdir -p "$work"
"${cli[@]}" synth --out "$cohort" --cases "$labelled" --unlabelled "$unlabelled" --seed "$seed" --previews 0
"${cli[@]}" prepare --images "$cohort/images" --labels "$cohort/labels.csv" --unlabelled "$cohort/unlabelled.csv" \
    --out "$dataset" --no-progress
"${cli[@]}" experiment --config grid-residual --dataset "$dataset" --run-dir "$per_crop" --no-progress
if [ ! -d "$cohort_scaled" ]; then
    mkdir -p "$cohort_scaled.partial"
    cp -r "$per_crop"/fold* "$cohort_scaled.partial/"
    mv "$cohort_scaled.partial" "$cohort_scaled"
fi
"${cli[@]}" experiment --config grid-residual-cohort --dataset "$dataset" --run-dir "$cohort_scaled" --no-progress

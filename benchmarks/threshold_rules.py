"""Would another threshold rule carry to an anatomy the model never saw? (issue 24, item 4)

For every run of a leave-one-anatomy-out variant (``loao.py``; method ``none``), the threshold is
chosen again from the same validation predictions each fold model made during training, by rules
other than the bundles' Youden's J: the q-th percentile of the validation normals' probabilities
(q = 80, 90, 95; median over the folds, as the bundle takes the median of its folds' thresholds).
Each is applied to the stored held-out predictions of the anatomy's pool. Prints specificity and
sensitivity, mean ± SD over the (anatomy, seed) runs, and the lowest specificity of any run.

    python benchmarks/threshold_rules.py --work /work/loao [--tags ,_paintlarge,_focalcos]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly")]

from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402
from SinusAnomalyTraining.evaluation import best_youden_threshold  # noqa: E402

RULES = ("youden", "q80", "q90", "q95")


def read(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def fold_threshold(rule: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One fold's threshold by ``rule`` from its validation sinuses."""
    if rule == "youden":
        return float(best_youden_threshold(labels, probabilities))
    return float(np.quantile(probabilities[labels == 0], int(rule[1:]) / 100))


def run_thresholds(run: Path) -> dict[str, float]:
    """Each rule's threshold for the bundle of ``run`` (median over its folds)."""
    per_fold = {rule: [] for rule in RULES}
    for predictions in sorted(run.glob("fold*/finetune/none/frac100/predictions.csv")):
        val = [r for r in read(predictions) if r["split"] == "val"]
        y = np.array([int(r["label"]) for r in val])
        p = np.array([float(r["p_anomalous"]) for r in val])
        for rule in RULES:
            per_fold[rule].append(fold_threshold(rule, y, p))
    return {rule: float(np.median(values)) for rule, values in per_fold.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tags", default=",_paintlarge", help="variant tags, comma-separated ('' is the default runs)")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    print("| variant | rule | specificity | sensitivity | lowest specificity |\n|---|---|---|---|---|")
    for tag in args.tags.split(","):
        found = {rule: [] for rule in RULES}
        for anatomy in ANATOMIES:
            for seed in args.seeds.split(","):
                split = args.work / f"without-{anatomy}"
                if not (split / f"predictions_seed{seed}{tag}.csv").is_file():
                    continue
                rows = [r for r in read(split / f"predictions_seed{seed}{tag}.csv") if r["method"] == "none"]
                y = np.array([int(r["label"]) for r in rows])
                p = np.array([float(r["probability"]) for r in rows])
                for rule, t in run_thresholds(split / f"run_seed{seed}{tag}").items():
                    found[rule].append((np.mean(p[y == 0] < t), np.mean(p[y == 1] >= t)))
        for rule, values in found.items():
            v = np.array(values)
            if len(v):
                print(f"| {tag or 'default'} | {rule} | {v[:, 0].mean():.2f} ± {v[:, 0].std(ddof=1):.2f} | "
                      f"{v[:, 1].mean():.2f} ± {v[:, 1].std(ddof=1):.2f} | {v[:, 0].min():.2f} |")


if __name__ == "__main__":
    main()

"""Would another threshold rule carry to an anatomy the model never saw? (issue 24, item 4)

For every run of a leave-one-anatomy-out variant (``loao.py``; method ``none``), the threshold is
chosen again from the same validation predictions each fold model made during training, by rules
other than the bundles' Youden's J: the q-th percentile of the validation normals' probabilities
(q = 80, 90, 95; median over the folds, as the bundle takes the median of its folds' thresholds).
Each is applied to the stored held-out predictions of the anatomy's pool. Prints specificity and
sensitivity, mean ± SD over the (anatomy, seed) runs, and the lowest specificity of any run.
``--plot FILE`` draws, per variant, the held-out normal and anomalous sinuses' probabilities by
anatomy beside each run's threshold: where the threshold fails to carry, one sees why.

    python benchmarks/threshold_rules.py --work /work/loao [--tags ,_paintlarge,_focalcos] [--plot scores.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "SinusAnomaly")]

from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402
from SinusAnomalyTraining.defaultmodel import read_table  # noqa: E402
from SinusAnomalyTraining.evaluation import best_youden_threshold  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from loao import stored_predictions  # noqa: E402

RULES = ("youden", "q80", "q90", "q95")



def fold_threshold(rule: str, labels: np.ndarray, probabilities: np.ndarray) -> float:
    """One fold's threshold by ``rule`` from its validation sinuses."""
    if rule == "youden":
        return float(best_youden_threshold(labels, probabilities))
    return float(np.quantile(probabilities[labels == 0], int(rule[1:]) / 100))


def run_thresholds(run: Path) -> dict[str, float]:
    """Each rule's threshold for the bundle of ``run`` (median over its folds)."""
    per_fold = {rule: [] for rule in RULES}
    for predictions in sorted(run.glob("fold*/finetune/none/frac100/predictions.csv")):
        val = [r for r in read_table(predictions) if r["split"] == "val"]
        y = np.array([int(r["label"]) for r in val])
        p = np.array([float(r["p_anomalous"]) for r in val])
        for rule in RULES:
            per_fold[rule].append(fold_threshold(rule, y, p))
    return {rule: float(np.median(values)) for rule, values in per_fold.items()}


def plot_scores(work: Path, tags: list[str], seeds: list[str], path: Path) -> Path:
    """One panel per variant: per held-out anatomy, boxes of its normal and anomalous sinuses'
    probabilities (seeds pooled) and each run's bundle threshold as a short line."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(9, 3.2 * len(tags)))
    FigureCanvasAgg(fig)
    for ax, tag in zip(fig.subplots(len(tags), 1, squeeze=False)[:, 0], tags):
        for i, anatomy in enumerate(ANATOMIES):
            rows = [r for seed in seeds for r in stored_predictions(work, anatomy, int(seed), tag) or []]
            if not rows:
                continue
            for offset, label, colour in ((-0.18, "0", "tab:blue"), (0.18, "1", "tab:red")):
                values = [float(r["probability"]) for r in rows if r["label"] == label]
                ax.boxplot([values], positions=[i + offset], widths=0.3, patch_artist=True, showfliers=False,
                           boxprops={"facecolor": colour, "alpha": 0.5}, medianprops={"color": "k"})
            for t in sorted({float(r["threshold"]) for r in rows}):
                ax.plot([i - 0.4, i + 0.4], [t, t], color="k", lw=1, ls="--")
        ax.set_xticks(range(len(ANATOMIES)), [a.replace("_", " ") + " held out" for a in ANATOMIES], fontsize=8)
        ax.set_xlim(-0.6, len(ANATOMIES) - 0.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability anomalous")
        ax.set_title(f"{tag or 'default (shipped recipe)'}: normal (blue) and anomalous (red) held-out sinuses; "
                     "dashed: each seed's bundle threshold", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tags", default=",_paintlarge", help="variant tags, comma-separated ('' is the default runs)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--plot", type=Path, help="also draw the held-out probabilities and thresholds per variant")
    args = parser.parse_args()
    if args.plot:
        plot_scores(args.work, args.tags.split(","), args.seeds.split(","), args.plot)
    print("| variant | rule | specificity | sensitivity | lowest specificity |\n|---|---|---|---|---|")
    for tag in args.tags.split(","):
        found = {rule: [] for rule in RULES}
        for anatomy in ANATOMIES:
            for seed in args.seeds.split(","):
                rows = stored_predictions(args.work, anatomy, int(seed), tag)
                if rows is None:
                    continue
                y = np.array([int(r["label"]) for r in rows])
                p = np.array([float(r["probability"]) for r in rows])
                for rule, t in run_thresholds(args.work / f"without-{anatomy}" / f"run_seed{seed}{tag}").items():
                    found[rule].append((np.mean(p[y == 0] < t), np.mean(p[y == 1] >= t)))
        for rule, values in found.items():
            v = np.array(values)
            if len(v):
                print(f"| {tag or 'default'} | {rule} | {v[:, 0].mean():.2f} ± {v[:, 0].std(ddof=1):.2f} | "
                      f"{v[:, 1].mean():.2f} ± {v[:, 1].std(ddof=1):.2f} | {v[:, 0].min():.2f} |")


if __name__ == "__main__":
    main()

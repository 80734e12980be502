"""Would the head's other sinus make a score travel across anatomies? Checked on stored predictions.

For every held-out anatomy and seed of a leave-one-anatomy-out variant (``loao.py``'s
``predictions_seed<S><tag>.csv`` and ``focal_predictions_seed<S><tag>.csv``), each sinus's logit
minus ``beta`` times the logit of the same head's other sinus (0 where that one was not
extracted): the AUROC on the pool and focal pool together, per lesion type, and the median score
of the anatomy's normal sinuses (how far the anatomies' normals sit apart). Nothing is trained.

    python benchmarks/contralateral_scores.py --work /work/loao [--tag _plp25] [--betas 0,0.5,1] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "SinusAnomaly")]

from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loao import print_and_write, stored_predictions  # noqa: E402

KINDS = ("polyp", "retention_cyst", "mucosal_thickening", "air_fluid_level", "fully_occupied")
OTHER = {"left": "right", "right": "left"}


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def adjusted(rows: list[dict], beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Lesion types and scores ``logit(p) - beta * logit(p of the other sinus)`` of one set of predictions."""
    by_sinus = {(r["patient"], r["side"]): float(r["probability"]) for r in rows}
    p = np.array([by_sinus[r["patient"], r["side"]] for r in rows])
    other = np.array([by_sinus.get((r["patient"], OTHER[r["side"]]), 0.5) for r in rows])
    return np.array([r["anomaly_type"] for r in rows]), logit(p) - beta * logit(other)


def run_scores(types: np.ndarray, score: np.ndarray) -> dict:
    y = types != "normal"
    out = {"all": roc_auc_score(y, score), "normal median": float(np.median(score[~y]))}
    for kind in KINDS:
        chosen = (types == "normal") | (types == kind)
        if (types == kind).any():
            out[kind] = roc_auc_score(y[chosen], score[chosen])
    return out


def table(work: Path, tag: str, betas, seeds=(0, 1, 2), method: str = "none") -> str:
    lines = ["| beta | all | " + " | ".join(KINDS) + " | " + " | ".join(f"normal median {a}" for a in ANATOMIES) + " |",
             "|---|---|" + "---|" * (len(KINDS) + len(ANATOMIES))]
    for beta in betas:
        runs = {a: [] for a in ANATOMIES}
        for anatomy in ANATOMIES:
            for seed in seeds:
                # pool and focal pool hold different heads: each pairs its own sides
                rows = [r for focal in (False, True) if (r := stored_predictions(work, anatomy, seed, tag, method, focal))]
                if rows:
                    pairs = [adjusted(r, beta) for r in rows]
                    runs[anatomy].append(run_scores(np.concatenate([t for t, _ in pairs]), np.concatenate([s for _, s in pairs])))
        every = [r for rs in runs.values() for r in rs]
        cells = [f"{np.mean([r['all'] for r in every]):.2f}"] + [f"{np.mean([r[k] for r in every if k in r]):.2f}" for k in KINDS]
        cells += [f"{np.mean([r['normal median'] for r in runs[a]]):+.2f}" for a in ANATOMIES]
        lines.append(f"| {beta:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--tag", default="")
    parser.add_argument("--betas", default="0,0.5,1")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = table(args.work, args.tag, [float(b) for b in args.betas.split(",")])
    print_and_write(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

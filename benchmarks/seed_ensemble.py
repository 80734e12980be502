"""What averaging the seeds' bundles would give, from a leave-one-anatomy-out check's stored predictions.

``loao.py`` trains one bundle per held-out anatomy and seed and stores its predictions on the
held-out pool and focal test pool. Here, per held-out anatomy, the seeds' probabilities of each
sinus are averaged (an ensemble of the seeds' bundles, nothing trained again) and scored as one
bundle would be, at the mean of the seeds' thresholds (an ensemble exported as one bundle would
fit its own). Printed per metric: the single bundles (mean ± SD over the (anatomy, seed) runs),
the ensembles (mean ± SD over the anatomies), and per anatomy the ensemble minus the mean of its
seeds (mean ± SD, and in how many anatomies the ensemble is higher). Only sinuses every seed
classified are scored.

    python benchmarks/seed_ensemble.py --work /work/loao_s06 [--tags ,_c64blur] [--method none] [--seeds 0,1,2] [--out FILE.md]

``--tags`` lists the variants (``loao.py --tag``; an empty item is the untagged runs), one table each.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "SinusAnomaly")]

from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_loao import METRICS, common, finite_mean, run_scores  # noqa: E402
from loao import mean_sd, print_and_write, stored_predictions  # noqa: E402


def averaged(runs: list[list[dict]]) -> list[dict]:
    """One set of rows (as :func:`compare_loao.common` gives them): probability and threshold the seeds' means."""
    threshold = float(np.mean([float(rows[0]["threshold"]) for rows in runs])) if runs[0] else float("nan")
    return [dict(row, probability=float(np.mean([float(rows[i]["probability"]) for rows in runs])), threshold=threshold)
            for i, row in enumerate(runs[0])]


def ensemble_scores(work: Path, tag: str, method: str, seeds, anatomies=ANATOMIES) -> dict:
    """``{anatomy: (scores of each seed's bundle, scores of their average)}`` for every anatomy all seeds ran."""
    out = {}
    for anatomy in anatomies:
        pools = [stored_predictions(work, anatomy, s, tag, method) for s in seeds]
        if any(p is None for p in pools):
            continue
        focals = [stored_predictions(work, anatomy, s, tag, method, focal=True) or [] for s in seeds]
        pools, focals = common(*pools), common(*focals)
        singles = [run_scores(p, f) for p, f in zip(pools, focals)]
        out[anatomy] = (singles, run_scores(averaged(pools), averaged(focals) if focals[0] else []))
    return out


def markdown(found: dict, name: str, n_seeds: int) -> str:
    lines = [f"{name}: {len(found)} held-out anatomies, {n_seeds} seeds each.", "",
             f"| metric | single bundles | ensemble of {n_seeds} seeds | ensemble minus its seeds' mean | ensemble higher |",
             "|---|---|---|---|---|"]
    for label, key in METRICS.items():
        single = [s.get(key, np.nan) for singles, _ in found.values() for s in singles]
        ensemble = np.array([e.get(key, np.nan) for _, e in found.values()])
        gain = ensemble - np.array([finite_mean([s.get(key) for s in singles]) for singles, _ in found.values()])
        lines.append(f"| {label} | {mean_sd(single)} | {mean_sd(ensemble)} | {mean_sd(gain)} | "
                     f"{int((gain > 0).sum())} of {len(gain)} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the loao.py work folder")
    parser.add_argument("--tags", default="", help="comma-separated variant tags (loao.py --tag); empty: the untagged runs")
    parser.add_argument("--method", default="none")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    tables = []
    for tag in args.tags.split(","):
        found = ensemble_scores(args.work, tag, args.method, seeds)
        if not found:
            print(f"{args.work}: no held-out anatomy has predictions of every seed {args.seeds} (tag {tag!r})", file=sys.stderr)
            return 1
        tables.append(markdown(found, f"Variant {tag or '(no tag)'}", len(seeds)))
    text = "\n".join(tables)
    print_and_write(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

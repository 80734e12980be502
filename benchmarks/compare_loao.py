"""Two leave-one-anatomy-out variants compared on the same held-out sinuses, paired by anatomy and seed.

``loao.py`` writes, per held-out anatomy and seed, the predictions of a variant's bundle on that
anatomy's pool (``without-<A>/predictions_seed<S><tag>.csv``) and focal test pool
(``focal_predictions_seed<S><tag>.csv``). Two variants may come from different work folders whose
pools differ in size (``--heads``): only the sinuses both classified are scored, so a difference is
the variants', not the test sets'. For each variant: AUROC, specificity and sensitivity at its
bundle's threshold on the pool; AUROC of polyps and retention cysts against the normal sinuses on the
pool and focal pool together; then the paired differences (mean ± SD over the (anatomy, seed) pairs,
and in how many pairs the second variant is higher).

    python benchmarks/compare_loao.py --a /work/loao --b /work/loao_big [--a-tag T] [--b-tag T] [--method none]
                                      [--seeds 0,1,2] [--out FILE.md]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "SinusAnomaly")]

from SinusAnomalyLib.reference import ANATOMIES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loao import focal_scores, mean_sd, print_and_write, scores, stored_predictions  # noqa: E402

METRICS = {"AUROC": "auroc", "specificity": "specificity", "sensitivity": "sensitivity",
           "polyps (pool + focal pool)": "focal:type:polyp:auroc", "cysts (pool + focal pool)": "focal:type:retention_cyst:auroc",
           "thickening": "type:mucosal_thickening:auroc", "fully occupied": "type:fully_occupied:auroc",
           "air-fluid level": "type:air_fluid_level:auroc"}  # the other kinds: on the pool only


def common(*runs: list[dict]) -> list[list[dict]]:
    """Each run's rows of the sinuses every run holds, in one order."""
    key = lambda r: (r["patient"], r["side"])  # noqa: E731
    shared = set.intersection(*({key(r) for r in rows} for rows in runs))
    return [sorted((r for r in rows if key(r) in shared), key=key) for rows in runs]


def run_scores(pool: list[dict], focal: list[dict]) -> dict:
    out = scores(pool)
    out.update(focal_scores(pool + focal))
    return out


def compare(a: tuple[Path, str], b: tuple[Path, str], seeds, method: str, anatomies=ANATOMIES) -> dict:
    """``{(anatomy, seed): (scores of a, scores of b, sinuses compared)}`` for every run both variants have."""
    pairs = {}
    for anatomy in anatomies:
        for seed in seeds:
            pool_a, pool_b = (stored_predictions(w, anatomy, seed, t, method) for w, t in (a, b))
            if pool_a is None or pool_b is None:
                continue
            focal_a, focal_b = (stored_predictions(w, anatomy, seed, t, method, focal=True) or [] for w, t in (a, b))
            pool_a, pool_b = common(pool_a, pool_b)
            focal_a, focal_b = common(focal_a, focal_b)
            pairs[anatomy, seed] = (run_scores(pool_a, focal_a), run_scores(pool_b, focal_b), len(pool_a) + len(focal_a))
    return pairs


def finite_mean(values) -> float:
    """The mean of the finite values; NaN where there are none (a kind absent from an anatomy's sets)."""
    v = np.array([np.nan if x is None else x for x in values], float)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")


def markdown(pairs: dict, name_a: str, name_b: str) -> str:
    lines = [f"Runs compared: {len(pairs)} (anatomy, seed) pairs; sinuses per pair "
             f"{min(n for *_, n in pairs.values())}-{max(n for *_, n in pairs.values())} (pool + focal pool).", "",
             f"| metric | {name_a} | {name_b} | difference | {name_b} higher |", "|---|---|---|---|---|"]
    for label, key in METRICS.items():
        va = np.array([s_a.get(key, np.nan) for s_a, _, _ in pairs.values()])
        vb = np.array([s_b.get(key, np.nan) for _, s_b, _ in pairs.values()])
        lines.append(f"| {label} | {mean_sd(va)} | {mean_sd(vb)} | {mean_sd(vb - va)} | {int((vb > va).sum())} of {len(va)} |")
    lines += ["", f"Per held-out anatomy (mean over seeds), {name_a} → {name_b}:", "",
              "| held out | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for anatomy in dict.fromkeys(a for a, _ in pairs):
        runs = [v for (a, _), v in pairs.items() if a == anatomy]
        cells = [f"{finite_mean([s_a.get(k) for s_a, _, _ in runs]):.2f} → {finite_mean([s_b.get(k) for _, s_b, _ in runs]):.2f}"
                 for k in METRICS.values()]
        lines.append(f"| {anatomy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the first variant's loao.py work folder")
    parser.add_argument("--b", type=Path, required=True, help="the second variant's loao.py work folder")
    parser.add_argument("--a-tag", default="")
    parser.add_argument("--b-tag", default="")
    parser.add_argument("--method", default="none")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, help="also write the tables here")
    args = parser.parse_args(argv)
    pairs = compare((args.a, args.a_tag), (args.b, args.b_tag), [int(s) for s in args.seeds.split(",")], args.method)
    if not pairs:
        print("no (anatomy, seed) run that both variants have", file=sys.stderr)
        return 1
    text = markdown(pairs, f"{args.a.name}{args.a_tag}", f"{args.b.name}{args.b_tag}")
    print_and_write(text, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

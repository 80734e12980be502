"""Tabulate issue 28's focused grid over cohort seeds (docs/grid-residual.md).

``benchmarks/residual_grid.sh WORK SEED`` leaves, per cohort seed S, ``WORK/cohort-sS`` (the synthetic
cohort, with the unlabelled heads' truth), ``WORK/ds-sS`` (the prepared dataset),
``WORK/run-sS-residual`` (``grid-residual``: none, residual pretraining with the paper's per-crop
target, BYOL) and ``WORK/run-sS-cohort`` (``grid-residual-cohort``: the same with the cohort-scaled
target; its none and BYOL cells are the first run's, copied). This script writes into ``--out``:

- ``summary.md`` / ``summary.json``: per label fraction and seed, the fold-ensemble AUROC of each
  method with its patient-bootstrap interval, and the paired differences residual - none and
  residual - BYOL for both targets (the runs' own ``comparisons.csv``) and cohort - per-crop (the
  same paired patient bootstrap, computed here); per fraction one sentence: does residual
  pretraining (either target) lead by more than the paired interval in every seed?
- ``excess_loss.csv`` / ``excess_loss.png``: residual pretraining's loss minus the targets' entropy
  floor per epoch (train on the unlabelled set, validation on the fold's validation sinuses), beside
  a yardstick: the excess of the best prediction that ignores the image (each voxel position's mean
  target over the unlabelled set), so "how much of the excess is learned" has a scale.
- ``residual_targets.csv``: what the targets hold on the unlabelled set (never seen by the CAE),
  with the truth ``synth`` kept for it: mean target in normal and anomalous sinuses and how well
  the crop's mean target alone ranks anomalous above normal (AUROC), overall and per lesion type.
- ``s<S>-per_crop/``, ``s<S>-cohort/``: each run's evaluation report, tables and figures.

    python benchmarks/residual_grid.py --work WORK --seeds 0,1 --out docs/grid-residual
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from SinusAnomalyLib.fileio import write_csv_atomic, write_json_atomic
from sklearn.metrics import roc_auc_score

from SinusAnomalyTraining import bootstrap, runtime, stages
from SinusAnomalyTraining.config import load_config, percent_key
from SinusAnomalyTraining.defaultmodel import read_table
from SinusAnomalyTraining.engine import load_checkpoint
from SinusAnomalyTraining.evaluation import ensemble_by_sinus
from SinusAnomalyTraining.pretext.losses import target_entropy
from SinusAnomalyTraining.stagerunner import network_spec

TARGETS = {"per_crop": "residual", "cohort": "cohort"}  # target -> run folder suffix
COPIED = ("report.md", "results.csv", "comparisons.csv", "pretraining_loss.csv", "pretraining_loss.png",
          "residual_examples.png", "metrics_vs_fraction.png")


def run_dir(work: Path, seed: int, target: str) -> Path:
    return work / f"run-s{seed}-{TARGETS[target]}"


def run_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text(encoding="utf-8"))


def run_folds(run: Path) -> list[int]:
    """The run's folds (its config may say "all"): its fold folders."""
    return sorted(int(p.name[4:]) for p in run.glob("fold*") if p.name[4:].isdigit())


def fold_ensemble(run: Path, method: str, fraction) -> dict:
    """The folds' test predictions of one cell, one row per test sinus (:func:`ensemble_by_sinus`)."""
    ids, patients, y, p = [], [], [], []
    for fold in run_folds(run):
        rows = stages.read_predictions(run / f"fold{fold}" / "finetune" / method / f"frac{percent_key(fraction)}" / "predictions.csv")
        test = [r for r in rows if r["split"] == "test"]
        ids += [r["sample_id"] for r in test]
        patients += [r["patient"] for r in test]
        y += [r["label"] for r in test]
        p += [r["p_anomalous"] for r in test]
    return ensemble_by_sinus(ids, patients, np.array(y), np.array(p))


def pooled_auroc(run: Path, method: str, fraction) -> dict:
    row = next(r for r in read_table(run / "evaluation" / "results.csv")
               if r["method"] == method and float(r["fraction"]) == float(fraction))
    return {k: float(row[f"pooled_auroc{s}"]) for k, s in (("auroc", ""), ("low", "_low"), ("high", "_high"))}


def run_comparison(run: Path, other: str, fraction) -> dict:
    row = next(r for r in read_table(run / "evaluation" / "comparisons.csv")
               if r["other_method"] == other and r["metric"] == "auroc" and float(r["fraction"]) == float(fraction))
    return {k: float(row[k]) for k in ("difference", "low", "high", "share_positive")}


def cohort_vs_per_crop(work: Path, seed: int, fraction, n_boot: int) -> dict:
    """Paired patient bootstrap of AUROC(cohort-scaled residual) - AUROC(per-crop residual), as the runs compare methods."""
    a = fold_ensemble(run_dir(work, seed, "cohort"), "residual", fraction)
    b = fold_ensemble(run_dir(work, seed, "per_crop"), "residual", fraction)
    if not np.array_equal(a["sample_ids"], b["sample_ids"]) or not np.array_equal(a["y"], b["y"]):
        raise SystemExit(f"seed {seed}: the two runs tested different sinuses at {fraction} % labels")
    diff = bootstrap.paired_bootstrap_difference(a["y"], a["p"], b["p"], groups=a["patients"], metric="auroc",
                                                 n_boot=n_boot, seed=run_config(run_dir(work, seed, "per_crop"))["seed"])
    return {"difference": diff["estimate"], "low": diff["low"], "high": diff["high"], "share_positive": diff["share_positive"]}


def check_shared_cells(work: Path, seed: int, fraction) -> None:
    """none and BYOL are the same classifiers in both runs (copied folds): their test predictions must agree."""
    for method in ("none", "byol"):
        a = fold_ensemble(run_dir(work, seed, "per_crop"), method, fraction)
        b = fold_ensemble(run_dir(work, seed, "cohort"), method, fraction)
        if not (np.array_equal(a["sample_ids"], b["sample_ids"]) and np.allclose(a["p"], b["p"])):
            raise SystemExit(f"seed {seed}: {method} at {fraction} % differs between the two runs; were the folds copied?")


def grid_table(work: Path, seeds: list[int], n_boot: int) -> list[dict]:
    rows = []
    for seed in seeds:
        fractions = run_config(run_dir(work, seed, "per_crop"))["fractions"]
        for fraction in fractions:
            check_shared_cells(work, seed, fraction)
            row = {"seed": seed, "fraction": fraction}
            for name, (target, method) in {"none": ("per_crop", "none"), "byol": ("per_crop", "byol"),
                                           "residual_per_crop": ("per_crop", "residual"),
                                           "residual_cohort": ("cohort", "residual")}.items():
                row[name] = pooled_auroc(run_dir(work, seed, target), method, fraction)
            for target in TARGETS:
                for other in ("none", "byol"):
                    row[f"{target}_minus_{other}"] = run_comparison(run_dir(work, seed, target), other, fraction)
            row["cohort_minus_per_crop"] = cohort_vs_per_crop(work, seed, fraction, n_boot)
            rows.append(row)
    return rows


def excess_curves(work: Path, seeds: list[int]) -> list[dict]:
    rows = []
    for seed in seeds:
        for target in TARGETS:
            for r in read_table(run_dir(work, seed, target) / "evaluation" / "pretraining_loss.csv"):
                if r["method"] == "residual":
                    rows.append({"seed": seed, "target": target, "fold": int(r["fold"]), "epoch": int(r["epoch"]),
                                 **{k: float(r[k]) for k in ("train_loss", "train_floor", "train_excess",
                                                             "val_loss", "val_floor", "val_excess")}})
    return rows


def weight_movement(run: Path, fold: int) -> float:
    """How far residual pretraining moved the U-Net: ||w_best - w_init|| / ||w_init|| over every conv and
    linear weight, the initialisation rebuilt as the stage builds it (seeded, then the network)."""
    config = load_config(run / "config.json")
    runtime.seed_everything(config.seed, config.deterministic)
    initial = network_spec(config).unet().state_dict()
    trained = load_checkpoint(run / f"fold{fold}" / "pretrain" / "best.pt")["model"]
    moved = norm = 0.0
    for name, w0 in initial.items():
        if w0.is_floating_point() and w0.dim() >= 2:
            moved += float((trained[name].float() - w0.float()).norm()) ** 2
            norm += float(w0.float().norm()) ** 2
    return (moved / norm) ** 0.5


def unlabelled_truth(work: Path, seed: int) -> dict[str, str]:
    """Sample id -> anomaly type ("normal" for none) of every unlabelled sinus, from synth's truth."""
    truth = json.loads((work / f"cohort-s{seed}" / "unlabelled_truth.json").read_text(encoding="utf-8"))
    return {f"{patient}_{side}": (entry[side]["anomaly"] or "normal") for patient, entry in truth.items()
            for side in ("left", "right")}


def target_content(work: Path, seeds: list[int]) -> tuple[list[dict], list[dict]]:
    """Per seed, target and fold: what the residual targets of the unlabelled set hold, and the yardstick."""
    content, yardsticks = [], []
    for seed in seeds:
        kinds = unlabelled_truth(work, seed)
        for target in TARGETS:
            run = run_dir(work, seed, target)
            for fold in run_folds(run):
                folder = run / f"fold{fold}" / "residuals"
                ids = json.loads((folder / "residuals.json").read_text(encoding="utf-8"))["sample_ids"]
                maps = np.load(folder / "residuals.npy", mmap_mode="r")
                rows = [i for i, sid in enumerate(ids) if sid in kinds]
                t = np.asarray(maps[rows], dtype=np.float32)
                kind = np.array([kinds[ids[i]] for i in rows])
                anomalous = kind != "normal"
                floor = float(target_entropy(torch.from_numpy(t)))
                yardsticks.append({"seed": seed, "target": target, "fold": fold, "floor": floor,
                                   "weights_moved": weight_movement(run, fold),
                                   # the best predictions that ignore the image: each voxel's mean target, one constant
                                   "mean_map_excess": float(target_entropy(torch.from_numpy(t.mean(axis=0)))) - floor,
                                   "constant_excess": float(target_entropy(torch.tensor(float(t.mean())))) - floor})
                score = t.reshape(len(t), -1).mean(axis=1)
                for group in ["all"] + sorted(set(kind[anomalous])):
                    chosen = ~anomalous | (anomalous if group == "all" else kind == group)
                    content.append({"seed": seed, "target": target, "fold": fold, "anomaly_type": str(group),
                                    "n_normal": int((~anomalous).sum()), "n_anomalous": int((chosen & anomalous).sum()),
                                    "mean_target_normal": float(score[~anomalous].mean()),
                                    "mean_target_anomalous": float(score[chosen & anomalous].mean()),
                                    "auroc_of_mean_target": float(roc_auc_score(anomalous[chosen], score[chosen]))})
    return content, yardsticks


def mean_over(rows: list[dict], keys: tuple, value: str) -> dict:
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r[value])
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0) for k, v in groups.items()}


def plot_excess(curves: list[dict], yardsticks: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(10, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:red"]
    seeds = sorted({r["seed"] for r in curves})
    for ax, target in zip(axes, TARGETS):
        for k, seed in enumerate(seeds):
            for fold in sorted({r["fold"] for r in curves if r["seed"] == seed}):
                rows = sorted((r for r in curves if (r["seed"], r["target"], r["fold"]) == (seed, target, fold)),
                              key=lambda r: r["epoch"])
                epochs = [r["epoch"] for r in rows]
                first = fold == 0
                ax.plot(epochs, [r["train_excess"] for r in rows], color=colours[k], lw=1,
                        label=f"seed {seed} train (unlabelled)" if first else None)
                ax.plot(epochs, [r["val_excess"] for r in rows], color=colours[k], lw=1, ls="--",
                        label=f"seed {seed} validation" if first else None)
            mean_map = np.mean([y["mean_map_excess"] for y in yardsticks if (y["seed"], y["target"]) == (seed, target)])
            ax.axhline(mean_map, color=colours[k], lw=1, ls=":",
                       label=f"seed {seed}: mean map, no image" if target == "per_crop" else None)
        ax.set_title(f"residual target scaled {'per crop (paper)' if target == 'per_crop' else 'by the cohort'}")
        ax.set_xlabel("pretraining epoch")
        ax.set_yscale("log")  # one fold's validation spike would flatten the rest on a linear axis
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("BCE - targets' entropy floor")
    axes[0].legend(fontsize=7)
    fig.suptitle("Residual pretraining: loss above the floor, one line per fold", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def interval(d: dict) -> str:
    return f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]"


def auroc_cell(d: dict) -> str:
    return f"{d['auroc']:.2f} ({d['low']:.2f}-{d['high']:.2f})"


def answer(fraction, rows: list[dict]) -> str:
    """One sentence: does residual pretraining (either target) lead none and BYOL by more than the paired interval in every seed?"""
    seeds = [r["seed"] for r in rows]
    leads = {t: all(r[f"{t}_minus_{o}"]["low"] > 0 for r in rows for o in ("none", "byol")) for t in TARGETS}
    behind = {t: [f"{o} (seed {r['seed']})" for r in rows for o in ("none", "byol") if r[f"{t}_minus_{o}"]["high"] < 0]
              for t in TARGETS}
    said = "yes" if any(leads.values()) else "no"
    parts = []
    for t, name in (("per_crop", "the paper's per-crop target"), ("cohort", "the cohort-scaled target")):
        if leads[t]:
            parts.append(f"with {name} it leads both in every seed")
        elif behind[t]:
            parts.append(f"with {name} it trails {', '.join(behind[t])} by more than the interval")
        else:
            parts.append(f"with {name} every paired interval includes 0 or it leads in only some")
    return f"At {fraction:g} % labels ({len(seeds)} cohort seeds): {said}; " + "; ".join(parts) + "."


def write_summary(out: Path, table: list[dict], curves: list[dict], content: list[dict], yardsticks: list[dict]) -> None:
    lines = ["| labels | seed | none | BYOL | residual, per crop | residual, cohort | per crop - none | per crop - BYOL "
             "| cohort - none | cohort - BYOL | cohort - per crop |", "|" + "---|" * 11]
    for r in table:
        lines.append(f"| {r['fraction']:g} % | {r['seed']} | {auroc_cell(r['none'])} | {auroc_cell(r['byol'])} "
                     f"| {auroc_cell(r['residual_per_crop'])} | {auroc_cell(r['residual_cohort'])} "
                     f"| {interval(r['per_crop_minus_none'])} | {interval(r['per_crop_minus_byol'])} "
                     f"| {interval(r['cohort_minus_none'])} | {interval(r['cohort_minus_byol'])} "
                     f"| {interval(r['cohort_minus_per_crop'])} |")
    lines += ["", *(answer(f, [r for r in table if r["fraction"] == f]) for f in dict.fromkeys(r["fraction"] for r in table)), ""]
    last = {}
    for r in curves:
        key = (r["seed"], r["target"], r["fold"])
        if r["epoch"] >= last.get(key, {"epoch": 0})["epoch"]:
            last[key] = r
    first = {(r["seed"], r["target"], r["fold"]): r for r in curves if r["epoch"] == 1}
    lines += ["| seed | target | floor (train) | excess, epoch 1 (train / val) | excess, last epoch (train / val) "
              "| image-blind excess (each voxel's mean target) | 1 - last train excess / image-blind | U-Net weights moved (relative) |", "|" + "---|" * 8]
    for seed in sorted({r["seed"] for r in curves}):
        for target in TARGETS:
            keys = [k for k in last if k[:2] == (seed, target)]
            y = [v for v in yardsticks if (v["seed"], v["target"]) == (seed, target)]
            mm = float(np.mean([v["mean_map_excess"] for v in y]))
            tr_last = float(np.mean([last[k]["train_excess"] for k in keys]))
            lines.append(f"| {seed} | {target} | {np.mean([v['floor'] for v in y]):.3f} "
                         f"| {np.mean([first[k]['train_excess'] for k in keys]):.3f} / {np.mean([first[k]['val_excess'] for k in keys]):.3f} "
                         f"| {tr_last:.3f} / {np.mean([last[k]['val_excess'] for k in keys]):.3f} | {mm:.3f} | {1 - tr_last / mm:.2f} "
                         f"| {100 * np.mean([v['weights_moved'] for v in y]):.1f} % |")
    lines += ["", "| seed | target | lesion type | sinuses (normal / anomalous) | mean target, normal | mean target, anomalous "
              "| AUROC of the mean target |", "|" + "---|" * 7]
    means = {v: mean_over(content, ("seed", "target", "anomaly_type"), v)
             for v in ("mean_target_normal", "mean_target_anomalous", "auroc_of_mean_target")}
    counts = {(r["seed"], r["target"], r["anomaly_type"]): (r["n_normal"], r["n_anomalous"]) for r in content}
    for key, (auc, spread) in means["auroc_of_mean_target"].items():
        n = counts[key]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {n[0]} / {n[1]} | {means['mean_target_normal'][key][0]:.3f} "
                     f"| {means['mean_target_anomalous'][key][0]:.3f} | {auc:.2f} ± {spread:.2f} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def paper_rate_lines(run: Path, dest: Path) -> str:
    """The side run at the paper's rate: its last epoch's excess and how far its weights moved; its history kept in ``dest``."""
    dest.mkdir(exist_ok=True)
    for name in ("history.csv", "train.log"):
        shutil.copy2(run / "fold0" / "pretrain" / name, dest / name)
    shutil.copy2(run / "config.json", dest / "config.json")
    rows = read_table(run / "fold0" / "pretrain" / "history.csv")
    first, last = rows[0], rows[-1]
    return (f"\nPaper's rate (0.0125), fold 0 of the first seed, same CAE and targets: train / val excess "
            f"{float(first['train_excess']):.3f} / {float(first['val_excess']):.3f} at epoch 1, "
            f"{float(last['train_excess']):.3f} / {float(last['val_excess']):.3f} at epoch {last['epoch']}; "
            f"U-Net weights moved {100 * weight_movement(run, 0):.1f} %.\n")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--bootstrap", type=int, default=1000, help="replicates of the cohort - per-crop comparison")
    parser.add_argument("--paper-rate", type=Path, help="a run folder whose fold 0 pretrained at the paper's rate "
                        "(docs/grid-residual/paper-rate.json) on the first seed's fold-0 CAE and residuals")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    table = grid_table(args.work, seeds, args.bootstrap)
    curves = excess_curves(args.work, seeds)
    content, yardsticks = target_content(args.work, seeds)
    for seed in seeds:
        for target in TARGETS:
            dest = args.out / f"s{seed}-{target}"
            dest.mkdir(exist_ok=True)
            for name in COPIED:
                src = run_dir(args.work, seed, target) / "evaluation" / name
                if src.is_file():
                    shutil.copy2(src, dest / name)
    for name, rows in (("excess_loss", curves), ("residual_targets", content), ("yardsticks", yardsticks)):
        write_csv_atomic(args.out / f"{name}.csv", list(rows[0]), [list(r.values()) for r in rows])
    write_json_atomic(args.out / "summary.json", {"grid": table})
    plot_excess(curves, yardsticks, args.out / "excess_loss.png")
    write_summary(args.out, table, curves, content, yardsticks)
    if args.paper_rate:
        with open(args.out / "summary.md", "a", encoding="utf-8") as fh:
            fh.write(paper_rate_lines(args.paper_rate, args.out / f"paper-rate-s{seeds[0]}"))
    print((args.out / "summary.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()

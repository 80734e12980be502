"""The whole method over folds, pretraining methods and label fractions, then its evaluation.

``run_pipeline`` runs, for every chosen fold: CAE -> residuals -> residual pretraining (when the
"residual" method is asked for) -> fine-tuning per method and label fraction; finished stages are
skipped, so re-running resumes. ``evaluate_run`` turns the fine-tuned classifiers' predictions into
metrics per fold with 95 % intervals over folds and a patient-level bootstrap on the pooled test
predictions, ROC/PR plots, and ``RUN/evaluation/report.md``.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from SinusAnomalyLib.dataset import PreparedDataset, load_dataset
from SinusAnomalyLib.fileio import write_json_atomic, write_text_atomic
from SinusAnomalyLib.splits import fraction_key

from . import evaluation, runtime, stages
from .config import load_config


def chosen_folds(config: dict, dataset: PreparedDataset) -> list[int]:
    n = len(dataset.splits.folds)
    folds = list(range(n)) if config["folds"] == "all" else [int(f) for f in config["folds"]]
    missing = [f for f in folds if f >= n]
    if missing:
        raise stages.DatasetError(f"folds {missing} do not exist: the dataset has {n} folds (0..{n - 1})")
    return folds


def fold_context(config: dict, dataset: PreparedDataset, run_dir: Path, fold: int, device: torch.device,
                 resume: bool = True, progress: bool = True) -> stages.FoldContext:
    return stages.FoldContext(dataset, config, Path(run_dir), fold, device, resume=resume, progress=progress)


def save_run_config(config: dict, run_dir: Path, dataset: PreparedDataset) -> None:
    """``RUN/config.json`` and ``RUN/dataset.json`` (where the data came from, its summary)."""
    if runtime.is_main_process():
        write_json_atomic(Path(run_dir) / "config.json", config)
        write_json_atomic(Path(run_dir) / "dataset.json", {"path": str(Path(dataset.root).resolve()), "summary": dataset.info})


def run_pipeline(config: dict, dataset_dir: str | Path, run_dir: str | Path, device: torch.device, progress: bool = True) -> dict:
    """Run every stage for the configured folds, methods and fractions, then evaluate."""
    dataset = load_dataset(dataset_dir)
    run_dir = Path(run_dir)
    save_run_config(config, run_dir, dataset)
    for fold in chosen_folds(config, dataset):
        ctx = fold_context(config, dataset, run_dir, fold, device, progress=progress)
        stages.train_cae(ctx)
        if "residual" in config["methods"]:
            stages.compute_residuals(ctx)
            stages.pretrain(ctx)
        for method in config["methods"]:
            for fraction in config["fractions"]:
                stages.finetune(ctx, method, fraction)
    runtime.barrier()
    return evaluate_run(config, dataset, run_dir) if runtime.is_main_process() else {}


def _arrays(rows: list[dict], split: str):
    chosen = [r for r in rows if r["split"] == split]
    return (np.array([r["label"] for r in chosen], dtype=np.int64), np.array([r["p_anomalous"] for r in chosen]),
            [r["patient"] for r in chosen])


def _fmt(entry: dict) -> str:
    if entry is None or entry.get("mean") is None or not np.isfinite(entry["mean"]):
        return "n/a"
    low, high = entry.get("low"), entry.get("high")
    if low is None or not np.isfinite(low) or low == high:
        return f"{entry['mean']:.2f}"
    # these metrics live in [0, 1]; a t interval over few folds can reach past either end
    return f"{entry['mean']:.2f} ({max(low, 0.0):.2f}-{min(high, 1.0):.2f})"


def evaluate_run(config: dict, dataset: PreparedDataset, run_dir: str | Path) -> dict:
    """Metrics of every (method, fraction) over the configured folds; writes ``RUN/evaluation``."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "evaluation"
    folds = chosen_folds(config, dataset)
    table = []
    plots = []
    for fraction in config["fractions"]:
        curves = {}
        for method in config["methods"]:
            per_fold, pooled_y, pooled_p, pooled_groups = [], [], [], []
            for fold in folds:
                path = run_dir / f"fold{fold}" / "finetune" / method / f"frac{fraction_key(float(fraction) / 100.0)}" / "predictions.csv"
                if not path.is_file():
                    raise stages.StageInputError(f"{path} is missing: run 'finetune' (or 'run') for fold {fold} first")
                rows = stages.read_predictions(path)
                y_val, p_val, _ = _arrays(rows, "val")
                y_test, p_test, patients = _arrays(rows, "test")
                result = evaluation.evaluate_fold(y_val, p_val, y_test, p_test)
                result["fold"] = fold
                per_fold.append(result)
                pooled_y.append(y_test)
                pooled_p.append(p_test)
                pooled_groups += [f"{fold}:{p}" for p in patients]
            summary = evaluation.summarize_folds(per_fold)
            y, p = np.concatenate(pooled_y), np.concatenate(pooled_p)
            pooled = evaluation.pooled_bootstrap(y, p, groups=np.array(pooled_groups), n_boot=int(config["evaluate"]["bootstrap"]),
                                                 seed=int(config["seed"]))
            cell_dir = out_dir / f"{method}_frac{fraction_key(float(fraction) / 100.0)}"
            evaluation.write_metrics(cell_dir, per_fold, summary, pooled)
            curves[f"{method} pretraining"] = (y, p)
            table.append({
                "method": method, "fraction": fraction, "folds": len(folds),
                "auroc": summary.get("auroc"), "auprc": summary.get("auprc"), "f1": summary.get("f1_at_val_threshold"),
                "f1_at_0.5": summary.get("f1_at_0.5"), "pooled": pooled,
            })
        plot = out_dir / f"roc_pr_frac{fraction_key(float(fraction) / 100.0)}.png"
        evaluation.plot_roc_pr(curves, plot, title=f"{fraction} % labels, pooled test predictions of {len(folds)} fold(s)")
        plots.append(plot)
    _write_table(out_dir, table)
    _write_report(out_dir, table, plots, config)
    return {"table": table, "plots": [str(p) for p in plots]}


def _write_table(out_dir: Path, table: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = ("auroc", "auprc", "f1", "f1_at_0.5")
    writer.writerow(["method", "fraction", "folds"] + [f"{c}_{s}" for c in columns for s in ("mean", "low", "high")]
                    + ["pooled_auroc", "pooled_auroc_low", "pooled_auroc_high"])
    for row in table:
        cells = [row["method"], row["fraction"], row["folds"]]
        for c in columns:
            entry = row[c] or {}
            cells += [entry.get("mean"), entry.get("low"), entry.get("high")]
        pa = row["pooled"].get("auroc", {})
        cells += [pa.get("estimate"), pa.get("low"), pa.get("high")]
        writer.writerow(["" if v is None else v for v in cells])
    write_text_atomic(out_dir / "results.csv", buf.getvalue())


def _write_report(out_dir: Path, table: list[dict], plots: list[Path], config: dict) -> None:
    lines = [
        "# SinusAnomaly evaluation",
        "",
        f"Configuration: `{config.get('source', '?')}` (crop {config['crop_size']}^3, encoder widths "
        f"{config['encoder_widths']}). Test set: the dataset's held-out patients; metrics per fold on it, "
        "mean with a 95 % Student-t interval over folds (shown clipped to [0, 1]; unclipped in results.csv); "
        "F1 at the threshold maximising F1 on the fold's "
        "validation set. Pooled: all folds' test predictions, 95 % bootstrap interval resampling patients.",
        "",
        "| pretraining | labels | AUROC | AUPRC | F1 | F1 at 0.5 | pooled AUROC (bootstrap) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        pa = row["pooled"].get("auroc", {})
        pooled = "n/a" if pa.get("estimate") is None or not np.isfinite(pa["estimate"]) else \
            f"{pa['estimate']:.2f} ({pa['low']:.2f}-{pa['high']:.2f})"
        lines.append(f"| {row['method']} | {row['fraction']} % | {_fmt(row['auroc'])} | {_fmt(row['auprc'])} | "
                     f"{_fmt(row['f1'])} | {_fmt(row['f1_at_0.5'])} | {pooled} |")
    lines += ["", "Per-fold numbers: `<method>_frac<p>/metrics.csv`; all rows: `results.csv`.", ""]
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.name})", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))


def load_run_config(run_dir: Path, config_arg: str | None) -> dict:
    """The configuration of a run: ``--config`` if given, else the run's saved ``config.json``."""
    if config_arg:
        return load_config(config_arg)
    saved = Path(run_dir) / "config.json"
    if saved.is_file():
        return load_config(saved)
    return load_config("paper")

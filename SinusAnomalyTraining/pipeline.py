"""The whole method over folds, pretraining methods and label fractions, then its evaluation.

``run_pipeline`` runs, for every chosen fold: CAE -> residuals -> residual pretraining (when the
"residual" method is asked for) -> fine-tuning per method and label fraction; finished stages are
skipped, so re-running resumes. ``evaluate_run`` turns the fine-tuned classifiers' predictions into
metrics per fold with 95 % intervals over folds and a patient-level bootstrap on the pooled test
predictions, ROC/PR plots, and ``RUN/evaluation/report.md``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from SinusAnomalyLib.dataset import PreparedDataset, load_dataset
from SinusAnomalyLib.fileio import write_csv_atomic, write_json_atomic, write_text_atomic
from SinusAnomalyLib.splits import fraction_key

from . import evaluation, runtime, stages
from .config import PRETEXT, load_config


def chosen_folds(config: dict, dataset: PreparedDataset) -> list[int]:
    n = len(dataset.splits.folds)
    folds = list(range(n)) if config["folds"] == "all" else [int(f) for f in config["folds"]]
    missing = [f for f in folds if f >= n]
    if missing:
        raise stages.DatasetError(f"folds {missing} do not exist: the dataset has {n} folds (0..{n - 1})")
    return folds


def fold_context(config: dict, dataset: PreparedDataset, run_dir: Path, fold: int, device: torch.device,
                 resume: bool = True, progress: bool = True, cae_fraction: float = 100) -> stages.FoldContext:
    return stages.FoldContext(dataset, config, Path(run_dir), fold, device, resume=resume, progress=progress,
                              cae_fraction=cae_fraction)


def ablation_fractions(config: dict) -> list[float]:
    """CAE training fractions of the ablation other than 100 % (which is the main run's CAE)."""
    return [f for f in config["cae_fractions"] if float(f) != 100]


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
        for method in config["methods"]:
            if method == "residual":
                stages.compute_residuals(ctx)
                stages.pretrain(ctx)
            elif method in PRETEXT:
                stages.pretrain_pretext(ctx, method)  # once per fold, shared by every label fraction
            for fraction in config["fractions"]:
                stages.finetune(ctx, method, fraction)
        for cae_fraction in ablation_fractions(config):  # the paper's Table 3
            actx = fold_context(config, dataset, run_dir, fold, device, progress=progress, cae_fraction=cae_fraction)
            stages.train_cae(actx)
            stages.compute_residuals(actx)
            stages.pretrain(actx)
            stages.finetune(actx, "residual", config["cae_ablation_label_fraction"])
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


METHOD_TITLES = {"none": "No pretraining", "medicalnet": "Transfer learning (MedicalNet)", "ae": "AE", "dae": "DAE",
                 "byol": "BYOL", "simsiam": "SimSiam", "simclr": "SimCLR", "spark": "SparK-style MAE",
                 "residual": "Residual reconstruction (ours)"}
PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.json"


def _evaluate_cell(run_dir: Path, folds: list[int], method_dir: str, fraction: float, config: dict, out_dir: Path) -> dict:
    """Per-fold test metrics of one (method, label fraction) cell, their summary and pooled bootstrap."""
    key = fraction_key(float(fraction) / 100.0)
    per_fold, pooled_y, pooled_p, pooled_groups = [], [], [], []
    for fold in folds:
        path = run_dir / f"fold{fold}" / "finetune" / method_dir / f"frac{key}" / "predictions.csv"
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
    evaluation.write_metrics(out_dir / f"{method_dir}_frac{key}", per_fold, summary, pooled)
    return {"method": method_dir, "fraction": fraction, "folds": len(folds), "y": y, "p": p,
            "auroc": summary.get("auroc"), "auprc": summary.get("auprc"), "f1": summary.get("f1_at_val_threshold"),
            "f1_at_0.5": summary.get("f1_at_0.5"), "pooled": pooled}


def evaluate_run(config: dict, dataset: PreparedDataset, run_dir: str | Path) -> dict:
    """Metrics of every (method, fraction) cell, and of the CAE ablation; writes ``RUN/evaluation``."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "evaluation"
    folds = chosen_folds(config, dataset)
    table = [_evaluate_cell(run_dir, folds, m, f, config, out_dir) for f in config["fractions"] for m in config["methods"]]
    plots = []
    for fraction in config["fractions"]:
        plot = out_dir / f"roc_pr_frac{fraction_key(float(fraction) / 100.0)}.png"
        curves = {f"{r['method']} pretraining": (r["y"], r["p"]) for r in table if r["fraction"] == fraction}
        evaluation.plot_roc_pr(curves, plot, title=f"{fraction} % labels, pooled test predictions of {len(folds)} fold(s)")
        plots.append(plot)
    if len(config["fractions"]) > 1:
        plots.append(_plot_vs_fraction(table, out_dir / "metrics_vs_fraction.png"))
    ablation = []
    if ablation_fractions(config):
        label_fraction = config["cae_ablation_label_fraction"]
        for cae_fraction in sorted({*map(float, config["cae_fractions"]), 100.0}):
            name = "residual" if cae_fraction == 100 else f"residual_cae{fraction_key(cae_fraction / 100.0)}"
            if cae_fraction == 100 and not ("residual" in config["methods"] and label_fraction in config["fractions"]):
                continue  # the 100 % CAE row exists only when the main grid ran that cell
            row = _evaluate_cell(run_dir, folds, name, label_fraction, config, out_dir)
            row["cae_fraction"] = cae_fraction
            ablation.append(row)
    _write_table(out_dir, table + [r for r in ablation if r["method"] != "residual"])  # no duplicate row
    _write_report(out_dir, table, ablation, plots, config)
    return {"table": table, "ablation": ablation, "plots": [str(p) for p in plots]}


def _plot_vs_fraction(table: list[dict], path: Path) -> Path:
    """AUPRC (left) and AUROC (right) against the label fraction, one line per method (Figure 3's form)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    from SinusAnomalyLib.fileio import atomic_path  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, title in ((axes[0], "auprc", "AUPRC"), (axes[1], "auroc", "AUROC")):
        for method in dict.fromkeys(r["method"] for r in table):
            rows = sorted((r for r in table if r["method"] == method), key=lambda r: float(r["fraction"]))
            x = [float(r["fraction"]) for r in rows]
            mean = np.array([(r[metric] or {}).get("mean", np.nan) for r in rows], dtype=float)
            low = np.array([max((r[metric] or {}).get("low", np.nan), 0.0) for r in rows], dtype=float)
            high = np.array([min((r[metric] or {}).get("high", np.nan), 1.0) for r in rows], dtype=float)
            line, = ax.plot(x, mean, marker="o", label=METHOD_TITLES.get(method, method))
            if np.isfinite(low).any():
                ax.fill_between(x, np.nan_to_num(low, nan=mean), np.nan_to_num(high, nan=mean), alpha=0.06, color=line.get_color())
        ax.set_xlabel("labelled training sinuses (%)")
        ax.set_ylabel(title)
        ax.set_title(f"{title} vs label fraction (mean over folds, 95 % interval)", fontsize=9)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def _write_table(out_dir: Path, table: list[dict]) -> None:
    columns = ("auroc", "auprc", "f1", "f1_at_0.5")
    header = (["method", "fraction", "folds"] + [f"{c}_{s}" for c in columns for s in ("mean", "low", "high")]
              + ["pooled_auroc", "pooled_auroc_low", "pooled_auroc_high"])
    rows = []
    for row in table:
        cells = [row["method"], row["fraction"], row["folds"]]
        for c in columns:
            entry = row[c] or {}
            cells += [entry.get("mean"), entry.get("low"), entry.get("high")]
        pa = row["pooled"].get("auroc", {})
        cells += [pa.get("estimate"), pa.get("low"), pa.get("high")]
        rows.append(cells)
    write_csv_atomic(out_dir / "results.csv", header, rows)


def _paper_cell(paper: dict, method: str, fraction, metric_index: int) -> str:
    entry = paper.get("table2", {}).get(method, {}).get(f"{float(fraction):g}")
    if not entry:
        return ""
    mean, low, high = entry[metric_index]
    return f"{mean:.2f} ({low:.2f}-{high:.2f})"


def _write_report(out_dir: Path, table: list[dict], ablation: list[dict], plots: list[Path], config: dict) -> None:
    paper = json.loads(PAPER_RESULTS.read_text())
    lines = [
        "# SinusAnomaly evaluation",
        "",
        f"Configuration: `{config.get('source', '?')}` (crop {config['crop_size']}^3, encoder widths "
        f"{config['encoder_widths']}). Test set: the dataset's held-out patients; metrics per fold on it, "
        "mean with a 95 % Student-t interval over folds (shown clipped to [0, 1]; unclipped in results.csv); "
        "F1 at the threshold maximising F1 on the fold's validation set. Pooled: all folds' test predictions, "
        "95 % bootstrap interval resampling patients.",
        "",
        "## Methods and label fractions (the form of the paper's Table 2)",
        "",
        "The paper's columns are the paper's own numbers (5 folds on HCHS FLAIR data, not ours), for reference only.",
        "",
        "| pretraining | labels | AUROC | AUPRC | F1 | F1 at 0.5 | pooled AUROC (bootstrap) | paper AUROC | paper AUPRC | paper F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        pa = row["pooled"].get("auroc", {})
        pooled = "n/a" if pa.get("estimate") is None or not np.isfinite(pa["estimate"]) else \
            f"{pa['estimate']:.2f} ({pa['low']:.2f}-{pa['high']:.2f})"
        lines.append(f"| {row['method']} | {row['fraction']} % | {_fmt(row['auroc'])} | {_fmt(row['auprc'])} | "
                     f"{_fmt(row['f1'])} | {_fmt(row['f1_at_0.5'])} | {pooled} | "
                     + " | ".join(_paper_cell(paper, row["method"], row["fraction"], i) for i in range(3)) + " |")
    if ablation:
        lines += ["", f"## CAE trained on part of the normal training sinuses (the form of the paper's Table 3), "
                      f"{config['cae_ablation_label_fraction']} % labels", "",
                  "| CAE normals | AUROC | AUPRC | F1 | paper AUROC | paper AUPRC | paper F1 |", "|---|---|---|---|---|---|---|"]
        for row in ablation:
            entry = paper.get("table3", {}).get(f"{row['cae_fraction']:g}")
            ref = [f"{m:.2f} ({lo:.2f}-{hi:.2f})" for m, lo, hi in entry] if entry else ["", "", ""]
            lines.append(f"| {row['cae_fraction']:g} % | {_fmt(row['auroc'])} | {_fmt(row['auprc'])} | {_fmt(row['f1'])} | "
                         + " | ".join(ref) + " |")
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

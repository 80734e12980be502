"""The evaluation folder of a run: per-cell metrics files, ``results.csv`` and ``report.md``.

:func:`evaluate_run` reads every fine-tuned classifier's ``predictions.csv``, computes the metrics
(:mod:`.evaluation`), draws the figures (:mod:`.plots`) and writes ``RUN/evaluation``:
``<method>_frac<p>/metrics.{json,csv}``, ``results.csv`` (one row per method and label fraction,
unclipped intervals), ``pretraining_loss.csv`` and ``pretraining_loss.png`` (every pretraining's
loss per epoch; for residual pretraining's soft-target BCE also the targets' entropy floor and the
excess over it, :func:`pretraining_losses`), ``comparisons.csv`` (when the run has residual pretraining and another
method: per label fraction, the paired patient-bootstrap difference residual - other of the fold
ensembles' AUROC and AUPRC), ``report.md`` (the tables in the form of the paper's Tables 2 and 3
beside the paper's own numbers, and the paired comparisons) and the PNG figures.
"""
from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.fileio import write_csv_atomic, write_json_atomic, write_text_atomic
from SinusAnomalyLib.numberformat import format_number

from . import bootstrap, evaluation, heatmap_report, lesion_types, plots, stages
from .config import PRETRAINING, RunConfig, ablation_fractions, chosen_folds, percent_key

NA = "n/a"  # what the report shows for a number it does not have (None, NaN, an infinity)


def _jsonable(obj):
    """NaN / inf -> None (JSON has no NaN), numpy scalars and arrays -> Python, keys -> str."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _csv_cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (list, tuple)):
        return "; ".join(str(x) for x in v)
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return "" if math.isnan(f) else repr(f)
    return str(v)


def _pooled_triplet(v) -> tuple:
    if isinstance(v, Mapping):
        return v.get("estimate", v.get("mean")), v.get("low"), v.get("high")
    if isinstance(v, (list, tuple)) and len(v) == 3:
        return tuple(v)
    return v, None, None


def write_metrics(out_dir: str | Path, per_fold: list[dict], summary: dict, pooled: dict | None = None) -> tuple[Path, Path]:
    """Write ``metrics.json`` and ``metrics.csv`` into ``out_dir``, each atomically.

    Args:
        out_dir: folder (created if missing).
        per_fold: per-fold dicts (:func:`evaluate_fold`, optionally with a ``"fold"`` entry).
        summary: :func:`summarize_folds` output, ``{metric: {"mean", "low", "high", ...}}``.
        pooled: optional ``{metric: {"estimate", "low", "high"}}`` (:func:`pooled_bootstrap`);
            ``(estimate, low, high)`` tuples or bare numbers are accepted too.

    ``metrics.json``: ``{"per_fold": [...], "summary": {...}, "pooled": {...}}``, NaN written as
    ``null``. ``metrics.csv``: first column ``row``, then every key of the per-fold dicts (in order
    of first appearance) followed by any summary / pooled metric not among them; rows
    ``fold_<i>`` (``i`` from the dict's ``"fold"`` or its position), then ``mean``, ``ci_low``,
    ``ci_high``, then ``pooled``, ``pooled_ci_low``, ``pooled_ci_high`` when ``pooled`` is given.
    Empty cells mean NaN / not applicable; list cells (notes) are joined with ``"; "``.

    Returns:
        ``(json_path, csv_path)``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pooled = dict(pooled or {})
    json_path, csv_path = out_dir / "metrics.json", out_dir / "metrics.csv"
    write_json_atomic(json_path, _jsonable({"per_fold": list(per_fold), "summary": summary, "pooled": pooled}))

    columns: dict[str, None] = {}
    for res in per_fold:
        for k in res:
            columns.setdefault(str(k), None)
    for k in list(summary) + list(pooled):
        columns.setdefault(str(k), None)
    columns.pop("row", None)
    header = ["row", *columns]

    rows: list[dict] = []
    for i, res in enumerate(per_fold):
        label = f"fold_{res['fold']}" if "fold" in res else f"fold_{i}"
        rows.append({"row": label, **{str(k): v for k, v in res.items()}})
    for label, field in (("mean", "mean"), ("ci_low", "low"), ("ci_high", "high")):
        rows.append({"row": label, **{str(k): st.get(field) for k, st in summary.items()}})
    if pooled:
        trip = {str(k): _pooled_triplet(v) for k, v in pooled.items()}
        for j, label in enumerate(("pooled", "pooled_ci_low", "pooled_ci_high")):
            rows.append({"row": label, **{k: t[j] for k, t in trip.items()}})

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in header})
    write_text_atomic(csv_path, buf.getvalue())
    return json_path, csv_path


def _arrays(rows: list[dict], split: str):
    chosen = [r for r in rows if r["split"] == split]
    return (np.array([r["label"] for r in chosen], dtype=np.int64), np.array([r["p_anomalous"] for r in chosen]),
            [r["patient"] for r in chosen], [r["sample_id"] for r in chosen], [r["anomaly_type"] for r in chosen])


def _fmt(entry: dict) -> str:
    if entry is None or entry.get("mean") is None or not np.isfinite(entry["mean"]):
        return "n/a"
    low, high = entry.get("low"), entry.get("high")
    if low is None or not np.isfinite(low) or low == high:
        return f"{entry['mean']:.2f}"
    # these metrics live in [0, 1]; a t interval over few folds can reach past either end
    return f"{entry['mean']:.2f} ({max(low, 0.0):.2f}-{min(high, 1.0):.2f})"


METHOD_TITLES = {"none": "No pretraining", "medicalnet": "Transfer learning (MedicalNet)", "ae": "AE", "dae": "DAE",
                 "byol": "BYOL", "simsiam": "SimSiam", "simclr": "SimCLR", "spark": "SparK",
                 "residual": "Residual reconstruction (ours)"}
PAPER_RESULTS = Path(__file__).resolve().parent / "paper_results.json"


def _evaluate_cell(run_dir: Path, folds: list[int], method_dir: str, fraction: float, config: RunConfig, out_dir: Path) -> dict:
    """Per-fold test metrics of one (method, label fraction) cell, their summary, and the fold
    ensemble's metrics (per test sinus the mean over the folds that tested it) with a bootstrap
    interval over patients; per lesion type, the folds' test metrics (:mod:`.lesion_types`) and how
    many test sinuses of each type."""
    key = percent_key(fraction)
    per_fold, pooled_y, pooled_p, pooled_patients, pooled_ids = [], [], [], [], []
    test_types = {}  # sample id -> anomaly type of every anomalous test sinus
    for fold in folds:
        path = run_dir / f"fold{fold}" / "finetune" / method_dir / f"frac{key}" / "predictions.csv"
        if not path.is_file():
            raise stages.StageInputError(f"{path} is missing: run 'finetune' (or 'run') for fold {fold} first")
        rows = stages.read_predictions(path)
        y_val, p_val, _, _, _ = _arrays(rows, "val")
        y_test, p_test, patients, sample_ids, types = _arrays(rows, "test")
        result = evaluation.evaluate_fold(y_val, p_val, y_test, p_test)
        result.update(lesion_types.fold_entries(types, y_test, p_test, result["youden_threshold"]), fold=fold)
        test_types.update((i, kind) for i, kind, label in zip(sample_ids, types, y_test) if label == 1)
        per_fold.append(result)
        pooled_y.append(y_test)
        pooled_p.append(p_test)
        pooled_patients += patients
        pooled_ids += sample_ids
    summary = evaluation.summarize_folds(per_fold)
    ensemble = evaluation.ensemble_by_sinus(pooled_ids, pooled_patients, np.concatenate(pooled_y), np.concatenate(pooled_p))
    y, p = ensemble["y"], ensemble["p"]  # each test sinus once, each test patient once in the bootstrap
    pooled = bootstrap.pooled_bootstrap(y, p, groups=ensemble["patients"], n_boot=config.bootstrap, seed=config.seed)
    write_metrics(out_dir / f"{method_dir}_frac{key}", per_fold, summary, pooled)
    return {"method": method_dir, "fraction": fraction, "folds": len(folds), "y": y, "p": p,
            "sample_ids": ensemble["sample_ids"], "patients": ensemble["patients"],
            "auroc": summary.get("auroc"), "auprc": summary.get("auprc"),
            "f1_at_val_threshold": summary.get("f1_at_val_threshold"), "f1_at_0.5": summary.get("f1_at_0.5"), "pooled": pooled,
            "recall_at_youden_threshold": summary.get("recall_at_youden_threshold"),
            "specificity_at_youden_threshold": summary.get("specificity_at_youden_threshold"),
            "by_type": lesion_types.summary_by_type(summary),
            "test_sinuses_by_type": dict(sorted(Counter(test_types.values()).items()))}


def pretraining_data_sentence(config: RunConfig, dataset: PreparedDataset) -> str:
    """What the run's pretraining learned from, in a sentence for reports ("" when nothing was pretrained)."""
    if not any(m in PRETRAINING for m in config.methods):
        return ""
    unlabelled = dataset.unlabelled
    if not len(unlabelled):
        return ("Pretraining data: the dataset has no unlabelled scans (`prepare --unlabelled`), so every pretraining "
                "learned from each fold's training sinuses (labels unused), not from a separate unlabelled set as in the paper.")
    also = ", plus each fold's training sinuses (labels unused)" if config.pretrain.data == "unlabelled+train" else ""
    return (f"Pretraining data: the unlabelled set (the paper's D_u) of {len(unlabelled.patients)} patients "
            f"({len(unlabelled)} sinuses){also}; the residual targets come from each fold's CAE, trained on that "
            "fold's normal training sinuses; only fine-tuning uses labels.")


def evaluate_run(config: RunConfig, dataset: PreparedDataset, run_dir: str | Path) -> dict:
    """Metrics of every (method, fraction) cell, and of the CAE ablation; writes ``RUN/evaluation``."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "evaluation"
    folds = chosen_folds(config, len(dataset.splits.folds))
    table = [_evaluate_cell(run_dir, folds, m, f, config, out_dir) for f in config.fractions for m in config.methods]
    figures = []
    for fraction in config.fractions:
        plot = out_dir / f"roc_pr_frac{percent_key(fraction)}.png"
        curves = {f"{r['method']} pretraining": (r["y"], r["p"]) for r in table if r["fraction"] == fraction}
        plots.plot_roc_pr(curves, plot, title=f"{fraction} % labels, test predictions of the {len(folds)}-fold ensemble")
        figures.append(plot)
    if len(config.fractions) > 1:
        figures.append(plots.plot_vs_fraction(table, METHOD_TITLES, out_dir / "metrics_vs_fraction.png"))
    ablation = []
    if ablation_fractions(config):
        label_fraction = config.cae_ablation_label_fraction
        for cae_fraction in sorted({*map(float, config.cae_fractions), 100.0}):
            name = "residual" if cae_fraction == 100 else f"residual_cae{percent_key(cae_fraction)}"
            if cae_fraction == 100 and not ("residual" in config.methods and label_fraction in config.fractions):
                continue  # the 100 % CAE row exists only when the main grid ran that cell
            row = _evaluate_cell(run_dir, folds, name, label_fraction, config, out_dir)
            row["cae_fraction"] = cae_fraction
            ablation.append(row)
    _write_table(out_dir, table + [r for r in ablation if r["method"] != "residual"])  # no duplicate row
    losses = pretraining_losses(config, dataset, run_dir, folds)
    if losses:
        _write_pretraining_losses(out_dir, losses)
        figures.append(plots.plot_pretraining_losses(losses, out_dir / "pretraining_loss.png"))
    comparisons = compare_to_residual(table, config)
    if comparisons:
        _write_comparisons(out_dir, comparisons)
    pretraining = pretraining_data_sentence(config, dataset)
    heat_lines = heatmap_report.evaluation_lines(config, dataset, run_dir, folds)
    _write_report(out_dir, table, ablation, figures, config, pretraining, comparisons, heat_lines, pretraining_loss_lines(losses))
    return {"table": table, "ablation": ablation, "plots": [str(p) for p in figures], "pretraining_data": pretraining,
            "comparisons": comparisons, "pretraining_losses": losses}


#: Columns of ``pretraining_loss.csv``: one row per epoch of every pretraining history of the run. Floor and
#: excess only where the loss has a floor (soft-target BCE: residual pretraining) and the history recorded it
#: (histories written before the floor was recorded have none; they load all the same, with empty cells).
PRETRAINING_LOSS_COLUMNS = ("method", "fold", "epoch", "train_loss", "train_floor", "train_excess", "val_loss", "val_floor",
                            "val_excess", "lr")


def _history_value(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pretraining_losses(config: RunConfig, dataset, run_dir: str | Path, folds: list[int]) -> list[dict]:
    """Every pretraining history of the run: one entry per (pretraining method, fold) whose ``history.json``
    exists (the CAE ablation's residual pretrainings too, as ``residual_cae<p>``), in the configuration's order.

    Each entry: ``method``, ``fold``, ``rows`` (per epoch, :data:`PRETRAINING_LOSS_COLUMNS`; ``None`` where a
    value is missing) and ``has_floor`` (the history records the loss's floor: residual pretraining's
    targets' mean binary entropy over the same voxels, and the excess loss - floor).
    """
    run_dir = Path(run_dir)
    wanted = [(m, 100.0) for m in config.methods if m in PRETRAINING] + [("residual", float(f)) for f in ablation_fractions(config)]
    entries = []
    for method, cae_fraction in wanted:
        for fold in folds:
            ctx = stages.FoldContext(dataset, config, run_dir, fold, torch.device("cpu"), progress=False, cae_fraction=cae_fraction)
            path = stages.pretraining_dir(ctx, method) / "history.json"
            if not path.is_file():
                continue
            history = json.loads(path.read_text(encoding="utf-8"))
            name = ctx.residual_method if method == "residual" else method
            rows = [{"method": name, "fold": fold, "epoch": int(row.get("epoch", i + 1)),
                     **{key: _history_value(row, key) for key in PRETRAINING_LOSS_COLUMNS[3:]}}
                    for i, row in enumerate(history)]
            has_floor = bool(rows) and all(r["train_floor"] is not None for r in rows)
            entries.append({"method": name, "fold": fold, "rows": rows, "has_floor": has_floor})
    return entries


def _write_pretraining_losses(out_dir: Path, entries: list[dict]) -> None:
    write_csv_atomic(out_dir / "pretraining_loss.csv", PRETRAINING_LOSS_COLUMNS,
                     [[_csv_cell(row[c]) for c in PRETRAINING_LOSS_COLUMNS] for entry in entries for row in entry["rows"]])


def pretraining_loss_lines(entries: list[dict]) -> list[str]:
    """The report's section on the pretraining losses: per method and fold, the last epoch's training and
    validation loss, and where the loss has a floor (soft-target BCE) the floor and the excess over it, at
    the first and the last epoch. ``[]`` without histories."""
    if not entries:
        return []
    lines = ["", "## Pretraining loss", "",
             "Last epoch of each pretraining. Binary cross-entropy against soft targets (residual pretraining: the "
             "CAE's residual maps scaled to [0, 1]) cannot go below the targets' own mean binary entropy (the floor, "
             "over the same voxels and with the same reduction as the loss; a prediction equal to the target reaches "
             "it), so what the network learnt is the excess = loss - floor: epoch 1's excess and the last epoch's. "
             "The other methods' losses (L1, MSE, contrastive, cosine) have no such floor. Every epoch: "
             "`pretraining_loss.csv`.", "",
             "| pretraining | fold | epochs | train loss | train floor | train excess (epoch 1 → last) | "
             "val loss | val floor | val excess (epoch 1 → last) |", "|---|---|---|---|---|---|---|---|---|"]

    def excess(first: dict, last: dict, split: str) -> str:
        return f"{format_number(first[f'{split}_excess'], 3, NA)} → {format_number(last[f'{split}_excess'], 3, NA)}"

    for entry in entries:
        rows = entry["rows"]
        if not rows:
            continue
        first, last = rows[0], rows[-1]
        if entry["has_floor"]:
            train = [format_number(last["train_floor"], 3, NA), excess(first, last, "train")]
            val = ([format_number(last["val_floor"], 3, NA), excess(first, last, "val")] if last["val_floor"] is not None
                   else ["n/a", "n/a"])
        elif entry["method"].startswith("residual"):
            train = val = ["not recorded", "not recorded"]  # a history written before the floor was recorded
        else:
            train = val = ["no floor", "—"]
        lines.append(f"| {entry['method']} | {entry['fold']} | {len(rows)} | {format_number(last['train_loss'], 3, NA)} | "
                     f"{' | '.join(train)} | {format_number(last['val_loss'], 3, NA)} | {' | '.join(val)} |")
    return lines


#: The method the paired comparisons put against every other one, and their metrics.
REFERENCE_METHOD = "residual"
COMPARISON_METRICS = ("auroc", "auprc")
COMPARISON_COLUMNS = ("fraction", "other_method", "metric", "difference", "low", "high", "share_positive",
                      "n_test_patients", "n_replicates")


def compare_to_residual(table: list[dict], config: RunConfig) -> list[dict]:
    """Paired patient-bootstrap differences residual - other of the fold ensembles, per label fraction.

    For every fraction and every other method of ``table`` (rows of :func:`_evaluate_cell`), the
    two fold ensembles are aligned by sinus id and :func:`bootstrap.paired_bootstrap_difference`
    gives, for each of :data:`COMPARISON_METRICS`, ``metric(residual) - metric(other)`` with its
    95 % percentile interval and the share of replicates > 0; ``config.bootstrap`` replicates,
    seed ``config.seed`` (the resamples of the methods' own pooled intervals).

    Returns:
        one dict per (fraction, other method, metric), keys :data:`COMPARISON_COLUMNS`; ``[]``
        when the table has no residual row or no other method.

    Raises:
        StageInputError: the two methods' test sinuses (ids, patients or labels) differ.
    """
    rows = []
    for fraction in dict.fromkeys(r["fraction"] for r in table):
        cells = [r for r in table if r["fraction"] == fraction]
        reference = next((r for r in cells if r["method"] == REFERENCE_METHOD), None)
        if reference is None:
            continue
        for other in cells:
            if other["method"] == REFERENCE_METHOD:
                continue
            y, p_ref, p_other, patients = _aligned(reference, other)
            n_patients = int(np.unique(patients).size)
            for metric in COMPARISON_METRICS:
                diff = bootstrap.paired_bootstrap_difference(y, p_ref, p_other, groups=patients, metric=metric,
                                                              n_boot=config.bootstrap, seed=config.seed)
                rows.append({"fraction": fraction, "other_method": other["method"], "metric": metric,
                             "difference": diff["estimate"], "low": diff["low"], "high": diff["high"],
                             "share_positive": diff["share_positive"], "n_test_patients": n_patients,
                             "n_replicates": diff["n_replicates"]})
    return rows


def _aligned(a: dict, b: dict) -> tuple:
    """Labels, both methods' probabilities and patients, row by row on the same test sinuses."""
    ids_a, ids_b = np.asarray(a["sample_ids"]).astype(str), np.asarray(b["sample_ids"]).astype(str)
    where = f"at {a['fraction']} % labels, methods {a['method']!r} and {b['method']!r}"
    if ids_a.shape != ids_b.shape or set(ids_a.tolist()) != set(ids_b.tolist()):
        only_a = sorted(set(ids_a.tolist()) - set(ids_b.tolist()))
        only_b = sorted(set(ids_b.tolist()) - set(ids_a.tolist()))
        raise stages.StageInputError(
            f"{where} were tested on different sinuses ({len(only_a)} only in {a['method']!r}, e.g. {only_a[:3]}; "
            f"{len(only_b)} only in {b['method']!r}, e.g. {only_b[:3]}): a paired comparison needs the same test "
            "sinuses; evaluate runs whose folds used the same dataset splits")
    order_a, order_b = np.argsort(ids_a, kind="stable"), np.argsort(ids_b, kind="stable")
    y_a, y_b = np.asarray(a["y"])[order_a], np.asarray(b["y"])[order_b]
    pat_a, pat_b = np.asarray(a["patients"]).astype(str)[order_a], np.asarray(b["patients"]).astype(str)[order_b]
    if not (np.array_equal(y_a, y_b) and np.array_equal(pat_a, pat_b)):
        raise stages.StageInputError(f"{where} give the same test sinuses different labels or patients: "
                                     "their predictions come from different datasets")
    return y_a, np.asarray(a["p"])[order_a], np.asarray(b["p"])[order_b], pat_a


def _write_comparisons(out_dir: Path, comparisons: list[dict]) -> None:
    """``comparisons.csv``: one row per (fraction, other method, metric); NaN as an empty cell."""
    write_csv_atomic(out_dir / "comparisons.csv", COMPARISON_COLUMNS,
                     [[_csv_cell(row[c]) for c in COMPARISON_COLUMNS] for row in comparisons])


def _interval(row: dict) -> str:
    return f"[{format_number(row['low'], 3, NA)}, {format_number(row['high'], 3, NA)}]"


def comparison_sentence(fraction, rows: list[dict]) -> str:
    """One sentence on whether residual pretraining leads every other method at ``fraction`` in AUROC.

    ``rows``: the AUROC rows of :func:`compare_to_residual` at that fraction. Residual pretraining
    leads a method when the 95 % paired interval of the difference lies above 0 (``low > 0``).
    The sentence names the best other method (the smallest difference: the highest fold-ensemble
    AUROC among the others, the first in the configuration's order on ties) with its difference
    and interval, and any other method against which the interval does not lie above 0.
    """
    rows = [r for r in rows if r["metric"] == "auroc"]
    head = f"At {fraction:g} % labels, residual pretraining"
    defined = [r for r in rows if math.isfinite(r["difference"]) and math.isfinite(r["low"]) and math.isfinite(r["high"])]
    if not rows or len(defined) < len(rows):
        return (f"{head} cannot be compared with every other method: the AUROC difference or its paired interval "
                "is undefined (a test set, or every bootstrap replicate, with one class only).")
    leads = all(r["low"] > 0 for r in rows)
    best = min(rows, key=lambda r: r["difference"])
    excludes = "excludes" if best["low"] > 0 or best["high"] < 0 else "includes"
    sentence = (f"{head} {'leads every other method' if leads else 'does not lead'} "
                f"(best other: {best['other_method']}, AUROC difference {format_number(best['difference'], 3, NA)}, "
                f"95 % paired interval {_interval(best)}: the interval {excludes} 0")
    behind = [r for r in rows if r is not best and not r["low"] > 0]
    if behind and best["low"] > 0:
        sentence += "; the paired interval does not lie above 0 against " + ", ".join(
            f"{r['other_method']} ({format_number(r['difference'], 3, NA)}, {_interval(r)})" for r in behind)
    return sentence + ")."


def _write_table(out_dir: Path, table: list[dict]) -> None:
    columns = ("auroc", "auprc", "f1_at_val_threshold", "f1_at_0.5")
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


def per_type_lines(table: list[dict]) -> list[str]:
    """The report's section per lesion type: for every (method, fraction) row of ``table``
    (:func:`_evaluate_cell`), each anomaly type's AUROC against the normal test sinuses and its
    sensitivity at the Youden threshold (the rule bundles decide with), then all anomalous sinuses
    together; the specificity at that threshold under the table. ``[]`` when no row has a type."""
    if not any(row.get("by_type") for row in table):
        return []
    lines = ["", "## Per lesion type against the normal test sinuses", "",
             "AUROC of each anomaly type's test sinuses against the normal ones (the other types left out) and the "
             "share of them called anomalous at the threshold maximising Youden's J on the fold's validation set (the "
             "rule an exported bundle decides with); mean over folds as above.", "",
             "| pretraining | labels | lesion type | test sinuses | AUROC against normal (folds) | "
             "sensitivity at the Youden threshold (folds) |", "|---|---|---|---|---|---|"]
    for row in table:
        counts = row.get("test_sinuses_by_type", {})
        for kind, entry in row.get("by_type", {}).items():
            lines.append(f"| {row['method']} | {row['fraction']} % | {kind} | {counts.get(kind, 'n/a')} | "
                         f"{_fmt(entry.get('auroc'))} | {_fmt(entry.get('sensitivity_at_youden_threshold'))} |")
        lines.append(f"| {row['method']} | {row['fraction']} % | all anomalous | {sum(counts.values())} | "
                     f"{_fmt(row['auroc'])} | {_fmt(row.get('recall_at_youden_threshold'))} |")
    lines += ["", "Normal test sinuses called normal at the Youden threshold (specificity, folds): "
              + "; ".join(f"{row['method']} {row['fraction']} %: {_fmt(row.get('specificity_at_youden_threshold'))}"
                          for row in table) + "."]
    return lines


def _comparison_lines(comparisons: list[dict], config: RunConfig) -> list[str]:
    lines = ["", "## Residual pretraining against every other method (paired patient bootstrap)", "",
             f"Difference residual - other of the fold ensembles' AUROC and AUPRC on the same test sinuses; each of "
             f"{config.bootstrap} replicates resamples the test patients once (each with both sinuses) and scores both "
             "methods on that resample; 95 % percentile interval of the differences, and the share of replicates in "
             "which residual pretraining scored higher. Residual pretraining leads a method when the interval lies "
             "above 0; the sentence under each table is about AUROC. All rows: `comparisons.csv`."]
    for fraction in dict.fromkeys(r["fraction"] for r in comparisons):
        rows = [r for r in comparisons if r["fraction"] == fraction]
        by = {(r["other_method"], r["metric"]): r for r in rows}
        lines += ["", f"### {fraction:g} % labels ({rows[0]['n_test_patients']} test patients)", "",
                  "| other method | AUROC difference | 95 % paired interval | share > 0 | AUPRC difference | "
                  "95 % paired interval | share > 0 |", "|---|---|---|---|---|---|---|"]
        for other in dict.fromkeys(r["other_method"] for r in rows):
            cells = []
            for metric in COMPARISON_METRICS:
                r = by[(other, metric)]
                cells += [format_number(r["difference"], 3, NA), _interval(r),
                          format_number(r["share_positive"], 2, NA)]
            lines.append(f"| {other} | " + " | ".join(cells) + " |")
        lines += ["", comparison_sentence(fraction, rows)]
    return lines


def _write_report(out_dir: Path, table: list[dict], ablation: list[dict], figures: list[Path], config: RunConfig,
                  pretraining: str = "", comparisons: list[dict] | None = None, heat_lines: list[str] = (),
                  loss_lines: list[str] = ()) -> None:
    paper = json.loads(PAPER_RESULTS.read_text(encoding="utf-8"))
    lines = [
        "# SinusAnomaly evaluation",
        "",
        f"Configuration: `{config.source or '?'}` (crop {config.crop_size}^3, encoder widths "
        f"{list(config.encoder_widths)}). Test set: the dataset's held-out patients; metrics per fold on it, "
        f"mean over folds with a 95 % Student-t interval over folds, given only from {evaluation.MIN_FOLDS_FOR_T} folds on "
        "(shown clipped to [0, 1]; unclipped in results.csv): it shows how much the folds' models differ on the "
        "same test patients, not how uncertain a score is from that set of patients; "
        "F1 at the F1 threshold: the one maximising F1 on the fold's validation set (an exported bundle decides with "
        "its threshold rule's, Youden's by default, not with this one). Fold ensemble: per test sinus the mean "
        "probability of the folds that tested it (what an exported bundle predicts), every test patient counted once; "
        "95 % percentile-bootstrap interval resampling patients (each with both sinuses): the uncertainty from "
        "the test patients.",
        *(["", pretraining] if pretraining else []),
        "",
        "## Methods and label fractions (the form of the paper's Table 2)",
        "",
        "The paper's columns are the paper's own numbers (5 folds on HCHS FLAIR data, not ours), for reference only.",
        "",
        "| pretraining | labels | AUROC (folds) | AUPRC (folds) | F1 at the F1 threshold (folds) | F1 at 0.5 (folds) | fold-ensemble AUROC (patient bootstrap) | paper AUROC | paper AUPRC | paper F1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in table:
        pa = row["pooled"].get("auroc", {})
        pooled = "n/a" if pa.get("estimate") is None or not np.isfinite(pa["estimate"]) else \
            f"{pa['estimate']:.2f} ({pa['low']:.2f}-{pa['high']:.2f})"
        lines.append(f"| {row['method']} | {row['fraction']} % | {_fmt(row['auroc'])} | {_fmt(row['auprc'])} | "
                     f"{_fmt(row['f1_at_val_threshold'])} | {_fmt(row['f1_at_0.5'])} | {pooled} | "
                     + " | ".join(_paper_cell(paper, row["method"], row["fraction"], i) for i in range(3)) + " |")
    lines += per_type_lines(table)
    if comparisons:
        lines += _comparison_lines(comparisons, config)
    if ablation:
        lines += ["", f"## CAE trained on part of the normal training sinuses (the form of the paper's Table 3), "
                      f"{config.cae_ablation_label_fraction} % labels", "",
                  "| CAE normals | AUROC | AUPRC | F1 at the F1 threshold | paper AUROC | paper AUPRC | paper F1 |", "|---|---|---|---|---|---|---|"]
        for row in ablation:
            entry = paper.get("table3", {}).get(f"{row['cae_fraction']:g}")
            ref = [f"{m:.2f} ({lo:.2f}-{hi:.2f})" for m, lo, hi in entry] if entry else ["", "", ""]
            lines.append(f"| {row['cae_fraction']:g} % | {_fmt(row['auroc'])} | {_fmt(row['auprc'])} | {_fmt(row['f1_at_val_threshold'])} | "
                         + " | ".join(ref) + " |")
    lines += loss_lines
    lines += heat_lines
    lines += ["", "Per-fold numbers: `<method>_frac<p>/metrics.csv`; all rows: `results.csv`"
              + ("; paired comparisons: `comparisons.csv`" if comparisons else "")
              + ("; pretraining losses per epoch: `pretraining_loss.csv`." if loss_lines else "."), ""]
    for figure in figures:
        lines += [f"![{figure.stem}]({figure.name})", ""]
    write_text_atomic(out_dir / "report.md", "\n".join(lines))

"""Leave-one-anatomy-out check of the default model's recipe (issues 24 and 30).

For each real anatomy A and each training seed: the recipe (``SinusAnomalyTraining.defaultmodel``,
``configs/default.json``) trained on the synthetic pools of every other anatomy, exported as a
bundle per method, and that bundle applied to every labelled head of A's pool (never seen in
training). Per held-out anatomy, method and seed: AUROC, and specificity and sensitivity at the
bundle's own threshold; per lesion type AUROC against the normal sinuses and sensitivity; per
contrast. Then mean and spread over seeds, and over anatomies. Polyps and retention cysts are few in a
pool (about 6 of each per anatomy), so each anatomy also has a focal test pool (``--focal-heads``, its own
synth seed, every anomalous sinus a polyp or a cyst) that the same bundles classify; their AUROC,
sensitivity and the specificity are also given on both held-out sets together.

The held-out sinuses are classified from the crops that ``prepare`` extracted (the same
extraction ``classify`` runs, cached once for every split); a scan refused by extraction is left
out, as ``classify`` would refuse it. Every step resumes when re-run.

    python benchmarks/loao.py --work DIR [--seeds 0,1,2] [--heads 48] [--unlabelled 16] [--focal-heads 48] [--anatomies ...]
                              [--methods none,residual] [--held-out A,B] [--prepare-only]
                              [--focal-train-heads N --train-heads K --train-focal-heads M --tag T] [--folds K --tag T]

``--train-focal-heads`` trains on a class balance with more polyps and cysts: the first K pool heads and the
first M heads of each training anatomy's focal training pool (every anomalous sinus a polyp or cyst). ``--folds``
splits each split's training heads into K folds instead of the recipe's 2 (the config's ``folds`` picks which are trained).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from SinusAnomalyLib.bundle import load_bundle
from SinusAnomalyLib.dataset import load_dataset, prepare_dataset
from SinusAnomalyLib.fileio import write_csv_atomic, write_json_atomic
from SinusAnomalyLib.inference import fold_probabilities
from SinusAnomalyLib.reference import ANATOMIES
from SinusAnomalyLib.residuals import resize_crops
from SinusAnomalyLib.workers import default_workers
from SinusAnomalyTraining import pipeline, runtime
from SinusAnomalyTraining.config import load_config
from SinusAnomalyTraining.defaultmodel import (CONFIG, FOCAL_KINDS, FOCAL_POOL_TAG, FOCAL_TRAIN_POOL_SEED, RECIPE_FOLDS,
                                               RECIPE_TEST_FRACTION, PoolSizes, anatomy_of,
                                               combine_pools, focal_pool_params, link_cached_scans, link_image, make_cohorts,
                                               make_pools, patient_name, pool_patients, read_table, source_commit)
from SinusAnomalyTraining.evaluation import binary_metrics
from SinusAnomalyTraining.export import export_run
from SinusAnomalyTraining.lesion_types import by_type

SIZE_BINS_MM = ((4, 8), (8, 14), (14, 26))  # the drawn diameter (synth.LESION_SIZES_MM: 4-16 and 4-25 mm)
# Per anatomy a second held-out test set whose anomalous sinuses are all polyps or retention cysts: a pool
# holds about 6 of each per anatomy, too few to resolve a per-type AUROC goal of 0.85 (one AUROC of 6
# lesions against 60 normals has a sampling SD near 0.1). Anatomy k: synth seed FOCAL_POOL_SEED + k.
FOCAL_POOL_SEED = 201
PREDICTION_COLUMNS = ["anatomy", "method", "seed", "patient", "side", "contrast", "anomaly_type", "lesion_size_mm", "label",
                      "probability", "threshold"]


def make_focal_pools(work: Path, heads: int, anatomies, folder: str = "focal-pools", seed: int = FOCAL_POOL_SEED,
                     workers: int = 1) -> dict[str, Path]:
    """Per anatomy a pool of ``heads`` heads under ``work/folder`` like its training pool (same variety and share
    of anomalous heads) except that every anomalous sinus holds a polyp or a retention cyst (resumable).
    Anatomy k draws from synth seed ``seed + k``."""
    return make_cohorts({anatomy: dict(out_dir=work / folder / anatomy, n_cases=heads, seed=seed + ANATOMIES.index(anatomy),
                                       params=focal_pool_params(anatomy), previews=0)
                         for anatomy in anatomies}, workers=workers)


def prepare_focal(work: Path, folder: str, pools: dict[str, Path], workers: int = 1) -> dict[str, Path]:
    """The focal pools' heads combined under ``work/folder`` and extracted into ``work/folder/dataset``; their tables."""
    tables = combine_pools(pools, work / folder)
    if not (work / folder / "dataset" / "dataset.json").is_file():
        prepare_dataset(tables["images"], tables["labels"], work / folder / "dataset", n_folds=2, test_fraction=0.0,
                        fractions=[1.0], progress=True, workers=workers)
    return tables


def training_tables(work: Path, tables: dict[str, Path], focal_train: dict[str, Path], pool_heads: int,
                    focal_heads: int) -> dict[str, Path]:
    """Training heads with more polyps and cysts: per anatomy the first ``pool_heads`` labelled heads of its pool
    and the first ``focal_heads`` of its focal training pool (renamed ``<anatomy>-focal-<patient>``, as
    ``combine_pools`` names the focal pools of ``train-default``: these are the heads it trains on), linked under
    ``work/train-p<pool_heads>-f<focal_heads>`` with the pools' unlabelled heads; its tables as :func:`combine_pools`
    gives them, and "scans": {renamed patient: its name in the focal training pool's dataset}."""
    out = work / f"train-p{pool_heads}-f{focal_heads}"
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows, renamed = [], {}
    for source, heads, tag in ((tables, pool_heads, ""), (focal_train, focal_heads, FOCAL_POOL_TAG)):
        labelled = read_table(source["labels"])
        taken, keep = Counter(), set()
        for patient in dict.fromkeys(r["patient"] for r in labelled):  # in table order: an anatomy's first heads
            taken[anatomy_of(patient)] += 1
            if taken[anatomy_of(patient)] <= heads:
                keep.add(patient)
        for row in (r for r in labelled if r["patient"] in keep):
            anatomy, rest = row["patient"].split("-", 1)
            name = patient_name(anatomy, f"{tag}-{rest}" if tag else rest)
            image = f"{name}{row['image'][len(row['patient']):]}"
            link_image(source["images"] / row["image"], out / "images" / image)
            rows.append([name, row["side"], row["label"], row["anomaly_type"], image])
            if tag:
                renamed[name] = row["patient"]
    unlabelled = read_table(tables["unlabelled"])
    for row in unlabelled:
        link_image(tables["images"] / row["image"], out / "images" / row["image"])
    write_csv_atomic(out / "labels.csv", ["patient", "side", "label", "anomaly_type", "image"], rows)
    write_csv_atomic(out / "unlabelled.csv", ["patient", "image"], [[r["patient"], r["image"]] for r in unlabelled])
    return {"images": out / "images", "labels": out / "labels.csv", "unlabelled": out / "unlabelled.csv", "scans": renamed}


def subset_tables(tables: dict[str, Path], out: Path, anatomies: set[str]) -> tuple[Path, Path]:
    """Labels and unlabelled lists of the combined tables with only ``anatomies``' heads (same images folder)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = [r for r in read_table(tables["labels"]) if anatomy_of(r["patient"]) in anatomies]
    unlabelled = [r for r in read_table(tables["unlabelled"]) if anatomy_of(r["patient"]) in anatomies]
    write_csv_atomic(out / "labels.csv", list(labels[0]), [list(r.values()) for r in labels])
    write_csv_atomic(out / "unlabelled.csv", ["patient", "image"], [[r["patient"], r["image"]] for r in unlabelled])
    return out / "labels.csv", out / "unlabelled.csv"


def bundle_probabilities(bundle_path: Path, crops: np.ndarray, batch: int = 32) -> np.ndarray:
    """(n,) the bundle's probability of "anomalous" for (n, 64, 64, 64) crops: the fold models' mean, as classify computes it."""
    bundle = load_bundle(bundle_path)
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch):
            x = torch.from_numpy(resize_crops(np.asarray(crops[start:start + batch], np.float32), bundle.model_crop_size))[:, None]
            out.append(fold_probabilities(bundle, x).mean(0).numpy())
    return np.concatenate(out)


def seed_from_base(base: Path, run_dir: Path) -> None:
    """Start a variant's run folder with the base run's CAE, residuals and pretraining (hard links):
    a variant that changes only fine-tuning retrains only that (each stage checks what it was made from)."""
    if run_dir.exists() or not base.is_dir():
        return
    for fold in sorted(base.glob("fold*")):
        for stage in ("cae", "residuals", "pretrain"):
            if (fold / stage).is_dir():
                shutil.copytree(fold / stage, run_dir / fold.name / stage, copy_function=os.link)


def predictions_path(work: Path, held_out: str, seed: int, tag: str = "", focal: bool = False) -> Path:
    """Where a run (held-out anatomy, seed, variant tag) stores its predictions on the held-out pool, or on its focal test pool."""
    return work / f"without-{held_out}" / f"{'focal_' if focal else ''}predictions_seed{seed}{tag}.csv"


def stored_predictions(work: Path, held_out: str, seed: int, tag: str = "", method: str = "none",
                       focal: bool = False) -> list[dict] | None:
    """The rows of ``method`` in a run's stored predictions (:func:`predictions_path`); None where the run wrote none."""
    path = predictions_path(work, held_out, seed, tag, focal)
    return [r for r in read_table(path) if r["method"] == method] if path.is_file() else None


def train_and_classify(work: Path, tables: dict, master, held_out: str, anatomies: list[str], seed: int, methods: list[str],
                       device, config_path: Path = CONFIG, tag: str = "", train: dict | None = None,
                       focal_train_root: Path | None = None, n_folds: int = RECIPE_FOLDS) -> Path:
    """Train the recipe (``config_path``) without ``held_out``, classify its heads; the predictions CSV.
    ``tag`` names a variant: its run folder and predictions carry it, its first stages come from the base run.
    ``train``: other training heads (:func:`training_tables`; their focal heads' scans cached under ``focal_train_root``).
    ``n_folds``: the training heads split into that many folds (a dataset folder of its own where not the recipe's)."""
    split = work / f"without-{held_out}"
    predictions = predictions_path(work, held_out, seed, tag)
    if predictions.is_file():
        return predictions
    source = train or tables
    tables_dir = split / source["labels"].parent.name if train else split
    labels, unlabelled = subset_tables(source, tables_dir, set(anatomies) - {held_out})
    dataset_dir = tables_dir / ("dataset" if n_folds == RECIPE_FOLDS else f"dataset-folds{n_folds}")
    if not (dataset_dir / "dataset.json").is_file():
        patients = pool_patients(labels, unlabelled)
        link_cached_scans(master.root, dataset_dir, [p for p in patients if p not in source.get("scans", {})])
        if train:
            link_cached_scans(focal_train_root, dataset_dir, {p: train["scans"][p] for p in patients if p in train["scans"]})
        prepare_dataset(source["images"], labels, dataset_dir, n_folds=n_folds, test_fraction=RECIPE_TEST_FRACTION, fractions=[1.0],
                        seed=0, progress=False, unlabelled=unlabelled)
    config = load_config(config_path).replace(seed=seed, methods=tuple(methods))
    run_dir = split / f"run_seed{seed}{tag}"
    if tag and not train and n_folds == RECIPE_FOLDS:  # other training heads or folds: every stage trains on them
        seed_from_base(split / f"run_seed{seed}", run_dir)
    pipeline.run_pipeline(config, dataset_dir, run_dir, device, progress=False)
    bundles = {method: export_run(run_dir, split / f"seed{seed}{tag}-{method}.sabundle", method, 100) for method in methods}
    write_predictions(bundles, master, tables["sinuses"], held_out, seed, predictions)
    return predictions


def write_predictions(bundles: dict[str, Path], dataset, sinuses_csv: Path, held_out: str, seed: int, out: Path) -> Path:
    """Every ``held_out`` sinus of a prepared ``dataset`` classified by each method's bundle; one CSV of PREDICTION_COLUMNS."""
    info = {r["patient"] + r["side"]: r for r in read_table(sinuses_csv)}
    rows = [r for r in dataset.manifest if info[r.patient + r.side]["anatomy"] == held_out]
    crops = dataset.crops[[r.crop_index for r in rows]]
    lines = []
    for method, bundle in bundles.items():
        threshold = load_bundle(bundle).threshold
        for row, p in zip(rows, bundle_probabilities(bundle, crops)):
            sinus = info[row.patient + row.side]
            lines.append([held_out, method, seed, row.patient, row.side, sinus["contrast"], sinus["anomaly_type"],
                          sinus["lesion_size_mm"], row.label, round(float(p), 6), round(threshold, 6)])
    write_csv_atomic(out, PREDICTION_COLUMNS, lines)
    return out


def classify_focal_pool(work: Path, focal, focal_sinuses: Path, held_out: str, seed: int, methods: list[str], tag: str = "") -> Path | None:
    """The focal test pool of ``held_out`` classified by the bundles its split's run exported; None where none was."""
    split = work / f"without-{held_out}"
    out = predictions_path(work, held_out, seed, tag, focal=True)
    bundles = {method: split / f"seed{seed}{tag}-{method}.sabundle" for method in methods}
    bundles = {method: path for method, path in bundles.items() if path.is_file()}
    if out.is_file():
        return out
    return write_predictions(bundles, focal, focal_sinuses, held_out, seed, out) if bundles else None


def scores(rows: list[dict]) -> dict:
    """AUROC, specificity and sensitivity at the bundle's threshold, per type and per contrast, of one set of predictions."""
    y = np.array([int(r["label"]) for r in rows])
    p = np.array([float(r["probability"]) for r in rows])
    threshold = float(rows[0]["threshold"])
    m = binary_metrics(y, p, threshold)
    out = {"auroc": m["auroc"], "specificity": m["specificity"], "sensitivity": m["recall"], "n": len(rows), "n_anomalous": int(y.sum())}
    for kind, t in by_type([r["anomaly_type"] for r in rows], y, p, threshold).items():
        out[f"type:{kind}:auroc"], out[f"type:{kind}:sensitivity"] = t["auroc"], t["sensitivity"]
    normal = y == 0
    for kind in FOCAL_KINDS:  # by size: which focal lesions the model sees
        for low, high in SIZE_BINS_MM:
            chosen = np.array([r["anomaly_type"] == kind and r["lesion_size_mm"] != "" and low <= float(r["lesion_size_mm"]) < high
                               for r in rows])
            if chosen.any() and normal.any():
                keep = chosen | normal
                out[f"size:{kind}:{low:g}-{high:g}:auroc"] = binary_metrics(y[keep], p[keep], threshold)["auroc"]
                out[f"size:{kind}:{low:g}-{high:g}:n"] = int(chosen.sum())
    for contrast in sorted({r["contrast"] for r in rows}):
        in_contrast = np.array([r["contrast"] == contrast for r in rows])
        yc, pc = y[in_contrast], p[in_contrast]
        normal = pc[yc == 0]
        out[f"contrast:{contrast}:specificity"] = float(np.mean(normal < threshold)) if len(normal) else float("nan")
        out[f"contrast:{contrast}:sensitivity"] = float(np.mean(pc[yc == 1] >= threshold)) if yc.any() else float("nan")
        out[f"contrast:{contrast}:auroc"] = binary_metrics(yc, pc, threshold)["auroc"] if 0 < yc.sum() < len(yc) else float("nan")
    return out


def focal_scores(rows: list[dict]) -> dict:
    """``focal:``-prefixed scores of polyps and retention cysts against the normal sinuses of a held-out pool and
    its focal test pool together (one bundle, one threshold): AUROC, sensitivity and counts per kind and size, specificity."""
    out = {f"focal:{key}": value for key, value in scores(rows).items()
           if key == "specificity" or key.startswith(tuple(f"{group}:{kind}:" for group in ("type", "size") for kind in FOCAL_KINDS))}
    out["focal:n_normal"] = sum(r["anomaly_type"] == "normal" for r in rows)
    for kind in FOCAL_KINDS:
        out[f"focal:type:{kind}:n"] = sum(r["anomaly_type"] == kind for r in rows)
        for contrast in sorted({r["contrast"] for r in rows}):  # a T1-dark cyst is not a T2-bright one
            chosen = [r for r in rows if r["contrast"] == contrast and r["anomaly_type"] in ("normal", kind)]
            y = np.array([r["anomaly_type"] == kind for r in chosen])
            if 0 < y.sum() < len(y):
                p = np.array([float(r["probability"]) for r in chosen])
                out[f"focal:contrast:{contrast}:{kind}:auroc"] = binary_metrics(y.astype(int), p, float(rows[0]["threshold"]))["auroc"]
    return out


def summarise(prediction_files: list[Path], focal_files: list[Path] = ()) -> dict:
    """{method: {anatomy: {metric: [per seed]}}} and over anatomies ("all": per (anatomy, seed) values); with
    the focal test pools' predictions also the ``focal:`` scores of :func:`focal_scores`."""
    rows = [r for f in prediction_files for r in read_table(f)]
    focal_rows = [r for f in focal_files for r in read_table(f)]
    table: dict = {}
    for method in sorted({r["method"] for r in rows}):
        for anatomy in sorted({r["anatomy"] for r in rows}):
            for seed in sorted({r["seed"] for r in rows}):
                same = lambda r: r["method"] == method and r["anatomy"] == anatomy and r["seed"] == seed  # noqa: E731
                group = [r for r in rows if same(r)]
                if not group:
                    continue
                focal_group = [r for r in focal_rows if same(r)]
                found = scores(group) | (focal_scores(group + focal_group) if focal_group else {})
                for key, value in found.items():
                    table.setdefault(method, {}).setdefault(anatomy, {}).setdefault(key, []).append(value)
                    table[method].setdefault("all", {}).setdefault(key, []).append(value)
    return table


def print_and_write(text: str, out: Path | None) -> None:
    """A benchmark's tables: printed, and also written to ``out`` where given."""
    print(text)
    if out:
        out.write_text(text, encoding="utf-8")


def mean_sd(values) -> str:
    v = np.array(values, float)
    v = v[np.isfinite(v)]
    return "-" if not len(v) else f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v.mean():.2f}"


def markdown(table: dict, seeds: list[int]) -> str:
    lines = []
    for method, by_anatomy in table.items():
        keys = ["auroc", "specificity", "sensitivity"]
        types = sorted({k.split(":")[1] for k in by_anatomy["all"] if k.startswith("type:")})
        contrasts = sorted({k.split(":")[1] for k in by_anatomy["all"] if k.startswith("contrast:")})
        lines += [f"### {method}", "", f"Mean ± SD over training seeds {','.join(map(str, seeds))} (row 'all': over every held-out anatomy and seed).", "",
                  "| held out | sinuses (anomalous) | AUROC | specificity | sensitivity | " + " | ".join(f"AUROC {t}" for t in types) + " |",
                  "|---|---|---|---|---|" + "---|" * len(types)]
        for anatomy in sorted(by_anatomy, key=lambda a: (a == "all", a)):
            m = by_anatomy[anatomy]
            lines.append(f"| {anatomy} | {int(np.mean(m['n']))} ({int(np.mean(m['n_anomalous']))}) | "
                         + " | ".join(mean_sd(m[k]) for k in keys) + " | "
                         + " | ".join(mean_sd(m.get(f"type:{t}:auroc", [])) for t in types) + " |")
        lines += ["", "Sensitivity per type at the bundle's threshold, and per contrast (all held-out anatomies):", "",
                  "| " + " | ".join(types) + " |", "|" + "---|" * len(types),
                  "| " + " | ".join(mean_sd(by_anatomy["all"].get(f"type:{t}:sensitivity", [])) for t in types) + " |", "",
                  "| contrast | AUROC | specificity | sensitivity |", "|---|---|---|---|"]
        for c in contrasts:
            lines.append(f"| {c} | " + " | ".join(mean_sd(by_anatomy["all"][f"contrast:{c}:{k}"]) for k in keys) + " |")
        lines += ["", "Focal lesions by drawn diameter, AUROC against the normal sinuses (all held-out anatomies; lesions per set):", "",
                  *size_table(by_anatomy["all"], "size"), ""]
        if "focal:specificity" in by_anatomy["all"]:
            lines += focal_markdown(by_anatomy)
    return "\n".join(lines)


def focal_markdown(by_anatomy: dict) -> list[str]:
    """The ``focal:`` scores of one method as markdown lines (see :func:`focal_scores`)."""
    lines = ["Polyps and retention cysts on the held-out pool and its focal test pool together (normal sinuses of both), "
             "at the bundle's threshold:", "",
             "| held out | normal / polyps / cysts | specificity | AUROC polyp | sensitivity polyp | AUROC retention cyst | "
             "sensitivity retention cyst |", "|---|---|---|---|---|---|---|"]
    for anatomy in sorted(by_anatomy, key=lambda a: (a == "all", a)):
        m = by_anatomy[anatomy]
        counts = " / ".join(f"{np.mean(m[key]):.0f}" for key in ("focal:n_normal", *(f"focal:type:{k}:n" for k in FOCAL_KINDS)))
        lines.append(f"| {anatomy} | {counts} | {mean_sd(m['focal:specificity'])} | "
                     + " | ".join(f"{mean_sd(m.get(f'focal:type:{k}:auroc', []))} | {mean_sd(m.get(f'focal:type:{k}:sensitivity', []))}"
                                  for k in FOCAL_KINDS) + " |")
    contrasts = sorted({k.split(":")[2] for k in by_anatomy["all"] if k.startswith("focal:contrast:")})
    lines += ["", "The same per contrast, AUROC against the normal sinuses of that contrast (all held-out anatomies):", "",
              "| kind | " + " | ".join(contrasts) + " |", "|---|" + "---|" * len(contrasts)]
    for kind in FOCAL_KINDS:
        lines.append(f"| {kind} | " + " | ".join(mean_sd(by_anatomy["all"].get(f"focal:contrast:{c}:{kind}:auroc", []))
                                                 for c in contrasts) + " |")
    lines += ["", "The same by drawn diameter, AUROC against the normal sinuses (all held-out anatomies; lesions per set):", "",
              *size_table(by_anatomy["all"], "focal:size")]
    return lines + [""]


def size_table(scores: dict, prefix: str) -> list[str]:
    """Markdown lines: AUROC of each focal kind per drawn-diameter bin (keys ``<prefix>:<kind>:<low>-<high>:auroc``, ``...:n``)."""
    lines = ["| kind | " + " | ".join(f"{low}-{high} mm" for low, high in SIZE_BINS_MM) + " |", "|---|" + "---|" * len(SIZE_BINS_MM)]
    for kind in FOCAL_KINDS:
        cells = []
        for low, high in SIZE_BINS_MM:
            key = f"{prefix}:{kind}:{low:g}-{high:g}"
            n = scores.get(f"{key}:n", [])
            cells.append(f"{mean_sd(scores.get(f'{key}:auroc', []))} ({np.mean(n):.0f})" if n else "-")
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return lines


def plot(table: dict, path: Path) -> Path:
    """Per method: AUROC of each lesion type against the normal sinuses, per held-out anatomy (bars:
    mean over seeds, whiskers: their SD), with the overall AUROC; a dashed line at the 0.85 goal."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    methods = list(table)
    fig = Figure(figsize=(10, 3.6 * len(methods)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(methods), 1, squeeze=False)[:, 0]
    for ax, method in zip(axes, methods):
        anatomies = sorted(a for a in table[method] if a != "all")
        groups = ["overall"] + sorted({k.split(":")[1] for k in table[method]["all"] if k.startswith("type:")})
        width = 0.8 / len(anatomies)
        for i, anatomy in enumerate(anatomies):
            m = table[method][anatomy]
            values = [np.array(m["auroc" if g == "overall" else f"type:{g}:auroc"], float) for g in groups]
            means = [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in values]
            spreads = [np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else 0.0 for v in values]
            ax.bar(np.arange(len(groups)) + (i - (len(anatomies) - 1) / 2) * width, means, width, yerr=spreads, capsize=2,
                   label=f"{anatomy} held out")
        ax.axhline(0.85, ls="--", color="k", lw=0.8)
        ax.axhline(0.5, ls=":", color="grey", lw=0.8)
        ax.set_xticks(range(len(groups)), [g.replace("_", " ") for g in groups], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("AUROC vs normal sinuses")
        ax.set_title(f"{method} pretraining: held-out anatomy, mean ± SD over training seeds", fontsize=9)
        ax.legend(fontsize=7, ncol=len(anatomies), loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--heads", type=int, default=PoolSizes.labelled)
    parser.add_argument("--unlabelled", type=int, default=PoolSizes.unlabelled)
    parser.add_argument("--anatomies", default=",".join(ANATOMIES))
    parser.add_argument("--methods", default="none,residual")
    parser.add_argument("--held-out", default=None, help="only these held-out anatomies (default: each in turn)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the recipe's configuration (default: configs/default.json)")
    parser.add_argument("--tag", default="", help="a variant's name: its runs and predictions carry it and reuse the base "
                                                  "runs' CAE, residuals and pretraining (for variants of fine-tuning)")
    parser.add_argument("--focal-heads", type=int, default=48, help="heads per anatomy of its focal test pool (0: none)")
    parser.add_argument("--focal-train-heads", type=int, default=0,
                        help="heads per anatomy of a focal training pool for focal_probe.py --extra-train (synth seed 301+k; 0: none)")
    parser.add_argument("--train-heads", type=int, default=None,
                        help="train on only the first N labelled heads of each training anatomy's pool (default: all of --heads)")
    parser.add_argument("--train-focal-heads", type=int, default=0,
                        help="add the first N heads of each training anatomy's focal training pool to its training heads "
                             "(more polyps and cysts; at most --focal-train-heads; use with --tag)")
    parser.add_argument("--folds", type=int, default=RECIPE_FOLDS,
                        help=f"split each split's training heads into this many folds (default: the recipe's {RECIPE_FOLDS}; "
                             "the config's 'folds' picks which are trained; use with --tag)")
    parser.add_argument("--prepare-only", action="store_true", help="make the pools and extract every head, then stop "
                                                                   "(so that several processes can then train the splits)")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes making pools and extracting heads side by side (default: the cores, at most 4)")
    args = parser.parse_args(argv)
    if args.folds != RECIPE_FOLDS and not args.tag:
        parser.error(f"--folds {args.folds} needs a --tag of its own")
    started = time.perf_counter()
    anatomies, seeds, methods = args.anatomies.split(","), [int(s) for s in args.seeds.split(",")], args.methods.split(",")
    runtime.set_deterministic(True)
    device = runtime.select_device("auto")
    pools = make_pools(args.work, PoolSizes(args.heads, args.unlabelled), anatomies, workers=args.workers)
    tables = combine_pools(pools, args.work / "all")
    master_dir = args.work / "all" / "dataset"
    if not (master_dir / "dataset.json").is_file():
        prepare_dataset(tables["images"], tables["labels"], master_dir, n_folds=2, test_fraction=0.0, fractions=[1.0],
                        progress=True, unlabelled=tables["unlabelled"], workers=args.workers)
    focal_tables = None
    if args.focal_heads:
        focal_tables = prepare_focal(args.work, "focal", make_focal_pools(args.work, args.focal_heads, anatomies, workers=args.workers),
                                     args.workers)
    if args.train_focal_heads > args.focal_train_heads:
        parser.error(f"--train-focal-heads {args.train_focal_heads} needs --focal-train-heads of at least that many")
    focal_train = None
    if args.focal_train_heads:
        focal_train = prepare_focal(args.work, "focal-train", make_focal_pools(args.work, args.focal_train_heads, anatomies,
                                                                               "focal-train-pools", FOCAL_TRAIN_POOL_SEED,
                                                                               args.workers), args.workers)
    train = None
    if args.train_focal_heads or (args.train_heads or args.heads) < args.heads:
        if not args.tag:
            parser.error("other training heads (--train-heads, --train-focal-heads) need a --tag of their own")
        train = training_tables(args.work, tables, focal_train or tables, args.train_heads or args.heads, args.train_focal_heads)
    if args.prepare_only:
        return 0
    master = load_dataset(master_dir)
    focal = load_dataset(args.work / "focal" / "dataset") if focal_tables else None
    files, focal_files = [], []
    for held_out in (args.held_out.split(",") if args.held_out else anatomies):
        for seed in seeds:
            t0 = time.perf_counter()
            files.append(train_and_classify(args.work, tables, master, held_out, anatomies, seed, methods, device, args.config, args.tag,
                                            train, args.work / "focal-train" / "dataset", args.folds))
            if focal is not None:
                focal_files.append(classify_focal_pool(args.work, focal, focal_tables["sinuses"], held_out, seed, methods, args.tag))
            print(f"held out {held_out}, seed {seed}: {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    table = summarise(files, [f for f in focal_files if f is not None])
    finite = {method: {anatomy: {k: [v if np.isfinite(v) else None for v in values] for k, values in m.items()}
                       for anatomy, m in by_anatomy.items()} for method, by_anatomy in table.items()}  # JSON has no NaN
    name = f"loao{args.tag}"
    write_json_atomic(args.work / f"{name}.json", {"commit": source_commit(), "seeds": seeds, "methods": methods,
                                                "heads_per_anatomy": args.heads, "unlabelled_per_anatomy": args.unlabelled,
                                                "focal_heads_per_anatomy": args.focal_heads,
                                                "train_heads_per_anatomy": args.train_heads or args.heads,
                                                "train_focal_heads_per_anatomy": args.train_focal_heads, "folds": args.folds,
                                                "config": str(args.config), "tag": args.tag, "table": finite, "minutes": round((time.perf_counter() - started) / 60, 1)})
    text = markdown(table, seeds)
    (args.work / f"{name}.md").write_text(text)
    plot(table, args.work / f"{name}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

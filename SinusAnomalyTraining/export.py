"""Exporting a finished run as a model bundle (see :mod:`SinusAnomalyLib.bundle`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from SinusAnomalyLib.bundle import write_bundle
from SinusAnomalyLib.bundlefile import as_half_stored
from SinusAnomalyLib.dataset import load_dataset
from SinusAnomalyLib.errors import InvalidValueError, SinusAnomalyError
from SinusAnomalyLib.extraction import CROP_SIZE, CROP_SPACING_MM, PERCENTILES
from SinusAnomalyLib.reference import load_reference
from SinusAnomalyLib.residuals import resize_crops
from SinusAnomalyLib.splits import fraction_key

from . import calibration, evaluation, lesion_types, stages
from .config import RunConfig, load_config
from .engine import load_checkpoint

DEFAULT_RESIDUAL_THRESHOLD = 0.5
HALF_WEIGHTS_MAX_CHANGE = 0.002  # largest probability change float16 storage may cause on validation


def half_weights_change(run_dir: Path, config: RunConfig, folds: list[int], states: list[dict],
                        shortcut_type: str = "B") -> float | None:
    """Largest change of a validation probability when the classifiers' weights are stored as float16.

    Each fold's classifier is run on its own validation sinuses with its float32 weights and with
    the weights as the bundle would store them. None when the run's dataset is no longer where
    ``RUN/dataset.json`` says.
    """
    dataset = _run_dataset(run_dir)
    if dataset is None:
        return None
    change = 0.0
    for fold, state in zip(folds, states):
        rows = dataset.rows_of_patients(dataset.splits.folds[fold].val)
        crops = torch.from_numpy(resize_crops(np.asarray(dataset.crops[rows], dtype=np.float32), config.crop_size))[:, None]
        probabilities = []
        model = stages.network_spec(config, shortcut_type).classifier().eval()
        for weights in (state, {k: torch.from_numpy(v) for k, v in as_half_stored({k: v.numpy() for k, v in state.items()}).items()}):
            model.load_state_dict(weights)
            with torch.inference_mode():
                probabilities.append(torch.cat([torch.softmax(model(batch), 1)[:, 1] for batch in crops.split(8)]))
        change = max(change, float((probabilities[0] - probabilities[1]).abs().max()))
    return change


def _run_dataset(run_dir: Path):
    """The run's prepared dataset, or None when it is no longer where ``RUN/dataset.json`` says."""
    try:
        return load_dataset(json.loads((run_dir / "dataset.json").read_text(encoding="utf-8"))["path"])
    except (OSError, KeyError, ValueError, SinusAnomalyError):
        return None


def _inside_unit(threshold: float) -> float:
    """A threshold strictly inside (0, 1), as bundles require: 0 or 1 (every validation score at
    or below it saturated) become the nearest float inside, which decides every float32
    probability as 0 or 1 did except one of exactly 0."""
    return float(np.clip(threshold, np.nextafter(0.0, 1.0), np.nextafter(1.0, 0.0)))


def _finite_weights(checkpoint: Path) -> dict:
    """A checkpoint's model state; :class:`StageInputError` naming it when any weight is NaN or infinite."""
    state = load_checkpoint(checkpoint)["model"]
    bad = [(key, int((~torch.isfinite(value)).sum())) for key, value in state.items()
           if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if bad:
        shown = ", ".join(f"'{key}' ({n} values)" for key, n in bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise stages.StageInputError(f"{checkpoint}: NaN or infinite weights in {shown} (the training diverged); "
                                     "not exported")
    return state


def _fold_dirs(run_dir: Path, method: str, fraction: float) -> list[tuple[int, Path]]:
    key = fraction_key(float(fraction) / 100.0)
    found = []
    for fold_dir in sorted(run_dir.glob("fold*"), key=lambda p: int(p.name[4:]) if p.name[4:].isdigit() else -1):
        if not fold_dir.name[4:].isdigit():
            continue
        finetune = fold_dir / "finetune" / method / f"frac{key}"
        if (finetune / "done.json").is_file():
            found.append((int(fold_dir.name[4:]), finetune))
    return found


# How a bundle's verdict threshold is chosen on each fold's validation predictions
THRESHOLD_RULES = {
    "youden": (evaluation.best_youden_threshold, "Youden's J (sensitivity + specificity - 1)"),
    "f1": (evaluation.best_f1_threshold, "F1 (the paper's; it never counts normal sinuses called normal)"),
}
BUNDLE_THRESHOLD_METRICS = ("f1", "recall", "specificity")  # recorded at the bundle's rule only
METRIC_FIELDS = ("mean", "low", "high", "n")


def bundle_metrics(summary: dict, threshold_rule: str) -> dict:
    """The evaluation summary's metrics a bundle records (per-fold means, ``METRIC_FIELDS``).

    Threshold-free ones (AUROC, AUPRC, AUROC per lesion type) as they are; those that depend on a
    threshold only at the rule the bundle decides with, named after it
    (``<metric>_at_<rule>_threshold``, e.g. ``specificity_at_youden_threshold``; per lesion type
    ``sensitivity_at_youden_threshold[<type>]``), each fold's at its own threshold by that rule
    (the bundle's threshold is their median). Numbers at any other threshold (the other rule's,
    0.5) are left out: they describe verdicts the bundle does not give.
    """
    suffix = evaluation.RULE_SUFFIXES[threshold_rule]
    names = {"auroc": "auroc", "auprc": "auprc"}
    names |= {f"{m}{suffix}": f"{m}_at_{threshold_rule}_threshold" for m in BUNDLE_THRESHOLD_METRICS}
    out = {}
    for key, value in summary.items():
        by_type = lesion_types.parse_type_key(key)
        if by_type is not None and (by_type[0] == "auroc" or by_type[0].endswith(suffix)):
            names[key] = key
        if key in names:
            out[names[key]] = {k: v for k, v in value.items() if k in METRIC_FIELDS and v is not None}
    return out


def export_run(run_dir: str | Path, out: str | Path, method: str = "residual", fraction: float = 100,
               residual_threshold: float | None = None, name: str | None = None,
               threshold_rule: str = "youden", provenance: dict | None = None) -> Path:
    """Bundle every finished fold of ``run_dir`` for ``method`` at ``fraction`` % labels.

    The decision threshold is the median over folds of the threshold that maximises
    ``threshold_rule`` (:data:`THRESHOLD_RULES`) on each fold's validation predictions (each
    fold's model predicting its own validation patients). Youden's J by default: a verdict should
    weigh a normal sinus called anomalous as much as an anomalous one missed, and the F1 optimum
    (the paper's F1 threshold) calls many normal sinuses anomalous when that gains a little
    recall. The heat map's CAE is the first bundled fold's (any fold's CAE has seen only normal
    training sinuses); its heat-map scale, label level and out-of-distribution range are fitted on
    that fold's data by :func:`calibration.calibrate` when the run's dataset can be found. The
    label level is ``residual_threshold`` when given, else the calibrated one (with lesion
    masks), else :data:`DEFAULT_RESIDUAL_THRESHOLD`. ``provenance`` (how the bundle was made: the
    data, the command, the commit) is recorded as it is, with ``intended_use`` taken from it when given.
    """
    if threshold_rule not in THRESHOLD_RULES:
        raise InvalidValueError(f"unknown threshold rule '{threshold_rule}' (known: {', '.join(THRESHOLD_RULES)})")
    best_threshold, rule_name = THRESHOLD_RULES[threshold_rule]
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise stages.StageInputError(f"{run_dir} is not a run folder (no config.json)")
    config = load_config(run_dir / "config.json")
    folds = _fold_dirs(run_dir, method, fraction)
    if not folds:
        raise stages.StageInputError(f"{run_dir} has no finished fine-tuning for method '{method}' at {fraction} % labels")
    cae_fold = folds[0][0]
    cae_path = run_dir / f"fold{cae_fold}" / "cae" / "best.pt"
    if not cae_path.is_file():
        raise stages.StageInputError(f"{cae_path} is missing")
    cae_state = _finite_weights(cae_path)
    shortcut = stages.classifier_shortcut(method)  # the bundle records it: MedicalNet's classifier differs
    classifier_states, thresholds = [], []
    for fold, finetune in folds:
        trained_at = json.loads((finetune / stages.DONE).read_text(encoding="utf-8")).get("made_from", {}).get("crop_size")
        if trained_at is not None and trained_at != config.crop_size:  # the bundle would stamp the wrong size on it
            raise stages.StageInputError(f"{finetune} was fine-tuned at crop size {trained_at}, {run_dir / 'config.json'} says "
                                         f"{config.crop_size}: re-run its fine-tuning (sinus-anomaly run) before exporting")
        classifier_states.append(_finite_weights(finetune / "best.pt"))
        rows = [r for r in stages.read_predictions(finetune / "predictions.csv") if r["split"] == "val"]
        y = np.array([r["label"] for r in rows])
        p = np.array([r["p_anomalous"] for r in rows])
        thresholds.append(_inside_unit(best_threshold(y, p)) if evaluation.both_classes(y) else 0.5)
    half_change = half_weights_change(run_dir, config, [fold for fold, _ in folds], classifier_states, shortcut)
    half_weights = half_change is not None and half_change <= HALF_WEIGHTS_MAX_CHANGE
    dataset = _run_dataset(run_dir)
    calibrated = {} if dataset is None else calibration.calibrate(
        dataset, cae_fold, calibration.cae_from_state(config, cae_state), config.cae_size, config.residuals.median_kernel)
    chosen_level = calibrated.pop("residual_threshold", None)
    if residual_threshold is not None and residual_threshold != chosen_level:
        calibrated.pop("label_validation", None)  # it validated another level
    if residual_threshold is None:
        residual_threshold = DEFAULT_RESIDUAL_THRESHOLD if chosen_level is None else chosen_level
    metrics_path = run_dir / "evaluation" / f"{method}_frac{fraction_key(float(fraction) / 100.0)}" / "metrics.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8")).get("summary", {}) if metrics_path.is_file() else {}
    dataset_path = run_dir / "dataset.json"
    training_data = json.loads(dataset_path.read_text(encoding="utf-8")).get("summary", {}) if dataset_path.is_file() else {}
    meta = {
        "name": name or f"{run_dir.name}-{method}-{fraction_key(float(fraction) / 100.0)}pct",
        "method": method,
        "fraction": fraction,
        "folds": [fold for fold, _ in folds],
        "cae_fold": cae_fold,
        "threshold": float(np.median(thresholds)),
        "fold_thresholds": [float(t) for t in thresholds],
        "threshold_rule": f"median over folds of the threshold maximising {rule_name} on each fold's validation predictions",
        "residual_threshold": float(residual_threshold),
        "crop": {"size_voxels": CROP_SIZE, "spacing_mm": CROP_SPACING_MM, "model_crop_size": config.crop_size,
                 "mirror": "right crop mirrored along axis 0"},
        "intensity": {"percentiles": list(PERCENTILES), "range": [0, 1]},
        "residuals": config.residuals.as_dict(),
        "models": {"cae": {"channels": list(config.cae.channels), "latent_dim": config.cae.latent_dim,
                           "crop_size": config.cae_size},
                   "encoder_widths": list(config.encoder_widths), "shortcut_type": shortcut},
        "reference_sha256": load_reference().sha256,
        # per-fold means; their t interval only from 3 folds on (an absent one is left out)
        "metrics": bundle_metrics(metrics, threshold_rule),
        "metrics_threshold": f"test metrics named _at_{threshold_rule}_threshold are each fold's at its own "
                             f"threshold maximising {rule_name} on its validation predictions; 'threshold' is their median",
        "training_data": {k: training_data.get(k) for k in ("counts", "splits", "anomaly_types", "created") if k in training_data},
        "intended_use": "research; bundles trained on synthetic data are for trying the workflow only",
        "weights_storage": {
            "half_weights": half_weights,
            "max_probability_change": None if half_change is None else round(half_change, 6),
            "rule": f"float16 weights when they change no validation probability by more than {HALF_WEIGHTS_MAX_CHANGE}; "
                    "float32 otherwise, or when the run's dataset cannot be found to check",
        },
        **calibrated,
    }
    if provenance:
        meta["intended_use"] = provenance.get("intended_use", meta["intended_use"])
        meta["provenance"] = {k: v for k, v in provenance.items() if k != "intended_use"}
    return write_bundle(out, meta, cae_state, classifier_states, half_weights=half_weights)

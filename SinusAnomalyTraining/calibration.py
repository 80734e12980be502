"""A bundle's heat-map scale, label level and out-of-distribution range, fitted on its run's data.

See :mod:`SinusAnomalyLib.heatmap` for what they mean at inference. All come from the bundle's
CAE (the CAE fold's) and that fold's patients; the test patients are only measured:

* heat-map scale: residual median and 99.9th percentile over the voxels of the fold's NORMAL
  VALIDATION sinuses (which the CAE never saw);
* out-of-distribution range: min and max of the measure over the fold's TRAINING sinuses (normal
  and anomalous), widened by :data:`OOD_MARGIN`; its firing rate on the test sinuses is recorded;
* label level (cohorts with lesion masks, i.e. synthetic ones): the level of :data:`LEVELS` with
  the best median Dice against the masks on the fold's ANOMALOUS VALIDATION sinuses; then on the
  test sinuses: Dice and volume error per lesion (every truly anomalous sinus, whatever its
  verdict), per lesion kind, and whether the volume may be shown in mL (within ±50 % for more
  than half of the lesions).
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.extraction import CROP_SIZE, grid_from_affine_ras
from SinusAnomalyLib.geometry import ras_matrix_to_lps
from SinusAnomalyLib.heatmap import (NORMAL_HIGH_PERCENTILE, VOLUME_AS_ML, VOLUME_AS_REGION, VOLUME_TOLERANCE, NormalScale,
                                     OodRange, cavity_in_crop, ood_measure, raw_residuals)
from SinusAnomalyLib.reference import load_reference
from SinusAnomalyLib.residuals import resize_crops

from . import localisation, stages
from .config import RunConfig

OOD_MARGIN = 1.25
LEVELS = np.round(np.arange(0.05, 0.96, 0.025), 3)  # candidate label levels on the heat map's scale
BATCH = 16


def cae_from_state(config: RunConfig, state: dict) -> torch.nn.Module:
    """The run's CAE with a checkpoint's weights, in eval mode."""
    cae = stages.network_spec(config).cae()
    cae.load_state_dict(state)
    return cae.eval()


def residuals_of(cae: torch.nn.Module, crops: np.ndarray, crop_size: int) -> np.ndarray:
    """Raw residuals ``(N, S, S, S)`` float32 of 64^3 crops at the model's input size."""
    out = []
    for start in range(0, len(crops), BATCH):
        images = torch.from_numpy(resize_crops(np.asarray(crops[start:start + BATCH], np.float32), crop_size))[:, None]
        out.append(raw_residuals(cae, images)[:, 0].numpy())
    return np.concatenate(out) if out else np.zeros((0, crop_size, crop_size, crop_size), np.float32)


def normal_scale(residuals: np.ndarray) -> NormalScale:
    """The scale from the pooled voxels of normal sinuses' raw residuals."""
    return NormalScale(float(np.median(residuals)), float(np.percentile(residuals, NORMAL_HIGH_PERCENTILE)))


def ood_range(residuals: np.ndarray) -> OodRange:
    measures = ood_measure(torch.from_numpy(residuals))
    return OodRange(float(measures.min()), float(measures.max()), OOD_MARGIN)


def heat_in_crop(scale: NormalScale, residuals: np.ndarray, median_kernel: int) -> np.ndarray:
    """Heat maps ``(N, 64, 64, 64)`` as inference makes them (scaled, filtered, back to 1 mm)."""
    heat = scale.heat(torch.from_numpy(residuals)[:, None], median_kernel)
    return F.interpolate(heat, size=(CROP_SIZE,) * 3, mode="trilinear", align_corners=False)[:, 0].numpy()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def label_scores(heat: np.ndarray, cavity: np.ndarray, truth: np.ndarray, level: float) -> tuple[float, float]:
    """(Dice, relative volume error) of the label ``heat >= level`` inside ``cavity`` against ``truth``."""
    label = (heat >= level) & cavity
    true_volume = int(truth.sum())
    return dice(label, truth), (int(label.sum()) - true_volume) / max(true_volume, 1)


def choose_level(heats: list, cavities: list, truths: list) -> float:
    """The level of :data:`LEVELS` with the best median Dice (the lowest of equals)."""
    medians = [np.median([label_scores(h, c, t, level)[0] for h, c, t in zip(heats, cavities, truths)]) for level in LEVELS]
    return float(LEVELS[int(np.argmax(medians))])


def _summary(dices: list, errors: list) -> dict:
    within = float(np.mean(np.abs(errors) <= VOLUME_TOLERANCE))
    return {"n_lesions": len(dices), "median_dice": round(float(np.median(dices)), 4),
            "median_volume_error": round(float(np.median(errors)), 4),
            "median_abs_volume_error": round(float(np.median(np.abs(errors))), 4), "within_tolerance": round(within, 4)}


def validate_labels(level: float, heats: list, cavities: list, truths: list, kinds: list) -> dict:
    """Dice and volume error of the label against the masks, overall and per lesion kind."""
    scores = [label_scores(h, c, t, level) for h, c, t in zip(heats, cavities, truths)]
    by_kind = defaultdict(list)
    for kind, score in zip(kinds, scores):
        by_kind[kind].append(score)
    out = _summary([d for d, _ in scores], [e for _, e in scores])
    out["by_kind"] = {kind: _summary([d for d, _ in s], [e for _, e in s]) for kind, s in sorted(by_kind.items())}
    return out


def heat_levels(level: float, normal_heats: list, normal_cavities: list, lesion_heats: list, truths: list) -> dict:
    """How bright normal and anomalous test sinuses look: the share of normal cavity voxels at or
    above the level, and the share of true lesion voxels at or above it (medians over sinuses)."""
    normal = [float(((h >= level) & c).sum() / max(c.sum(), 1)) for h, c in zip(normal_heats, normal_cavities)]
    lesion = [float((h[t] >= level).mean()) for h, t in zip(lesion_heats, truths) if t.any()]
    return {"normal_cavity_share_at_level": round(float(np.median(normal)), 4) if normal else None,
            "normal_sinuses": len(normal),
            "lesion_share_at_level": round(float(np.median(lesion)), 4) if lesion else None, "lesion_sinuses": len(lesion)}


def _cavities(dataset: PreparedDataset, rows: list) -> list:
    """Each row's grown reference cavity on its crop grid, from the scan's ``extraction.json``."""
    reference = load_reference()
    out = []
    for row in rows:
        summary = json.loads((dataset.root / "scans" / row.patient / "extraction.json").read_text(encoding="utf-8"))
        matrix = ras_matrix_to_lps(np.asarray(summary["registration"]["reference_to_input_ras"], dtype=float))
        out.append(cavity_in_crop(reference, row.side, matrix, grid_from_affine_ras(summary[row.side]["affine_ras"], CROP_SIZE)))
    return out


def calibrate(dataset: PreparedDataset, fold: int, cae: torch.nn.Module, crop_size: int, median_kernel: int) -> dict:
    """The ``bundle.json`` blocks ``heatmap``, ``ood`` and (with lesion masks) ``label_validation``
    and ``residual_threshold``; see the module docstring."""
    cae = cae.eval()
    split = dataset.splits.folds[fold]
    train, val, test = set(split.train), set(split.val), set(dataset.splits.test)
    rows = {name: [r for r in dataset.manifest if r.patient in patients] for name, patients in
            (("train", train), ("val", val), ("test", test))}

    def residuals(selected: list) -> np.ndarray:
        return residuals_of(cae, dataset.crops[[r.crop_index for r in selected]], crop_size)

    val_normal = [r for r in rows["val"] if r.label == 0]
    if not val_normal or not rows["train"]:
        return {}  # nothing to calibrate on: the bundle behaves as one exported before calibration
    scale = normal_scale(residuals(val_normal))
    ranged = ood_range(residuals(rows["train"]))
    test_measures = ood_measure(torch.from_numpy(residuals(rows["test"])))
    fired = int(sum(ranged.outside(float(v)) for v in test_measures))
    meta = {"heatmap": scale.as_meta(f"{len(val_normal)} normal validation sinuses of fold {fold}"),
            "ood": {**ranged.as_meta(f"{len(rows['train'])} training sinuses of fold {fold}"),
                    "test_fired": fired, "test_sinuses": len(test_measures)}}
    cohort = Path(dataset.info.get("parameters", {}).get("labels_csv", "")).parent
    if not (cohort / "truth.json").is_file():
        return meta  # no lesion masks: the label level stays, its volume is a coarse region
    masks = localisation.lesion_masks_in_crops(cohort, dataset, CROP_SIZE)

    def lesions(selected: list) -> tuple[list, list, list, list]:
        chosen = [r for r in selected if r.label == 1 and r.sample_id in masks]
        heats = list(heat_in_crop(scale, residuals(chosen), median_kernel)) if chosen else []
        return heats, _cavities(dataset, chosen), [masks[r.sample_id] >= 0.5 for r in chosen], [r.anomaly_type for r in chosen]

    val_heats, val_cavities, val_truths, _ = lesions(rows["val"])
    test_heats, test_cavities, test_truths, kinds = lesions(rows["test"])
    if not val_heats or not test_heats:
        return meta
    level = choose_level(val_heats, val_cavities, val_truths)
    test_normal = [r for r in rows["test"] if r.label == 0]
    normal_heats = list(heat_in_crop(scale, residuals(test_normal), median_kernel)) if test_normal else []
    tested = validate_labels(level, test_heats, test_cavities, test_truths, kinds)
    meta["residual_threshold"] = level
    meta["label_validation"] = {
        "level_chosen_on": f"best median Dice over {len(val_heats)} anomalous validation sinuses of fold {fold}",
        "test": tested,
        "heat_levels_test": heat_levels(level, normal_heats, _cavities(dataset, test_normal), test_heats, test_truths),
        "volume_shown_as": VOLUME_AS_ML if tested["within_tolerance"] > 0.5 else VOLUME_AS_REGION,
        "volume_rule": f"mL when the label's volume is within ±{VOLUME_TOLERANCE:.0%} of the mask's for more than half of "
                       "the test lesions; a coarse region otherwise",
    }
    return meta

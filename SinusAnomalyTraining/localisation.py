"""How well residual maps mark lesions: voxel-wise AUROC against synthetic ground truth.

Only the synthetic cohort has lesion masks. Each anomalous sinus's mask (on its head's grid) is
resampled onto the sinus's crop grid (from the crop's affine in ``extraction.json``, so the
mirroring of right crops is included), reduced to the training crop size by area averaging, and
compared voxel by voxel with the residual map of the same sample id.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from sklearn.metrics import roc_auc_score

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.extraction import CROP_SIZE, grid_from_affine_ras
from SinusAnomalyLib.synth import LESION_LABELS

from SinusAnomalyLib.residuals import resize_crops


def lesion_masks_in_crops(cohort_dir: Path, dataset: PreparedDataset, crop_size: int, name_in_cohort=None) -> dict:
    """``{sample_id: (S, S, S) lesion fraction}`` for every anomalous sinus of ``dataset`` that is a head of the
    cohort; ``name_in_cohort`` maps a dataset's patient name to its name in the cohort's ``truth.json``
    (default: the same name; the default model's combined pools prefix the anatomy)."""
    truth = json.loads((Path(cohort_dir) / "truth.json").read_text(encoding="utf-8"))
    masks = {}
    for row in dataset.manifest:
        name = name_in_cohort(row.patient) if name_in_cohort else row.patient
        if row.label != 1 or name not in truth:
            continue
        summary = json.loads((dataset.root / "scans" / row.patient / "extraction.json").read_text(encoding="utf-8"))
        lesions = sitk.ReadImage(str(Path(cohort_dir) / truth[name]["lesion_mask"]), sitk.sitkUInt8)
        side_mask = sitk.Cast(lesions == LESION_LABELS[row.side], sitk.sitkFloat32)
        grid = grid_from_affine_ras(summary[row.side]["affine_ras"], CROP_SIZE)
        crop = sitk.Resample(side_mask, grid, sitk.Transform(), sitk.sitkLinear, 0.0)
        masks[row.sample_id] = resize_crops(sitk.GetArrayFromImage(crop).transpose(2, 1, 0)[None], crop_size)[0]
    return masks


def residual_auroc(residuals: dict, masks: dict, sample_ids=None) -> dict:
    """Voxel-wise AUROC of residual values for lesion (mask >= 0.5) vs other voxels, pooled.

    Returns ``{"auroc": pooled, "per_sinus_median": median of per-sinus AUROCs, "n_sinuses": n}``.
    """
    ids = [s for s in (sample_ids or masks) if s in masks and s in residuals]
    if not ids:
        return {"auroc": float("nan"), "per_sinus_median": float("nan"), "n_sinuses": 0}
    scores, labels, per_sinus = [], [], []
    for sid in ids:
        lesion = np.asarray(masks[sid]).ravel() >= 0.5
        values = np.asarray(residuals[sid], dtype=np.float32).ravel()
        scores.append(values)
        labels.append(lesion)
        if lesion.any() and not lesion.all():
            per_sinus.append(roc_auc_score(lesion, values))
    y, s = np.concatenate(labels), np.concatenate(scores)
    auroc = float(roc_auc_score(y, s)) if y.any() and not y.all() else float("nan")
    return {"auroc": auroc, "per_sinus_median": float(np.median(per_sinus)) if per_sinus else float("nan"), "n_sinuses": len(ids)}

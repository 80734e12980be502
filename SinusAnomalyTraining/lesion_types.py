"""Metrics per lesion type: each anomaly type's sinuses against the normal ones.

An overall AUROC can look good while a whole lesion type is missed (a model that finds thickened
and filled sinuses but not polyps or cysts); these metrics show it. The type of a sinus is its
``anomaly_type`` (labels CSV, dataset manifest, ``predictions.csv``); whether it is normal is its
0/1 label, so a label-0 row counts as normal whatever its type column says.

In a fold's metrics (:func:`fold_entries`) a type's values sit under :func:`type_key` names such
as ``auroc[polyp]``: flat float entries, so :func:`.evaluation.summarize_folds` and the metrics
files treat them like any other metric.
"""
from __future__ import annotations

import numpy as np

from SinusAnomalyLib.errors import InvalidValueError

from .evaluation import binary_metrics, check_pair

#: Per-type metrics of a fold, each under :func:`type_key`: AUROC against the normal sinuses, and
#: the share of the type called anomalous at the fold's Youden threshold (the bundles' rule).
FOLD_METRICS = ("auroc", "sensitivity_at_youden_threshold")


def by_type(anomaly_types, y_true, p, threshold: float) -> dict[str, dict]:
    """Each anomaly type's sinuses against every normal sinus.

    Args:
        anomaly_types: ``(n,)`` type names (read only where the label is 1).
        y_true: ``(n,)`` labels, 0 normal / 1 anomalous.
        p: ``(n,)`` anomalous-class scores; a sinus is called anomalous iff ``p >= threshold``.
        threshold: the decision threshold.

    Returns:
        ``{type: {"auroc", "sensitivity", "n", "n_normal"}}`` for every type among the anomalous
        sinuses, sorted by name: AUROC of that type's sinuses against the normal ones (the other
        types left out; NaN when there is no normal sinus), the share of that type's sinuses
        called anomalous, how many sinuses of the type and how many normal ones.
    """
    y, s = check_pair(y_true, p)
    types = np.asarray(anomaly_types).astype(str)
    if types.shape != y.shape:
        raise InvalidValueError(f"anomaly_types has shape {types.shape} but the labels have {y.shape}")
    normal = y == 0
    out = {}
    for kind in sorted(set(types[y == 1].tolist())):
        kept = normal | ((y == 1) & (types == kind))
        metrics = binary_metrics(y[kept], s[kept], threshold)
        out[kind] = {"auroc": metrics["auroc"], "sensitivity": metrics["recall"], "n": metrics["n_positive"],
                     "n_normal": metrics["n_negative"]}
    return out


def type_key(metric: str, anomaly_type: str) -> str:
    """The name of a per-type entry in a fold's metrics: ``auroc[polyp]``."""
    return f"{metric}[{anomaly_type}]"


def parse_type_key(key: str) -> tuple[str, str] | None:
    """``(metric, type)`` of a :func:`type_key` name of :data:`FOLD_METRICS`; None for any other key."""
    metric, bracket, rest = key.partition("[")
    if not bracket or not rest.endswith("]") or metric not in FOLD_METRICS:
        return None
    return metric, rest[:-1]


def fold_entries(anomaly_types, y_test, p_test, youden_threshold: float) -> dict:
    """A fold's per-type test metrics as flat entries: ``auroc[<type>]``,
    ``sensitivity_at_youden_threshold[<type>]`` (floats) and ``n[<type>]`` (an int: counts are not
    summarised over folds)."""
    entries = {}
    for kind, m in by_type(anomaly_types, y_test, p_test, youden_threshold).items():
        entries[type_key("auroc", kind)] = m["auroc"]
        entries[type_key("sensitivity_at_youden_threshold", kind)] = m["sensitivity"]
        entries[type_key("n", kind)] = m["n"]
    return entries


def summary_by_type(summary: dict) -> dict[str, dict]:
    """The per-type entries of a :func:`.evaluation.summarize_folds` summary, regrouped:
    ``{type: {metric: summary entry}}`` for the metrics of :data:`FOLD_METRICS`, types sorted."""
    grouped: dict[str, dict] = {}
    for key, entry in summary.items():
        parsed = parse_type_key(key)
        if parsed:
            grouped.setdefault(parsed[1], {})[parsed[0]] = entry
    return dict(sorted(grouped.items()))

"""Evaluation of normal (0) vs anomalous (1) sinus classification: metrics, thresholds, confidence intervals.

Only numbers: the files and the report are written by :mod:`.report`, the figures drawn by :mod:`.plots`.

Conventions used throughout this module
---------------------------------------
* ``y_true``: 1-D array of shape ``(n,)`` with labels 0 (normal) / 1 (anomalous); bools are accepted.
* ``p`` / ``p_anomalous``: 1-D array of shape ``(n,)`` with the model's score for class 1 (normally
  the softmax probability of "anomalous"; any finite monotone score works for AUROC / AUPRC).
  Pass ``probs[:, 1]``, not the whole ``(n, 2)`` softmax output.
* A sample is predicted anomalous when ``p >= threshold`` (the convention of the precision-recall
  curve, so a threshold taken from that curve means the same thing here).
* Undefined values are ``float('nan')``, never an exception, so a grid of runs does not stop on a
  tiny fold. ``binary_metrics`` says why in ``notes`` and sets ``single_class``. Summaries
  (:func:`mean_ci`, :func:`summarize_folds`) leave NaN values out and report how many they used.
* Metric values are Python ``float``; counts are Python ``int``. :func:`summarize_folds` relies on
  this: it summarises the float-valued entries of the per-fold dicts and leaves ints (counts),
  bools (flags) and strings alone.

The paper (Bhattacharya et al.) reports, per method and training fraction, the mean and 95 %
confidence interval over the five cross-validation folds of AUROC, AUPRC and F1 on the test folds,
with the F1 threshold chosen on the validation set. :func:`evaluate_fold` +
:func:`summarize_folds` give those numbers, and the same at Youden's threshold, the rule an
exported bundle decides with by default: each metric's name says which threshold it was taken at
(:data:`RULE_SUFFIXES`). The Student-t interval is given only from
:data:`MIN_FOLDS_FOR_T` folds on (with two, t has one degree of freedom and the interval is
meaningless). It describes the spread of the folds' scores, not the uncertainty from the test
patients: here every fold tests the same held-out patients.

For that uncertainty: :func:`ensemble_by_sinus` pools the folds' test predictions per sinus (the
mean probability of the folds that tested it, as the exported bundle predicts), so each test
patient counts once however many folds tested it; :mod:`.bootstrap` then resamples patients.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from SinusAnomalyLib.errors import InvalidValueError

__all__ = [
    "THRESHOLD_METRICS",
    "RULE_SUFFIXES",
    "check_pair",
    "as_scores",
    "binary_metrics",
    "best_f1_threshold",
    "best_youden_threshold",
    "both_classes",
    "evaluate_fold",
    "MIN_FOLDS_FOR_T",
    "mean_ci",
    "ensemble_by_sinus",
    "summarize_folds",
]

#: Fewest folds for which :func:`summarize_folds` gives a Student-t interval.
MIN_FOLDS_FOR_T = 3
#: Metrics of :func:`binary_metrics` that depend on the decision threshold.
THRESHOLD_METRICS = ("f1", "precision", "recall", "specificity", "accuracy")
#: How :func:`evaluate_fold` names the test metrics at each threshold: ``<metric><suffix>``. "f1" is
#: the threshold maximising F1 on validation (the paper's; ``threshold``), "youden" the one
#: maximising Youden's J there (``youden_threshold``; what bundles decide with by default), "0.5" 0.5.
RULE_SUFFIXES = {"f1": "_at_val_threshold", "youden": "_at_youden_threshold", "0.5": "_at_0.5"}
_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# input checking
# --------------------------------------------------------------------------------------------
def _as_labels(y_true, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise InvalidValueError(f"{name} must be 1-D (n,), got shape {y.shape}")
    if y.size == 0:
        raise InvalidValueError(f"{name} is empty")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number):
        raise InvalidValueError(f"{name} must be numeric 0/1 labels, got dtype {y.dtype}")
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise InvalidValueError(f"{name} must contain only 0 (normal) and 1 (anomalous); found {np.unique(y[bad])[:5]}")
    return y.astype(np.int64)


def as_scores(p, n: int, name: str = "p_anomalous") -> np.ndarray:
    s = np.asarray(p, dtype=np.float64)
    if s.ndim == 2 and s.shape[1] == 2:
        raise InvalidValueError(f"{name} has shape {s.shape}: pass the anomalous-class column, e.g. probs[:, 1]")
    if s.ndim != 1:
        raise InvalidValueError(f"{name} must be 1-D (n,), got shape {s.shape}")
    if s.shape[0] != n:
        raise InvalidValueError(f"{name} has {s.shape[0]} values but the labels have {n}")
    if not np.all(np.isfinite(s)):
        raise InvalidValueError(f"{name} contains NaN or infinite values")
    return s


def check_pair(y_true, p) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    return y, as_scores(p, y.shape[0])


def _ratio(num: int, den: int) -> float:
    return float(num) / float(den) if den > 0 else _NAN


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
def binary_metrics(y_true, p_anomalous, threshold: float = 0.5) -> dict:
    """Classification metrics of one set of predictions.

    Args:
        y_true: ``(n,)`` labels, 0 normal / 1 anomalous.
        p_anomalous: ``(n,)`` scores for "anomalous"; predicted anomalous iff ``p >= threshold``.
        threshold: decision threshold for the threshold-dependent metrics.

    Returns:
        dict with floats ``auroc``, ``auprc`` (average precision, scikit-learn's step-wise
        estimate), ``f1``, ``precision``, ``recall`` (sensitivity), ``specificity``, ``accuracy``,
        ``threshold``; ints ``n``, ``n_positive``, ``n_negative``, ``tp``, ``fp``, ``tn``, ``fn``;
        bool ``single_class``; list of str ``notes``.

    Undefined values (no exception):
        * one class only in ``y_true``: ``auroc`` and ``auprc`` are NaN, ``single_class`` is True
          and ``notes`` says so; ``recall`` (no positives) or ``specificity`` (no negatives) is NaN.
        * ``precision`` is 0.0 when nothing is predicted anomalous (scikit-learn's
          ``zero_division=0``; conservative when averaged over folds).
        * ``f1 = 2tp / (2tp + fp + fn)``, NaN only when that denominator is 0 (no anomalous labels
          and none predicted).

    Raises:
        ValueError: empty or mismatched inputs, labels other than 0/1, non-finite scores or threshold.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: PLC0415

    y, s = check_pair(y_true, p_anomalous)
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise InvalidValueError(f"threshold must be finite, got {threshold}")
    pred = s >= threshold
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    n_pos, n_neg = tp + fn, tn + fp
    notes: list[str] = []
    single = n_pos == 0 or n_neg == 0
    if single:
        only = "anomalous (1)" if n_neg == 0 else "normal (0)"
        notes.append(f"y_true has only {only} samples (n={y.size}): AUROC and AUPRC are undefined (NaN)")
        auroc = auprc = _NAN
    else:
        auroc = float(roc_auc_score(y, s))
        auprc = float(average_precision_score(y, s))
    return {
        "auroc": auroc,
        "auprc": auprc,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision": float(tp) / (tp + fp) if tp + fp > 0 else 0.0,
        "recall": _ratio(tp, n_pos),
        "specificity": _ratio(tn, n_neg),
        "accuracy": _ratio(tp + tn, y.size),
        "threshold": threshold,
        "n": int(y.size),
        "n_positive": n_pos,
        "n_negative": n_neg,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "single_class": bool(single),
        "notes": notes,
    }


def best_f1_threshold(y_true, p) -> float:
    """Threshold that maximises F1 on ``(y_true, p)`` (meant for the validation fold).

    Candidate thresholds are the points of the precision-recall curve (the distinct scores; a
    sample is positive iff ``p >= t``). Among candidates with equal, maximal F1 the lowest one is
    taken (the one with the higher recall, the safer side for anomaly screening). Any threshold in
    the gap between that score and the next lower score gives the same validation predictions;
    the midpoint of the gap is returned, which keeps the largest margin to the validation scores
    on either side (the PR-curve point itself sits on a validation score, so test scores a hair
    below it would flip). When the optimum predicts every sample anomalous, there is no lower
    score and the lowest score itself is returned.

    Args:
        y_true: ``(n,)`` labels 0/1.
        p: ``(n,)`` scores for "anomalous".

    Returns:
        the threshold, a float; validation F1 at it equals the maximum over the PR curve.

    Raises:
        ValueError: no anomalous sample in ``y_true`` (F1 is 0 or undefined at every threshold),
            or invalid inputs. :func:`evaluate_fold` catches this and falls back to 0.5.
    """
    from sklearn.metrics import precision_recall_curve  # noqa: PLC0415

    y, s = check_pair(y_true, p)
    if not np.any(y == 1):
        raise InvalidValueError("best_f1_threshold needs at least one anomalous (1) sample; F1 is undefined otherwise")
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return _lowest_best_with_margin(f1, thresholds, s)


def best_youden_threshold(y_true, p) -> float:
    """Threshold that maximises Youden's J = sensitivity + specificity - 1 on ``(y_true, p)``.

    The balanced operating point of a diagnostic test: unlike F1, which never counts true
    negatives, it weighs a normal sinus called anomalous as much as an anomalous one missed.
    Candidates are the ROC curve's points; ties, the margin and the all-anomalous case as in
    :func:`best_f1_threshold`.

    Raises:
        ValueError: ``y_true`` holds one class only (J is undefined), or invalid inputs.
    """
    from sklearn.metrics import roc_curve  # noqa: PLC0415

    y, s = check_pair(y_true, p)
    if not both_classes(y):
        raise InvalidValueError("best_youden_threshold needs normal (0) and anomalous (1) samples")
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # the first point (nothing anomalous) sits at +inf
    return _lowest_best_with_margin((tpr - fpr)[finite], thresholds[finite], s)


def _lowest_best_with_margin(score: np.ndarray, thresholds: np.ndarray, s: np.ndarray) -> float:
    """The lowest of the ``thresholds`` with the maximal ``score``, moved to the middle of the gap
    down to the next lower sample score (the same predictions, the widest margin on either side)."""
    ties = np.flatnonzero(score >= score.max() - 1e-12)
    t_star = float(np.min(thresholds[ties]))
    below = s[s < t_star]
    if below.size == 0:
        return t_star
    return float((t_star + below.max()) / 2.0)


def _validation_threshold(choose, rule: str, y_val, p_val, notes: list[str]) -> tuple[float, str]:
    """``choose(y_val, p_val)`` and ``"validation_<rule>"``; 0.5 and ``"fallback_0.5"`` (noted) when
    validation lacks a class the rule needs."""
    try:
        return float(choose(y_val, p_val)), f"validation_{rule}"
    except ValueError as exc:
        check_pair(y_val, p_val)  # re-raise real input errors; only a missing class falls back
        notes.append(f"validation: {exc}; {rule} threshold 0.5 used")
        return 0.5, "fallback_0.5"


def evaluate_fold(y_val, p_val, y_test, p_test) -> dict:
    """Test-set metrics of one cross-validation fold, at the F1 and the Youden threshold chosen on validation.

    Args:
        y_val, p_val: ``(n_val,)`` validation labels and anomalous-class scores (threshold choice).
        y_test, p_test: ``(n_test,)`` test labels and scores (all reported metrics).

    Returns:
        flat dict:
        * ``auroc``, ``auprc``: test, threshold-free.
        * ``threshold``: :func:`best_f1_threshold` on validation; 0.5 when validation has no
          anomalous sample (``threshold_source`` is then ``"fallback_0.5"`` instead of
          ``"validation_f1"`` and ``notes`` says so).
        * ``f1_at_val_threshold``, ``precision_at_val_threshold``, ``recall_at_val_threshold``,
          ``specificity_at_val_threshold``, ``accuracy_at_val_threshold``: test metrics at
          ``threshold`` (the paper's F1); the same five with suffix ``_at_0.5`` at 0.5.
        * ``youden_threshold``: :func:`best_youden_threshold` on validation, the rule an exported
          bundle decides with by default (0.5 when validation lacks a class;
          ``youden_threshold_source`` as above); the same five test metrics at it, suffix
          ``_at_youden_threshold``.
        * ``val_auroc``, ``val_auprc``, ``val_f1_at_threshold``: validation metrics, for reference.
        * ints ``n_val``, ``n_val_positive``, ``n_test``, ``n_test_positive`` and ``tp``, ``fp``,
          ``tn``, ``fn`` (test, at ``threshold``); bool ``single_class`` (test); list ``notes``.
    """
    notes: list[str] = []
    threshold, source = _validation_threshold(best_f1_threshold, "f1", y_val, p_val, notes)
    youden, youden_source = _validation_threshold(best_youden_threshold, "youden", y_val, p_val, notes)
    val = binary_metrics(y_val, p_val, threshold)
    at_val = binary_metrics(y_test, p_test, threshold)
    at_youden = binary_metrics(y_test, p_test, youden)
    at_half = binary_metrics(y_test, p_test, 0.5)
    notes += [f"validation: {n}" for n in val["notes"]] + [f"test: {n}" for n in at_val["notes"]]
    out: dict = {
        "auroc": at_val["auroc"],
        "auprc": at_val["auprc"],
        "threshold": float(threshold),
        "threshold_source": source,
    }
    out.update({f"{key}{RULE_SUFFIXES['f1']}": at_val[key] for key in THRESHOLD_METRICS})
    out.update(youden_threshold=float(youden), youden_threshold_source=youden_source)
    out.update({f"{key}{RULE_SUFFIXES['youden']}": at_youden[key] for key in THRESHOLD_METRICS})
    out.update({f"{key}{RULE_SUFFIXES['0.5']}": at_half[key] for key in THRESHOLD_METRICS})
    out.update(
        val_auroc=val["auroc"],
        val_auprc=val["auprc"],
        val_f1_at_threshold=val["f1"],
        n_val=val["n"],
        n_val_positive=val["n_positive"],
        n_test=at_val["n"],
        n_test_positive=at_val["n_positive"],
        tp=at_val["tp"],
        fp=at_val["fp"],
        tn=at_val["tn"],
        fn=at_val["fn"],
        single_class=at_val["single_class"],
        notes=notes,
    )
    return out


# --------------------------------------------------------------------------------------------
# confidence intervals
# --------------------------------------------------------------------------------------------
def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval of per-fold values (the paper's "mean (95 % CI)").

    ``half = t_{(1+confidence)/2, n-1} * sd / sqrt(n)`` with the sample standard deviation
    (``ddof=1``); the interval is ``(mean - half, mean + half)``, not clipped to [0, 1].

    Args:
        values: sequence of numbers (one per fold). NaN values are left out (``n`` counts the rest).
        confidence: two-sided coverage, in (0, 1).

    Returns:
        ``(mean, low, high)`` as floats. With one usable value the interval is undefined:
        ``(value, nan, nan)``. With none: ``(nan, nan, nan)``.
    """
    from scipy import stats  # noqa: PLC0415

    if not 0.0 < confidence < 1.0:
        raise InvalidValueError(f"confidence must be in (0, 1), got {confidence}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return _NAN, _NAN, _NAN
    mean = float(v.mean())
    if v.size == 1:
        return mean, _NAN, _NAN
    half = float(stats.t.ppf((1.0 + confidence) / 2.0, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def ensemble_by_sinus(sample_ids, patients, y_true, p) -> dict:
    """The folds' test predictions pooled per sinus: one row per sinus, its mean probability.

    Args:
        sample_ids, patients: ``(n,)`` sinus ids and their patients, one row per prediction (the
            test rows of every fold, concatenated; a sinus appears once per fold that tested it).
        y_true: ``(n,)`` labels 0/1; p: ``(n,)`` anomalous-class probabilities.

    Returns:
        ``{"sample_ids", "patients", "y", "p", "n_folds"}``: arrays of one row per sinus (sorted by
        sinus id); ``p`` is the mean of the sinus's predictions (the fold ensemble), ``n_folds`` how
        many were averaged. Folds that test different patients are handled alike: each sinus is
        averaged over the folds that tested it.

    Raises:
        InvalidValueError: mismatched lengths, or a sinus given two labels or two patients.
    """
    y, s = check_pair(y_true, p)
    ids = np.asarray(sample_ids).astype(str)
    owners = np.asarray(patients).astype(str)
    if ids.shape != y.shape or owners.shape != y.shape:
        raise InvalidValueError(f"sample_ids {ids.shape}, patients {owners.shape} and labels {y.shape} must have one row each")
    unique, inverse, counts = np.unique(ids, return_inverse=True, return_counts=True)
    mean_p = np.bincount(inverse, weights=s) / counts
    labels = np.zeros(unique.size, dtype=np.int64)
    labels[inverse] = y
    owner = np.empty(unique.size, dtype=owners.dtype)
    owner[inverse] = owners
    bad = np.flatnonzero((labels[inverse] != y) | (owner[inverse] != owners))
    if bad.size:
        raise InvalidValueError(f"sinus {ids[bad[0]]} has different labels or patients in different folds")
    return {"sample_ids": unique, "patients": owner, "y": labels, "p": mean_p, "n_folds": counts.astype(np.int64)}


def both_classes(y: np.ndarray) -> bool:
    """Whether 0/1 labels ``y`` hold both normal and anomalous samples."""
    return 0 < int(y.sum()) < y.size


def _is_metric_value(v) -> bool:
    return isinstance(v, (float, np.floating)) and not isinstance(v, bool)


def summarize_folds(fold_results: list[dict], confidence: float = 0.95, keys: Sequence[str] | None = None,
                    min_folds: int = MIN_FOLDS_FOR_T) -> dict:
    """Mean and Student-t CI over folds of every metric in the per-fold dicts.

    Args:
        fold_results: one dict per fold, e.g. from :func:`evaluate_fold`.
        confidence: passed to :func:`mean_ci`.
        keys: metrics to summarise; default: every key whose value is a float in at least one fold
            (ints are counts, bools flags, strings and lists notes), in order of first appearance.
        min_folds: fewest folds with a number for which the interval is given; below, ``low``
            and ``high`` are NaN (the mean alone).

    Returns:
        ``{metric: {"mean", "low", "high", "n", "n_missing"}}``; ``n`` is the number of folds that
        gave a number, ``n_missing`` those that gave NaN or lack the key.
    """
    if keys is None:
        seen: dict[str, None] = {}
        for res in fold_results:
            for k, v in res.items():
                if _is_metric_value(v):
                    seen.setdefault(k, None)
        keys = list(seen)
    summary = {}
    for k in keys:
        vals = [float(r[k]) if k in r and r[k] is not None else _NAN for r in fold_results]
        mean, low, high = mean_ci(vals, confidence)
        n = int(np.sum(~np.isnan(np.asarray(vals, dtype=np.float64)))) if vals else 0
        if n < int(min_folds):
            low = high = _NAN
        summary[k] = {"mean": mean, "low": low, "high": high, "n": n, "n_missing": len(vals) - n}
    return summary

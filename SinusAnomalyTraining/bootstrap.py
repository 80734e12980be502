"""Bootstrap confidence intervals of metrics on pooled predictions, and paired differences of two models.

:func:`bootstrap_ci` / :func:`pooled_bootstrap` with ``groups`` = the patients resample patients,
each with all their sinuses, since a patient's two sinuses are correlated (feed them the fold
ensemble of :func:`.evaluation.ensemble_by_sinus`, so each test patient counts once).
:func:`paired_bootstrap_difference` compares two models on the same test sinuses: one resample
per replicate, both models' metric on it, the interval of the difference. Conventions (labels,
scores, NaN for undefined values) as in :mod:`.evaluation`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from SinusAnomalyLib.errors import InvalidValueError

from .evaluation import THRESHOLD_METRICS, as_scores, binary_metrics, both_classes, check_pair

__all__ = ["bootstrap_ci", "pooled_bootstrap", "paired_bootstrap_difference"]

_RANKING_METRICS = ("auroc", "auprc")
_NAN = float("nan")


def _metric_function(metric: str | Callable, threshold: float) -> Callable[[np.ndarray, np.ndarray], float]:
    if callable(metric):
        return metric
    from sklearn.metrics import average_precision_score, roc_auc_score  # noqa: PLC0415

    if metric == "auroc":
        return lambda y, s: float(roc_auc_score(y, s))
    if metric == "auprc":
        return lambda y, s: float(average_precision_score(y, s))
    if metric in THRESHOLD_METRICS:
        return lambda y, s: binary_metrics(y, s, threshold)[metric]
    raise InvalidValueError(f"unknown metric {metric!r}: use a callable(y_true, p) or one of {_RANKING_METRICS + THRESHOLD_METRICS}")


def _check_bootstrap_args(confidence: float, n_boot: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise InvalidValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) < 1:
        raise InvalidValueError(f"n_boot must be >= 1, got {n_boot}")


def _bootstrap_indices(y: np.ndarray, groups, n_boot: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap resamples of :func:`bootstrap_ci` and :func:`paired_bootstrap_difference`.

    Draws ``n_boot`` resamples with ``numpy.random.default_rng(seed)`` and yields, as an index
    array into the ``(n,)`` inputs, each one that has both classes in ``y`` (the others are
    skipped, not redrawn, so fewer than ``n_boot`` may come out). With ``groups`` (``(n,)``
    patient ids) a resample draws patients with replacement, as many as there are patients, each
    with all its rows; without, it draws rows. The same ``y``, ``groups`` and ``seed`` give the
    same resamples, whichever metric is computed on them.
    """
    rng = np.random.default_rng(seed)
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != y.shape:
            raise InvalidValueError(f"groups must have shape {y.shape}, got {g.shape}")
        _, inverse = np.unique(g, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
        members = [order[bounds[i]:bounds[i + 1]] for i in range(len(bounds) - 1)]

        def draw() -> np.ndarray:
            picks = rng.integers(0, len(members), size=len(members))
            return np.concatenate([members[i] for i in picks])
    else:

        def draw() -> np.ndarray:
            return rng.integers(0, y.size, size=y.size)

    for _ in range(int(n_boot)):
        idx = draw()
        if both_classes(y[idx]):
            yield idx


def _percentile_interval(values: Sequence[float], confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(np.asarray(values, dtype=np.float64), [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(
    y_true,
    p,
    metric: str | Callable[[np.ndarray, np.ndarray], float],
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    groups=None,
    threshold: float = 0.5,
) -> tuple[float, float, float]:
    """Percentile-bootstrap confidence interval of a metric on pooled predictions.

    Args:
        y_true: ``(n,)`` labels 0/1 (e.g. the out-of-fold test predictions of all folds).
        p: ``(n,)`` anomalous-class scores.
        metric: ``callable(y_true, p) -> float`` or a name: ``"auroc"``, ``"auprc"`` or one of
            :data:`THRESHOLD_METRICS` (evaluated at ``threshold``).
        n_boot: number of bootstrap replicates drawn.
        seed: seed of ``numpy.random.default_rng``; same inputs and seed give the same interval.
        confidence: two-sided coverage; the bounds are the ``(1 -+ confidence) / 2`` quantiles of
            the replicate values.
        groups: optional ``(n,)`` patient ids. Given, each replicate draws patients with
            replacement (as many as there are patients) and takes all sinuses of each drawn
            patient, so the correlation of a patient's two sinuses widens the interval as it should.
            Without it, sinuses are drawn independently.
        threshold: decision threshold for named threshold metrics.

    Returns:
        ``(estimate, low, high)``: ``estimate`` is the metric on the full data. Replicates with one
        class only, or whose metric is NaN, are skipped (not redrawn). When the full data has one
        class only, or every replicate was skipped, the undefined parts are NaN.
    """
    y, s = check_pair(y_true, p)
    _check_bootstrap_args(confidence, n_boot)
    fn = _metric_function(metric, threshold)
    if not both_classes(y):
        return _NAN, _NAN, _NAN
    estimate = float(fn(y, s))
    reps = []
    for idx in _bootstrap_indices(y, groups, n_boot, seed):
        value = float(fn(y[idx], s[idx]))
        if not math.isnan(value):
            reps.append(value)
    if not reps:
        return estimate, _NAN, _NAN
    low, high = _percentile_interval(reps, confidence)
    return estimate, low, high


def pooled_bootstrap(
    y_true,
    p,
    groups=None,
    metrics: Sequence[str] = ("auroc", "auprc", "f1"),
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict:
    """:func:`bootstrap_ci` for several named metrics: ``{metric: {"estimate", "low", "high"}}``.

    Every metric uses the same seed, hence the same replicates. The result is the ``pooled``
    argument of :func:`SinusAnomalyTraining.report.write_metrics`.
    """
    out = {}
    for name in metrics:
        est, low, high = bootstrap_ci(y_true, p, name, n_boot=n_boot, seed=seed, confidence=confidence,
                                      groups=groups, threshold=threshold)
        out[name] = {"estimate": est, "low": low, "high": high}
    return out


def paired_bootstrap_difference(
    y_true,
    p_a,
    p_b,
    groups=None,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "auroc",
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    threshold: float = 0.5,
) -> dict:
    """Paired percentile bootstrap of ``metric(a) - metric(b)``: two models scored on the same samples.

    Each replicate resamples once (patients, with ``groups``) and computes both models' metric on
    that same resample, so what the two share (which patients are easy or hard) cancels in the
    difference; two separate :func:`bootstrap_ci` intervals that overlap say little about it.
    The resamples are those of :func:`bootstrap_ci` with the same ``y_true``, ``groups`` and
    ``seed``: each replicate's difference is the difference of the two models' replicates there.

    Args:
        y_true: ``(n,)`` labels 0/1, the same samples for both models (align them first, e.g. by
            sinus id; :func:`ensemble_by_sinus` returns its rows sorted by id).
        p_a, p_b: ``(n,)`` anomalous-class scores of model a and model b for those samples.
        groups: optional ``(n,)`` patient ids; given, replicates resample whole patients.
        metric: as in :func:`bootstrap_ci`: ``"auroc"``, ``"auprc"``, one of
            :data:`THRESHOLD_METRICS` (at ``threshold``) or ``callable(y_true, p) -> float``.
        n_boot, seed, confidence, threshold: as in :func:`bootstrap_ci`.

    Returns:
        dict of floats ``estimate`` (``metric(a) - metric(b)`` on all samples), ``low``, ``high``
        (the ``(1 -+ confidence) / 2`` quantiles of the replicate differences), ``share_positive``
        (the share of replicates with difference > 0, ties count as not positive), and int
        ``n_replicates`` (the replicates used). As in :func:`bootstrap_ci`, replicates with one
        class only, or where either model's metric is NaN, are skipped (not redrawn); when the
        full data has one class only, or every replicate was skipped, the undefined values are
        NaN and ``n_replicates`` is 0.
    """
    y, a = check_pair(y_true, p_a)
    b = as_scores(p_b, y.shape[0], "p_b")
    _check_bootstrap_args(confidence, n_boot)
    fn = _metric_function(metric, threshold)
    undefined = {"estimate": _NAN, "low": _NAN, "high": _NAN, "share_positive": _NAN, "n_replicates": 0}
    if not both_classes(y):
        return undefined
    estimate = float(fn(y, a)) - float(fn(y, b))
    diffs = []
    for idx in _bootstrap_indices(y, groups, n_boot, seed):
        yb = y[idx]
        value = float(fn(yb, a[idx])) - float(fn(yb, b[idx]))
        if not math.isnan(value):
            diffs.append(value)
    if not diffs:
        return {**undefined, "estimate": estimate}
    low, high = _percentile_interval(diffs, confidence)
    share = float(np.mean(np.asarray(diffs) > 0.0))
    return {"estimate": estimate, "low": low, "high": high, "share_positive": share, "n_replicates": len(diffs)}

"""Evaluation: metrics, F1 and Youden thresholds, evaluate_fold, fold CIs, bootstrap CIs (sinus- and
patient-level), the metrics files, the ROC/PR plot. The fold ensemble, paired bootstrap differences
and the report's paired comparisons are in test_ensemble_comparisons.py."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from SinusAnomalyTraining.bootstrap import bootstrap_ci, pooled_bootstrap
from SinusAnomalyTraining.evaluation import (
    MIN_FOLDS_FOR_T,
    best_f1_threshold,
    best_youden_threshold,
    binary_metrics,
    evaluate_fold,
    mean_ci,
    summarize_folds,
)
from SinusAnomalyTraining.plots import plot_roc_pr
from SinusAnomalyTraining.report import write_metrics



def separable(n_neg=60, n_pos=40, seed=0):
    """Negatives in [0.05, 0.35], positives in [0.65, 0.95]: any threshold in (0.35, 0.65] separates."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(n_neg, int), np.ones(n_pos, int)]
    p = np.r_[rng.uniform(0.05, 0.35, n_neg), rng.uniform(0.65, 0.95, n_pos)]
    return y, p


def noisy(n, prevalence=0.4, shift=1.0, seed=0):
    """Gaussian scores, anomalous shifted by ``shift`` standard deviations (AUROC ~ Phi(shift/sqrt 2))."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    return y, rng.normal(size=n) + shift * y


# ---------------------------------------------------------------------------- binary_metrics
def test_perfect_inverted_random_auroc():
    y, p = separable()
    assert binary_metrics(y, p)["auroc"] == 1.0
    assert binary_metrics(y, p)["auprc"] == pytest.approx(1.0)
    assert binary_metrics(y, 1 - p)["auroc"] == 0.0
    rng = np.random.default_rng(1)
    y = (rng.random(20000) < 0.3).astype(int)
    m = binary_metrics(y, rng.random(20000))
    assert m["auroc"] == pytest.approx(0.5, abs=0.02)
    assert m["auprc"] == pytest.approx(y.mean(), abs=0.02)  # random ranking: AUPRC ~ prevalence


def test_threshold_metrics_by_hand():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    p = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1, 0.5, 0.5])  # 0.5 counts as anomalous (p >= t)
    m = binary_metrics(y, p, 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 2, 2, 1)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["accuracy"] == pytest.approx(5 / 8)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert (m["n"], m["n_positive"], m["n_negative"]) == (8, 4, 4)
    assert m["single_class"] is False and m["notes"] == []
    # nothing predicted anomalous: precision 0 (zero_division=0), F1 0
    m = binary_metrics(y, p, 0.95)
    assert m["precision"] == 0.0 and m["f1"] == 0.0 and m["recall"] == 0.0 and m["specificity"] == 1.0


def test_single_class_gives_nan_and_note_not_an_error():
    p = np.array([0.1, 0.7, 0.3])
    m = binary_metrics(np.zeros(3, int), p, 0.5)
    assert math.isnan(m["auroc"]) and math.isnan(m["auprc"])
    assert m["single_class"] is True and "only normal" in m["notes"][0]
    assert math.isnan(m["recall"]) and m["specificity"] == pytest.approx(2 / 3)
    assert m["f1"] == 0.0  # one false positive: F1 defined and 0
    assert math.isnan(binary_metrics(np.zeros(3, int), p, 0.9)["f1"])  # no positives at all: undefined
    m = binary_metrics(np.ones(3, int), p, 0.5)
    assert math.isnan(m["auroc"]) and "only anomalous" in m["notes"][0]
    assert m["recall"] == pytest.approx(1 / 3) and math.isnan(m["specificity"])


@pytest.mark.parametrize(
    "y, p, msg",
    [
        ([0, 2, 1], [0.1, 0.2, 0.3], "only 0"),
        ([0, 1], [0.1, 0.2, 0.3], "has 3 values"),
        ([0, 1], [0.1, float("nan")], "NaN"),
        ([0, 1], [[0.9, 0.1], [0.2, 0.8]], r"probs\[:, 1\]"),
        ([], [], "empty"),
    ],
)
def test_bad_inputs_raise(y, p, msg):
    with pytest.raises(ValueError, match=msg):
        binary_metrics(np.asarray(y), np.asarray(p))


# ---------------------------------------------------------------------------- best_f1_threshold
def test_best_f1_threshold_recovers_separating_threshold():
    y, p = separable()
    t = best_f1_threshold(y, p)
    assert p[y == 0].max() < t <= p[y == 1].min()
    # midpoint of the gap between the classes
    assert t == pytest.approx((p[y == 0].max() + p[y == 1].min()) / 2)
    assert binary_metrics(y, p, t)["f1"] == 1.0


def test_best_f1_threshold_beats_half_and_matches_brute_force():
    y, p = noisy(300, prevalence=0.3, shift=1.5, seed=3)
    p = 1 / (1 + np.exp(-(p - 2.0)))  # miscalibrated probabilities: 0.5 is a poor threshold
    t = best_f1_threshold(y, p)
    f1_t = binary_metrics(y, p, t)["f1"]
    assert f1_t >= binary_metrics(y, p, 0.5)["f1"]
    brute = max(binary_metrics(y, p, c)["f1"] for c in np.unique(p))
    assert f1_t == pytest.approx(brute)


def test_best_f1_threshold_ties_and_edges():
    # scores 0.2 (label 1) and 0.8 (label 1), 0.5 (label 0): t=0.2 -> F1 0.8, t=0.8 -> F1 2/3, so lowest wins
    y = np.array([1, 0, 1])
    p = np.array([0.2, 0.5, 0.8])
    assert best_f1_threshold(y, p) == pytest.approx(0.2)  # everything anomalous: no lower score, t = min
    # two equal optima: t=0.1 (tp2 fp2 fn0 -> 2/3) and t=0.7 (tp1 fp0 fn1 -> 2/3): the lowest one is chosen
    y = np.array([0, 1, 0, 0, 1])
    p = np.array([0.05, 0.1, 0.3, 0.5, 0.7])
    f1s = {c: binary_metrics(y, p, c)["f1"] for c in p}
    assert f1s[0.1] == pytest.approx(f1s[0.7]) == pytest.approx(max(f1s.values()))
    assert best_f1_threshold(y, p) == pytest.approx(0.075)  # midway between 0.05 and 0.1
    with pytest.raises(ValueError, match="at least one anomalous"):
        best_f1_threshold(np.zeros(p.size, int), p)


# ---------------------------------------------------------------------------- best_youden_threshold
def test_best_youden_threshold_matches_brute_force_and_spares_more_normals_than_f1():
    y, p = noisy(300, prevalence=0.45, shift=1.5, seed=3)
    t = best_youden_threshold(y, p)

    def youden(c):
        m = binary_metrics(y, p, c)
        return m["recall"] + m["specificity"] - 1

    assert youden(t) == pytest.approx(max(youden(c) for c in np.unique(p)))
    assert binary_metrics(y, p, t)["specificity"] >= binary_metrics(y, p, best_f1_threshold(y, p))["specificity"]
    separable_y, separable_p = separable()
    assert best_youden_threshold(separable_y, separable_p) == pytest.approx(
        (separable_p[separable_y == 0].max() + separable_p[separable_y == 1].min()) / 2)
    with pytest.raises(ValueError, match="normal .* and anomalous"):
        best_youden_threshold(np.ones(p.size, int), p)


# ---------------------------------------------------------------------------- evaluate_fold
def test_evaluate_fold_keys_and_values():
    yv, pv = noisy(200, shift=1.5, seed=4)
    yt, pt = noisy(200, shift=1.5, seed=5)
    pv, pt = 1 / (1 + np.exp(-(pv - 1.5))), 1 / (1 + np.exp(-(pt - 1.5)))
    r = evaluate_fold(yv, pv, yt, pt)
    assert r["threshold"] == pytest.approx(best_f1_threshold(yv, pv))
    assert r["threshold_source"] == "validation_f1"
    assert r["f1_at_val_threshold"] == pytest.approx(binary_metrics(yt, pt, r["threshold"])["f1"])
    # the bundle's rule, reported beside the paper's F1 rule under its own name
    assert r["youden_threshold"] == pytest.approx(best_youden_threshold(yv, pv))
    assert r["youden_threshold_source"] == "validation_youden"
    at_youden = binary_metrics(yt, pt, r["youden_threshold"])
    assert (r["recall_at_youden_threshold"], r["specificity_at_youden_threshold"]) == (at_youden["recall"], at_youden["specificity"])
    assert r["f1_at_0.5"] == pytest.approx(binary_metrics(yt, pt, 0.5)["f1"])
    assert r["auroc"] == pytest.approx(binary_metrics(yt, pt)["auroc"])
    assert r["val_f1_at_threshold"] >= binary_metrics(yv, pv, 0.5)["f1"]
    assert r["n_test"] == 200 and r["n_test_positive"] == int(yt.sum())
    assert r["tp"] + r["fp"] + r["tn"] + r["fn"] == 200
    for k in ("precision", "recall", "specificity", "accuracy"):
        assert f"{k}_at_val_threshold" in r and f"{k}_at_0.5" in r
    assert r["notes"] == []


def test_evaluate_fold_tiny_folds_do_not_crash():
    r = evaluate_fold(np.zeros(3, int), np.array([0.1, 0.2, 0.3]), np.array([1, 1]), np.array([0.4, 0.6]))
    assert r["threshold"] == 0.5 and r["threshold_source"] == "fallback_0.5"
    assert r["youden_threshold"] == 0.5 and r["youden_threshold_source"] == "fallback_0.5"
    assert math.isnan(r["auroc"]) and r["single_class"] is True
    assert r["f1_at_0.5"] == pytest.approx(2 / 3)
    assert any(n.startswith("validation:") for n in r["notes"]) and any(n.startswith("test:") for n in r["notes"])
    with pytest.raises(ValueError):  # genuine input errors are not swallowed by the fallback
        evaluate_fold(np.array([0, 3]), np.array([0.1, 0.2]), np.array([0, 1]), np.array([0.1, 0.2]))


# ---------------------------------------------------------------------------- mean_ci
def test_mean_ci_by_hand():
    mean, low, high = mean_ci([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, df=2) * sd / sqrt(n)
    assert mean == 2.0
    assert low == pytest.approx(2.0 - half, abs=1e-9) and high == pytest.approx(2.0 + half, abs=1e-9)
    mean, low, high = mean_ci([0.8, 0.9, 0.85, 0.87, 0.83], confidence=0.90)
    v = np.array([0.8, 0.9, 0.85, 0.87, 0.83])
    half = 2.131846786326649 * v.std(ddof=1) / math.sqrt(5)  # t(0.95, df=4)
    assert (low, high) == pytest.approx((v.mean() - half, v.mean() + half))


def test_mean_ci_degenerate():
    assert mean_ci([0.7, 0.7, 0.7]) == (pytest.approx(0.7), pytest.approx(0.7), pytest.approx(0.7))
    mean, low, high = mean_ci([0.7])
    assert mean == 0.7 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([1.0, float("nan"), 3.0])[0] == 2.0  # NaN left out
    with pytest.raises(ValueError):
        mean_ci([1, 2], confidence=95)


def test_summarize_folds():
    folds = [
        {"fold": 0, "auroc": 0.8, "f1_at_0.5": 0.6, "n_test": 10, "single_class": False, "notes": []},
        {"fold": 1, "auroc": 0.9, "f1_at_0.5": float("nan"), "n_test": 12, "single_class": False, "notes": ["x"]},
        {"fold": 2, "auroc": 1.0, "f1_at_0.5": 0.7, "n_test": 11, "single_class": False, "notes": []},
    ]
    s = summarize_folds(folds)
    assert list(s) == ["auroc", "f1_at_0.5"]  # ints, bools, lists are not metrics
    m, lo, hi = mean_ci([0.8, 0.9, 1.0])
    assert s["auroc"] == {"mean": pytest.approx(m), "low": pytest.approx(lo), "high": pytest.approx(hi), "n": 3, "n_missing": 0}
    assert s["f1_at_0.5"]["mean"] == pytest.approx(0.65) and s["f1_at_0.5"]["n"] == 2 and s["f1_at_0.5"]["n_missing"] == 1
    assert list(summarize_folds(folds, keys=["auroc"])) == ["auroc"]


def test_t_interval_only_from_three_folds():
    assert MIN_FOLDS_FOR_T == 3
    two = summarize_folds([{"auroc": 0.8}, {"auroc": 0.9}])
    assert two["auroc"]["mean"] == pytest.approx(0.85) and two["auroc"]["n"] == 2
    assert math.isnan(two["auroc"]["low"]) and math.isnan(two["auroc"]["high"])  # t(1 df) would be +-0.32
    three = summarize_folds([{"auroc": 0.8}, {"auroc": 0.9}, {"auroc": float("nan")}, {"auroc": 1.0}])
    m, lo, hi = mean_ci([0.8, 0.9, 1.0])
    assert (three["auroc"]["low"], three["auroc"]["high"]) == (pytest.approx(lo), pytest.approx(hi))
    # a NaN fold does not count towards the three
    short = summarize_folds([{"auroc": 0.8}, {"auroc": 0.9}, {"auroc": float("nan")}])
    assert math.isnan(short["auroc"]["low"])


# ---------------------------------------------------------------------------- bootstrap
def test_bootstrap_contains_estimate_and_narrows_with_more_data():
    widths = []
    for n in (100, 1600):
        y, p = noisy(n, shift=1.0, seed=7)
        est, low, high = bootstrap_ci(y, p, "auroc", n_boot=400, seed=1)
        assert est == pytest.approx(binary_metrics(y, p)["auroc"])
        assert low <= est <= high
        widths.append(high - low)
    assert widths[1] < 0.5 * widths[0]  # ~ 1/sqrt(16) = 0.25 expected
    y, p = noisy(300, seed=2)
    assert bootstrap_ci(y, p, "auprc", n_boot=200, seed=5) == bootstrap_ci(y, p, "auprc", n_boot=200, seed=5)
    est, low, high = bootstrap_ci(y, p, "f1", n_boot=200, threshold=0.5)
    assert est == pytest.approx(binary_metrics(y, p, 0.5)["f1"]) and low <= est <= high
    est, low, high = bootstrap_ci(y, p, lambda yy, pp: float(np.mean(pp[yy == 1])), n_boot=200)
    assert low <= est <= high


def test_grouped_bootstrap_resamples_whole_patients():
    n_pat = 40
    pid = np.repeat(np.arange(n_pat), 2)
    side = np.tile([0, 1], n_pat)
    y = np.repeat(np.arange(n_pat) % 2, 2)
    p = pid + 0.1 * side  # a score identifies its patient and side
    sizes = []

    def check(yy, pp):
        patients, counts = np.unique(np.floor(pp).astype(int), return_counts=True)
        left = np.isin(np.round(pp - np.floor(pp), 1), 0.0)
        # every drawn patient comes with both sinuses, equally often
        for pt, c in zip(patients, counts):
            here = np.floor(pp).astype(int) == pt
            assert left[here].sum() == (~left[here]).sum() == c // 2
        sizes.append(yy.size)
        return 0.0

    bootstrap_ci(y, p, check, n_boot=50, seed=0, groups=pid)
    assert len(sizes) == 1 + 50 and set(sizes) == {2 * n_pat}  # the full-data estimate, then 50 replicates
    with pytest.raises(AssertionError):  # the check has teeth: sinus-level resampling splits patients
        bootstrap_ci(y, p, check, n_boot=5, seed=0)
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, p, "auroc", groups=pid[:-1])


def test_grouped_bootstrap_widens_interval_for_correlated_sinuses():
    # both sinuses of a patient have the same label and score: 400 sinuses carry the information of 200
    rng = np.random.default_rng(11)
    n_pat = 200
    y_pat = (rng.random(n_pat) < 0.4).astype(int)
    s_pat = rng.normal(size=n_pat) + 1.0 * y_pat
    y, p, pid = np.repeat(y_pat, 2), np.repeat(s_pat, 2), np.repeat(np.arange(n_pat), 2)
    _, lo_s, hi_s = bootstrap_ci(y, p, "auroc", n_boot=500, seed=3)
    _, lo_g, hi_g = bootstrap_ci(y, p, "auroc", n_boot=500, seed=3, groups=pid)
    ratio = (hi_g - lo_g) / (hi_s - lo_s)
    assert 1.2 < ratio < 1.7  # ~ sqrt(2)


def test_bootstrap_one_class():
    p = np.array([0.1, 0.5, 0.9])
    assert all(math.isnan(x) for x in bootstrap_ci(np.ones(3, int), p, "auroc", n_boot=20))
    # two samples of different classes: many replicates have one class only and are skipped
    est, low, high = bootstrap_ci(np.array([0, 1]), np.array([0.2, 0.8]), "auroc", n_boot=50)
    assert est == low == high == 1.0


def test_pooled_bootstrap():
    y, p = noisy(200, seed=9)
    pooled = pooled_bootstrap(y, p, groups=np.arange(200) // 2, metrics=("auroc", "auprc"), n_boot=100)
    assert set(pooled) == {"auroc", "auprc"}
    for v in pooled.values():
        assert v["low"] <= v["estimate"] <= v["high"]


# ---------------------------------------------------------------------------- files and plots
def test_write_metrics(tmp_path):
    folds = []
    for k in range(3):
        yv, pv = noisy(60, seed=20 + k)
        yt, pt = noisy(60, seed=30 + k)
        folds.append({"fold": k, **evaluate_fold(yv, 1 / (1 + np.exp(-pv)), yt, 1 / (1 + np.exp(-pt)))})
    folds[2]["auprc"] = float("nan")
    folds[2]["notes"] = ["first", "second"]
    summary = summarize_folds(folds)
    yt, pt = noisy(180, seed=40)
    pooled = pooled_bootstrap(yt, pt, n_boot=50)
    json_path, csv_path = write_metrics(tmp_path / "out", folds, summary, pooled)

    data = json.loads(json_path.read_text(encoding="utf-8"), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert set(data) == {"per_fold", "summary", "pooled"}
    assert len(data["per_fold"]) == 3 and data["per_fold"][2]["auprc"] is None
    assert data["summary"]["auroc"]["mean"] == pytest.approx(summary["auroc"]["mean"])
    assert data["pooled"]["auroc"]["estimate"] == pytest.approx(pooled["auroc"]["estimate"])

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[0] == "row"
    for col in ("fold", "auroc", "auprc", "threshold", "f1_at_val_threshold", "f1_at_0.5", "n_test", "notes"):
        assert col in header
    assert [r["row"] for r in rows] == ["fold_0", "fold_1", "fold_2", "mean", "ci_low", "ci_high",
                                        "pooled", "pooled_ci_low", "pooled_ci_high"]
    assert float(rows[0]["auroc"]) == pytest.approx(folds[0]["auroc"])
    assert rows[2]["auprc"] == "" and rows[2]["notes"] == "first; second"
    assert float(rows[3]["auroc"]) == pytest.approx(summary["auroc"]["mean"])
    assert float(rows[5]["f1_at_val_threshold"]) == pytest.approx(summary["f1_at_val_threshold"]["high"])
    assert float(rows[6]["auroc"]) == pytest.approx(pooled["auroc"]["estimate"])
    assert rows[3]["n_test"] == ""  # counts are not summarised
    assert not [p for p in (tmp_path / "out").iterdir() if "partial" in p.name]  # no temporary leftovers


def test_plot_roc_pr(tmp_path):
    curves = {}
    for k in range(3):
        y, p = noisy(150, shift=1.0 + 0.5 * k, seed=50 + k)
        curves[f"fold {k}"] = (y, 1 / (1 + np.exp(-p)))
    curves["tiny"] = (np.zeros(4, int), np.linspace(0, 1, 4))
    out = plot_roc_pr(curves, tmp_path / "figs" / "roc_pr.png", title="test")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000

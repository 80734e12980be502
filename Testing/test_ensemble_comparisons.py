"""The fold ensemble (per test sinus the mean of the folds that tested it, each patient counted once)
and its patient bootstrap, paired bootstrap differences between two models, and the report's paired
comparisons of residual pretraining against every other method (report.compare_to_residual,
comparison_sentence, evaluate_run's comparisons.csv and report.md). Metrics, thresholds and
intervals of single models are in test_evaluation.py."""
from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from SinusAnomalyTraining import report
from SinusAnomalyTraining.bootstrap import bootstrap_ci, paired_bootstrap_difference, pooled_bootstrap
from SinusAnomalyTraining.evaluation import binary_metrics, ensemble_by_sinus


# ---------------------------------------------------------------------------- fold ensemble
def _fold_rows(n_pat, n_folds, seed=0, same_scores=False):
    """Test rows of ``n_folds`` folds that all test the same ``n_pat`` patients (two sinuses each)."""
    rng = np.random.default_rng(seed)
    y_pat = np.arange(n_pat) % 2
    ids, patients, y, p = [], [], [], []
    base = rng.normal(size=(n_pat, 2)) + y_pat[:, None]
    for fold in range(n_folds):
        scores = base if same_scores else base + 0.3 * rng.normal(size=base.shape)
        for i in range(n_pat):
            for side in range(2):
                ids.append(f"p{i}_{side}")
                patients.append(f"p{i}")
                y.append(y_pat[i])
                p.append(1 / (1 + np.exp(-scores[i, side])))
    return np.array(ids), np.array(patients), np.array(y), np.array(p)


def test_ensemble_counts_a_patient_tested_by_several_folds_once():
    ids, patients, y, p = _fold_rows(60, 3)
    ens = ensemble_by_sinus(ids, patients, y, p)
    assert ens["y"].size == 120 and set(ens["n_folds"].tolist()) == {3}
    assert np.unique(ens["patients"]).size == 60
    i = int(np.flatnonzero(ens["sample_ids"] == "p7_1")[0])
    assert ens["p"][i] == pytest.approx(p[ids == "p7_1"].mean()) and ens["patients"][i] == "p7"
    # folds that agree exactly: the interval is that of one fold alone, not narrower
    ids, patients, y, p = _fold_rows(60, 3, same_scores=True)
    ens = ensemble_by_sinus(ids, patients, y, p)
    one = slice(0, 120)
    alone = pooled_bootstrap(y[one], p[one], groups=patients[one], n_boot=300, seed=2)
    assert pooled_bootstrap(ens["y"], ens["p"], groups=ens["patients"], n_boot=300, seed=2) == alone
    # the old pooling (each fold's copy of a patient a separate group) was ~sqrt(3) too narrow
    fold = np.repeat(np.arange(3), 120)
    old = pooled_bootstrap(y, p, groups=np.char.add(fold.astype(str), patients), n_boot=300, seed=2)
    ratio = (old["auroc"]["high"] - old["auroc"]["low"]) / (alone["auroc"]["high"] - alone["auroc"]["low"])
    assert 0.45 < ratio < 0.75


def test_ensemble_of_folds_testing_different_patients():
    """Each sinus is averaged over the folds that tested it; every patient appears once."""
    ids = np.array(["a_l", "a_r", "b_l", "b_r", "b_l", "b_r", "c_l"])
    patients = np.array(["a", "a", "b", "b", "b", "b", "c"])
    y = np.array([0, 1, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.7, 0.6, 0.8, 0.4, 0.9, 0.2])  # fold 0 tests a and b, fold 1 tests b and c
    ens = ensemble_by_sinus(ids, patients, y, p)
    assert ens["sample_ids"].tolist() == ["a_l", "a_r", "b_l", "b_r", "c_l"]
    assert ens["p"].tolist() == pytest.approx([0.1, 0.7, 0.5, 0.85, 0.2])
    assert ens["n_folds"].tolist() == [1, 1, 2, 2, 1] and ens["patients"].tolist() == ["a", "a", "b", "b", "c"]
    with pytest.raises(ValueError, match="b_l"):
        ensemble_by_sinus(ids, patients, np.array([0, 1, 1, 1, 0, 1, 0]), p)
    with pytest.raises(ValueError, match="one row each"):
        ensemble_by_sinus(ids[:-1], patients, y, p)


def test_patient_bootstrap_width_of_a_known_case():
    """Mean of a per-patient value over n patients: the 95 % percentile interval is close to
    +-1.96 sd / sqrt(n) (sd of the patient values, ddof 0), each patient's two sinuses drawn together."""
    rng = np.random.default_rng(4)
    n_pat = 400
    value = rng.uniform(0, 1, n_pat)
    y, p, groups = np.repeat(np.arange(n_pat) % 2, 2), np.repeat(value, 2), np.repeat(np.arange(n_pat), 2)
    est, low, high = bootstrap_ci(y, p, lambda yy, pp: float(pp.mean()), n_boot=4000, seed=0, groups=groups)
    expected = 2 * 1.959964 * value.std() / math.sqrt(n_pat)
    assert est == pytest.approx(value.mean())
    assert high - low == pytest.approx(expected, rel=0.08)


def _write_predictions(run, fold, method, fraction, ids, patients, y, p, rng):
    """``run/fold<k>/finetune/<method>/frac<p>/predictions.csv``: 10 validation sinuses, then the test rows given."""
    header = "sample_id,patient,side,split,label,anomaly_type,p_anomalous\n"
    rows = [f"v{fold}_{i}_l,v{fold}_{i},left,val,{i % 2},x,{0.2 + 0.6 * (i % 2) + 0.1 * rng.random():.6f}" for i in range(10)]
    rows += [f"{a},{b},left,test,{c},x,{d:.6f}" for a, b, c, d in zip(ids, patients, y, p)]
    path = run / f"fold{fold}" / "finetune" / method / f"frac{fraction}" / "predictions.csv"
    path.parent.mkdir(parents=True)
    path.write_text(header + "\n".join(rows) + "\n")


def test_report_cell_pools_the_folds_by_sinus(tmp_path):
    """A cell of three folds sharing one test set: per-fold t intervals, and a fold-ensemble
    bootstrap over the 40 test patients (not 120)."""
    from types import SimpleNamespace

    ids, patients, y, p = _fold_rows(40, 3, seed=5)
    rng = np.random.default_rng(6)
    for fold in range(3):
        test = slice(80 * fold, 80 * fold + 80)
        _write_predictions(tmp_path, fold, "none", 100, ids[test], patients[test], y[test], p[test], rng)
    seen = []
    original = report.bootstrap.pooled_bootstrap

    def spy(yy, pp, groups=None, **kwargs):
        seen.append((len(yy), len(set(groups))))
        return original(yy, pp, groups=groups, **kwargs)

    report.bootstrap.pooled_bootstrap = spy
    try:
        cell = report._evaluate_cell(tmp_path, [0, 1, 2], "none", 100, SimpleNamespace(bootstrap=100, seed=0), tmp_path / "out")
    finally:
        report.bootstrap.pooled_bootstrap = original
    assert seen == [(80, 40)]
    assert len(cell["y"]) == 80 and np.isfinite(cell["auroc"]["low"])
    ens = ensemble_by_sinus(ids, patients, y, np.round(p, 6))
    assert cell["pooled"]["auroc"]["estimate"] == pytest.approx(
        binary_metrics(ens["y"], ens["p"])["auroc"])


# ---------------------------------------------------------------------------- paired bootstrap
def _patients(n_pat, seed):
    """``n_pat`` patients with two sinuses each; patient labels alternate, both sinuses share it."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_pat), 2)
    y = np.repeat(np.arange(n_pat) % 2, 2)
    return rng, groups, y


def test_paired_difference_perfect_against_random():
    rng, groups, y = _patients(50, 0)
    perfect = 0.2 + 0.6 * y + 0.1 * rng.random(y.size)
    random = rng.random(y.size)
    for metric in ("auroc", "auprc"):
        d = paired_bootstrap_difference(y, perfect, random, groups, metric, n_boot=300, seed=1)
        assert d["estimate"] == pytest.approx(binary_metrics(y, perfect)[metric] - binary_metrics(y, random)[metric])
        assert 0.0 < d["low"] <= d["estimate"] <= d["high"]
        assert d["share_positive"] > 0.99 and d["n_replicates"] == 300
    # the other way round: the same interval mirrored, no replicate positive
    back = paired_bootstrap_difference(y, random, perfect, groups, "auroc", n_boot=300, seed=1)
    fwd = paired_bootstrap_difference(y, perfect, random, groups, "auroc", n_boot=300, seed=1)
    assert back["low"] == pytest.approx(-fwd["high"]) and back["high"] == pytest.approx(-fwd["low"])
    assert back["share_positive"] == 0.0


def test_paired_difference_of_identical_predictions_is_exactly_zero():
    rng, groups, y = _patients(30, 2)
    p = rng.random(y.size)
    for metric in ("auroc", "auprc", "f1"):
        d = paired_bootstrap_difference(y, p, p.copy(), groups, metric, n_boot=100, seed=0)
        assert d["estimate"] == d["low"] == d["high"] == 0.0
        assert d["share_positive"] == 0.0 and d["n_replicates"] == 100


def test_paired_difference_resamples_both_models_jointly():
    """Each replicate scores both models on one and the same resample, whole patients at a time,
    and those resamples are the ones bootstrap_ci draws with the same seed."""
    rng, groups, y = _patients(25, 3)
    a = np.arange(y.size, dtype=float)  # a score names its row
    b = a + 1000.0
    calls = []

    def record(yy, pp):
        calls.append(np.asarray(pp % 1000.0, dtype=int))
        return float(pp.mean())

    d = paired_bootstrap_difference(y, a, b, groups, record, n_boot=40, seed=7)
    assert len(calls) == 2 * (1 + 40)  # the full data, then 40 replicates, each model once
    for rows_a, rows_b in zip(calls[0::2], calls[1::2]):
        assert np.array_equal(rows_a, rows_b)  # the same rows for both models
        patients, counts = np.unique(groups[rows_a], return_counts=True)
        for pt, c in zip(patients, counts):  # every drawn patient with both sinuses, equally often
            assert np.bincount(rows_a[groups[rows_a] == pt] % 2).tolist() == [c // 2, c // 2]
    assert len({tuple(r) for r in calls[2::2]}) > 30  # and the replicates differ from one another
    assert [d["estimate"], d["low"], d["high"]] == pytest.approx([-1000.0] * 3) and d["share_positive"] == 0.0
    # against a constant model, the difference's interval is bootstrap_ci's interval of the other
    mean = lambda yy, pp: float(pp.mean())  # noqa: E731
    p = rng.random(y.size)
    d = paired_bootstrap_difference(y, p, np.zeros_like(p), groups, mean, n_boot=200, seed=5)
    assert (d["estimate"], d["low"], d["high"]) == bootstrap_ci(y, p, mean, n_boot=200, seed=5, groups=groups)


def test_paired_interval_excludes_zero_where_unpaired_intervals_overlap():
    """Model b is model a with every anomalous score raised a little: never worse on any resample,
    so the paired difference lies below 0, while the two separate intervals overlap widely (most
    of their width comes from which patients are drawn, which the pairing cancels)."""
    rng, groups, y = _patients(80, 4)
    a = np.repeat(rng.normal(size=80), 2) + 0.3 * rng.normal(size=y.size) + 1.0 * y
    b = a + 0.25 * y
    _, lo_a, hi_a = bootstrap_ci(y, a, "auroc", n_boot=400, seed=0, groups=groups)
    est_b, lo_b, hi_b = bootstrap_ci(y, b, "auroc", n_boot=400, seed=0, groups=groups)
    assert lo_b < hi_a and est_b < hi_a  # unpaired: overlapping, b's estimate inside a's interval
    d = paired_bootstrap_difference(y, a, b, groups, "auroc", n_boot=400, seed=0)
    assert d["high"] < 0.0 and d["share_positive"] == 0.0
    assert d["high"] - d["low"] < 0.5 * (hi_a - lo_a)


def test_paired_difference_undefined_cases():
    p = np.array([0.1, 0.5, 0.9])
    d = paired_bootstrap_difference(np.ones(3, int), p, p[::-1], metric="auroc", n_boot=20)
    assert all(math.isnan(d[k]) for k in ("estimate", "low", "high", "share_positive")) and d["n_replicates"] == 0
    # two sinuses of different classes: replicates with one class only are skipped, as in bootstrap_ci
    d = paired_bootstrap_difference(np.array([0, 1]), np.array([0.2, 0.8]), np.array([0.8, 0.2]), metric="auroc", n_boot=50)
    assert d["estimate"] == d["low"] == d["high"] == 1.0 and d["share_positive"] == 1.0
    assert 0 < d["n_replicates"] < 50
    with pytest.raises(ValueError, match="p_b"):
        paired_bootstrap_difference(np.array([0, 1]), np.array([0.2, 0.8]), np.array([0.2]))
    with pytest.raises(ValueError, match="groups"):
        paired_bootstrap_difference(np.array([0, 1]), np.array([0.2, 0.8]), np.array([0.3, 0.7]), groups=[0])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap_difference(np.array([0, 1]), np.array([0.2, 0.8]), np.array([0.3, 0.7]), metric="auc")


# ---------------------------------------------------------------------------- report comparisons
def _cell(method, fraction, ids, y, p, patients=None):
    ids = np.asarray(ids)
    return {"method": method, "fraction": fraction, "sample_ids": ids, "y": np.asarray(y), "p": np.asarray(p, float),
            "patients": np.asarray(patients) if patients is not None else np.char.add("p", ids)}


def test_comparisons_refuse_different_test_sinuses_and_need_residual():
    from types import SimpleNamespace

    from SinusAnomalyLib.errors import StageInputError

    config = SimpleNamespace(bootstrap=20, seed=0)
    ref = _cell("residual", 10, ["a", "b", "c", "d"], [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8])
    other = _cell("none", 10, ["a", "b", "c", "e"], [0, 1, 0, 1], [0.5] * 4)
    with pytest.raises(StageInputError, match=r"different sinuses \(1 only in 'residual', e.g. \['d'\]; 1 only in 'none'"):
        report.compare_to_residual([ref, other], config)
    relabelled = _cell("none", 10, ["a", "b", "c", "d"], [0, 1, 1, 1], [0.5] * 4)
    with pytest.raises(StageInputError, match="different labels or patients"):
        report.compare_to_residual([ref, relabelled], config)
    assert report.compare_to_residual([other, _cell("simclr", 10, ["a"], [0], [0.5])], config) == []
    assert report.compare_to_residual([ref], config) == []
    # rows in another order are aligned by sinus id, not by position
    shuffled = _cell("none", 10, ["d", "c", "b", "a"], [1, 0, 1, 0], [0.8, 0.2, 0.9, 0.1])
    rows = report.compare_to_residual([ref, shuffled], config)
    assert [(r["metric"], r["difference"], r["low"], r["high"]) for r in rows] == [("auroc", 0.0, 0.0, 0.0),
                                                                                  ("auprc", 0.0, 0.0, 0.0)]


def test_comparison_sentence_forms():
    def row(other, d, low, high):
        return {"metric": "auroc", "other_method": other, "difference": d, "low": low, "high": high}

    assert report.comparison_sentence(10, [row("none", 0.3, 0.2, 0.4), row("simclr", 0.05, 0.01, 0.09)]) == (
        "At 10 % labels, residual pretraining leads every other method (best other: simclr, AUROC difference 0.050, "
        "95 % paired interval [0.010, 0.090]: the interval excludes 0).")
    assert report.comparison_sentence(20, [row("none", 0.3, 0.2, 0.4), row("byol", -0.02, -0.08, 0.04)]) == (
        "At 20 % labels, residual pretraining does not lead (best other: byol, AUROC difference -0.020, "
        "95 % paired interval [-0.080, 0.040]: the interval includes 0).")
    # the closest method is beaten beyond its interval, another one is not: named, no contradiction
    assert report.comparison_sentence(100, [row("none", 0.08, -0.01, 0.2), row("ae", 0.05, 0.02, 0.07)]) == (
        "At 100 % labels, residual pretraining does not lead (best other: ae, AUROC difference 0.050, "
        "95 % paired interval [0.020, 0.070]: the interval excludes 0; the paired interval does not lie above 0 "
        "against none (0.080, [-0.010, 0.200])).")
    assert "cannot be compared" in report.comparison_sentence(10, [row("none", float("nan"), float("nan"), float("nan"))])


def test_evaluate_run_writes_paired_comparisons(tmp_path):
    """Three folds testing the same 60 patients, three methods, two fractions: comparisons.csv has
    one row per (fraction, other method, metric) with the paired bootstrap of the fold ensembles,
    and report.md a table and a sentence per fraction."""
    import copy
    from types import SimpleNamespace

    from conftest import TINY_CONFIG
    from SinusAnomalyTraining.config import config_from_dict

    n_pat = 60
    rng = np.random.default_rng(8)
    ids = np.array([f"s{i:02d}_{side}" for i in range(n_pat) for side in "lr"])
    patients = np.repeat([f"s{i:02d}" for i in range(n_pat)], 2)
    y = np.repeat(np.arange(n_pat) % 2, 2)
    shared = rng.normal(size=y.size)
    logits = {"residual": shared + 2.5 * y, "none": shared + 0.4 * y, "simsiam": rng.normal(size=y.size) + 0.2 * y}
    for fraction in (10, 100):
        for fold in range(3):
            noise = 0.2 * rng.normal(size=y.size)
            for method in ("none", "residual", "simsiam"):
                # at 100 %, SimSiam predicts exactly what residual pretraining predicts
                source = "residual" if (method == "simsiam" and fraction == 100) else method
                p = 1 / (1 + np.exp(-(logits[source] + noise)))
                _write_predictions(tmp_path, fold, method, fraction, ids, patients, y, p, rng)
    config = copy.deepcopy(TINY_CONFIG)
    config.update(methods=["none", "residual", "simsiam"], fractions=[10, 100], folds=[0, 1, 2],
                  pretext={"simsiam": {}}, evaluate={"bootstrap": 100})
    config = config_from_dict(config)
    dataset = SimpleNamespace(splits=SimpleNamespace(folds=[0, 1, 2]), unlabelled=[])
    result = report.evaluate_run(config, dataset, tmp_path)

    with open(tmp_path / "evaluation" / "comparisons.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["fraction", "other_method", "metric", "difference", "low", "high", "share_positive",
                             "n_test_patients", "n_replicates"]
    assert [(r["fraction"], r["other_method"], r["metric"]) for r in rows] == [
        (f, m, k) for f in ("10", "100") for m in ("none", "simsiam") for k in ("auroc", "auprc")]
    assert {r["n_test_patients"] for r in rows} == {"60"} and {r["n_replicates"] for r in rows} == {"100"}
    cells = {(r["method"], r["fraction"]): r for r in result["table"]}
    for r in rows:
        ref, other = cells[("residual", int(r["fraction"]))], cells[(r["other_method"], int(r["fraction"]))]
        expected = paired_bootstrap_difference(ref["y"], ref["p"], other["p"], ref["patients"], r["metric"],
                                               n_boot=100, seed=config.seed)
        for key in ("low", "high", "share_positive"):
            assert float(r[key]) == pytest.approx(expected[key])
        assert float(r["difference"]) == pytest.approx(
            binary_metrics(ref["y"], ref["p"])[r["metric"]] - binary_metrics(other["y"], other["p"])[r["metric"]])
    by = {(r["fraction"], r["other_method"], r["metric"]): r for r in rows}
    for other in ("none", "simsiam"):  # at 10 % residual pretraining is far ahead of both
        assert float(by[("10", other, "auroc")]["low"]) > 0 and float(by[("10", other, "auroc")]["share_positive"]) > 0.99
    same = by[("100", "simsiam", "auroc")]
    assert float(same["difference"]) == float(same["low"]) == float(same["high"]) == 0.0
    assert float(same["share_positive"]) == 0.0

    text = (tmp_path / "evaluation" / "report.md").read_text(encoding="utf-8")
    assert "## Residual pretraining against every other method (paired patient bootstrap)" in text
    assert "### 10 % labels (60 test patients)" in text and "### 100 % labels (60 test patients)" in text
    best = min(("none", "simsiam"), key=lambda m: float(by[("10", m, "auroc")]["difference"]))
    b = by[("10", best, "auroc")]
    assert (f"At 10 % labels, residual pretraining leads every other method (best other: {best}, AUROC difference "
            f"{float(b['difference']):.3f}, 95 % paired interval [{float(b['low']):.3f}, {float(b['high']):.3f}]: "
            "the interval excludes 0).") in text
    assert ("At 100 % labels, residual pretraining does not lead (best other: simsiam, AUROC difference 0.000, "
            "95 % paired interval [0.000, 0.000]: the interval includes 0).") in text
    assert "| simsiam | 0.000 | [0.000, 0.000] | 0.00 | 0.000 | [0.000, 0.000] | 0.00 |" in text
    assert "## Per lesion type against the normal test sinuses" in text and "| residual | 100 % | x | 60 |" in text
    assert result["comparisons"] and not list((tmp_path / "evaluation").glob("*partial*"))
    # the table's F1 is the one at the F1 threshold (the validation-chosen one), named so in report and results.csv
    assert "| F1 at the F1 threshold (folds) | F1 at 0.5 (folds) |" in text
    with open(tmp_path / "evaluation" / "results.csv", newline="") as f:
        table_rows = list(csv.DictReader(f))
    assert "f1_at_val_threshold_mean" in table_rows[0] and "f1_mean" not in table_rows[0]
    assert float(table_rows[0]["f1_at_val_threshold_mean"]) == pytest.approx(result["table"][0]["f1_at_val_threshold"]["mean"])

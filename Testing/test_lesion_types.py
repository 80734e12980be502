"""Metrics per lesion type on a hand-made cohort, and where they appear: the fold metrics, the
evaluation report and its metrics files."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from SinusAnomalyTraining import lesion_types, report
from SinusAnomalyTraining.evaluation import summarize_folds

# Fold 0's test sinuses. Four normal ones (one with a stray type name: its 0 label makes it normal),
# two polyps, three retention cysts.
TYPES = ["normal", "normal", "polyp", "normal", "polyp", "polyp", "retention_cyst", "retention_cyst", "retention_cyst"]
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 1]
P_FOLD0 = [0.1, 0.2, 0.3, 0.6, 0.3, 0.7, 0.65, 0.9, 0.55]
# Fold 1's scores for the same sinuses
P_FOLD1 = [0.1, 0.2, 0.3, 0.4, 0.45, 0.35, 0.6, 0.7, 0.8]


def test_by_type_by_hand():
    got = lesion_types.by_type(TYPES, LABELS, P_FOLD0, threshold=0.5)
    assert list(got) == ["polyp", "retention_cyst"]
    # polyp 0.3 beats normals 0.1 and 0.2, ties 0.3 (half), loses to 0.6: 2.5 of 4; polyp 0.7 beats all 4
    assert got["polyp"]["auroc"] == pytest.approx(6.5 / 8)
    assert got["polyp"]["sensitivity"] == 0.5  # only 0.7 reaches 0.5
    # cysts 0.65 and 0.9 beat all 4 normals, 0.55 beats 3
    assert got["retention_cyst"]["auroc"] == pytest.approx(11 / 12)
    assert got["retention_cyst"]["sensitivity"] == 1.0
    assert (got["polyp"]["n"], got["retention_cyst"]["n"], got["polyp"]["n_normal"]) == (2, 3, 4)


def test_by_type_without_normal_sinuses_has_no_auroc_but_a_sensitivity():
    got = lesion_types.by_type(["polyp", "polyp"], [1, 1], [0.2, 0.8], threshold=0.5)
    assert math.isnan(got["polyp"]["auroc"]) and got["polyp"]["sensitivity"] == 0.5
    with pytest.raises(ValueError, match="anomaly_types"):
        lesion_types.by_type(["polyp"], [1, 1], [0.2, 0.8], threshold=0.5)


def test_fold_entries_are_summarised_over_folds_like_any_metric():
    folds = [lesion_types.fold_entries(TYPES, LABELS, p, 0.5) for p in (P_FOLD0, P_FOLD1)]
    assert folds[0]["n[polyp]"] == 2 and lesion_types.parse_type_key("n[polyp]") is None
    grouped = lesion_types.summary_by_type(summarize_folds(folds))
    assert list(grouped) == ["polyp", "retention_cyst"]
    # fold 1: polyps 0.45 (beats 4) and 0.35 (beats 3) -> 7/8, none at 0.5; cysts beat every normal
    assert grouped["polyp"]["auroc"]["mean"] == pytest.approx((6.5 / 8 + 7 / 8) / 2)
    assert grouped["polyp"]["sensitivity_at_youden_threshold"]["mean"] == pytest.approx(0.25)
    assert grouped["retention_cyst"]["auroc"]["mean"] == pytest.approx((11 / 12 + 1.0) / 2)
    assert grouped["retention_cyst"]["sensitivity_at_youden_threshold"]["mean"] == 1.0


def _write_predictions(run, fold, p_test):
    """Validation: normals 0.1, 0.2 and anomalous 0.8, 0.9, so Youden's J picks 0.5 (the middle of
    the gap); test: the hand-made sinuses above."""
    rows = ["sample_id,patient,side,split,label,anomaly_type,p_anomalous"]
    rows += [f"v{i},v{i},left,val,{int(p > 0.5)},{'polyp' if p > 0.5 else 'normal'},{p}" for i, p in enumerate((0.1, 0.2, 0.8, 0.9))]
    rows += [f"t{i},t{i},left,test,{y},{kind},{p}" for i, (kind, y, p) in enumerate(zip(TYPES, LABELS, p_test))]
    path = run / f"fold{fold}" / "finetune" / "none" / "frac100" / "predictions.csv"
    path.parent.mkdir(parents=True)
    path.write_text("\n".join(rows) + "\n")


def test_report_and_metrics_files_carry_the_per_type_metrics(tmp_path):
    for fold, p in enumerate((P_FOLD0, P_FOLD1)):
        _write_predictions(tmp_path, fold, p)
    cell = report._evaluate_cell(tmp_path, [0, 1], "none", 100, SimpleNamespace(bootstrap=20, seed=0), tmp_path / "out")
    assert cell["test_sinuses_by_type"] == {"polyp": 2, "retention_cyst": 3}
    saved = json.loads((tmp_path / "out" / "none_frac100" / "metrics.json").read_text(encoding="utf-8"))
    assert [f["youden_threshold"] for f in saved["per_fold"]] == [0.5, 0.5]
    assert saved["per_fold"][1]["sensitivity_at_youden_threshold[polyp]"] == 0.0
    assert saved["summary"]["auroc[retention_cyst]"]["mean"] == pytest.approx((11 / 12 + 1.0) / 2)

    text = "\n".join(report.per_type_lines([cell]))
    assert "## Per lesion type against the normal test sinuses" in text
    # two folds: the mean alone, no interval
    assert "| none | 100 % | polyp | 2 | 0.84 | 0.25 |" in text
    assert "| none | 100 % | retention_cyst | 3 | 0.96 | 1.00 |" in text
    # every anomalous sinus together: fold 0 calls 0.7, 0.65, 0.9, 0.55 anomalous (4 of 5), fold 1 three cysts (3 of 5)
    assert f"| none | 100 % | all anomalous | 5 | {cell['auroc']['mean']:.2f} | 0.70 |" in text
    # normals called normal: fold 0 three of four (0.6 is called anomalous), fold 1 all four
    assert "none 100 %: 0.88." in text

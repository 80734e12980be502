"""Patient-level splits: no patient in two splits, stratified, nested label fractions, deterministic."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib.splits import (
    Sample,
    load_splits,
    make_splits,
    patient_of_sample,
    patient_stratum,
    save_splits,
)

ANOMALY_TYPES = ("mucosal_thickening", "polyp", "retention_cyst", "fully_occupied")


def cohort(n_patients: int, anomaly_rate: float = 0.3, seed: int = 0, one_sided_every: int = 0) -> list[Sample]:
    """A random labelled cohort; every ``one_sided_every``-th patient lists only its left sinus."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n_patients):
        sides = ("left",) if one_sided_every and i % one_sided_every == 0 else ("left", "right")
        for side in sides:
            anomalous = rng.random() < anomaly_rate
            kind = ANOMALY_TYPES[rng.integers(len(ANOMALY_TYPES))] if anomalous else "normal"
            samples.append(Sample(f"P{i:03d}", side, int(anomalous), kind))
    return samples


def patients_of(samples):
    return {s.patient for s in samples}


def assert_patient_level(splits, samples):
    """No patient in two of test/train/val; val sets partition the non-test patients."""
    everyone = patients_of(samples)
    test = set(splits.test)
    non_test = everyone - test
    union_val: set[str] = set()
    for fold in splits.folds:
        train, val = set(fold.train), set(fold.val)
        assert not train & test and not val & test and not train & val
        assert train | val == non_test
        assert val, "every fold needs validation patients"
        assert not union_val & val, "validation sets must be disjoint"
        union_val |= val
    assert union_val == non_test


@pytest.mark.parametrize("n_patients,n_folds,test_fraction,one_sided", [
    (200, 5, 0.2, 0), (57, 5, 0.2, 4), (12, 3, 0.2, 0), (6, 5, 0.0, 2), (7, 2, 0.5, 0),
])
def test_no_patient_is_in_two_splits(n_patients, n_folds, test_fraction, one_sided):
    samples = cohort(n_patients, one_sided_every=one_sided)
    splits = make_splits(samples, n_folds=n_folds, test_fraction=test_fraction)
    assert_patient_level(splits, samples)
    assert len(splits.folds) == n_folds
    expected_test = 0 if test_fraction == 0 else max(1, int(np.floor(test_fraction * n_patients + 0.5)))
    assert len(splits.test) == expected_test
    val_sizes = [len(f.val) for f in splits.folds]
    assert max(val_sizes) - min(val_sizes) <= 1


def test_two_sinuses_of_a_patient_share_every_split():
    samples = cohort(40)
    splits = make_splits(samples, n_folds=4)
    for fold in splits.folds:
        for key, ids in fold.labelled.items():
            assert {patient_of_sample(i) for i in ids} <= set(fold.train)
    # Each patient is in exactly one of test / val_k for every fold k's view.
    for fold in splits.folds:
        places = Counter()
        for p in splits.test:
            places[p] += 1
        for p in fold.train + fold.val:
            places[p] += 1
        assert set(places.values()) == {1}


def test_stratification_spreads_every_stratum_evenly():
    samples = cohort(300, anomaly_rate=0.25, seed=3)
    splits = make_splits(samples, n_folds=5, seed=1)
    by_patient: dict[str, list[Sample]] = {}
    for s in samples:
        by_patient.setdefault(s.patient, []).append(s)
    coarse = {p: patient_stratum(ss)[0] for p, ss in by_patient.items()}  # anomalous sides 0/1/2
    for level in (0, 1, 2):
        per_fold = [sum(coarse[p] == level for p in fold.val) for fold in splits.folds]
        assert max(per_fold) - min(per_fold) <= 1, (level, per_fold)
    overall = np.mean([s.label for s in samples])
    label_of = {s.sample_id: s.label for s in samples}
    parts = [splits.test] + [fold.val for fold in splits.folds]
    for part in parts:
        ratio = np.mean([label_of[s.sample_id] for p in part for s in by_patient[p]])
        assert abs(ratio - overall) < 0.05, (ratio, overall)


def test_rare_anomaly_types_do_not_break_stratification():
    samples = cohort(20, anomaly_rate=0.0)
    samples[0] = Sample("P000", "left", 1, "polyp")  # one single anomalous sinus
    splits = make_splits(samples, n_folds=5, test_fraction=0.2)
    assert_patient_level(splits, samples)


def test_label_fractions_are_nested_and_keep_the_anomaly_ratio():
    samples = cohort(120, anomaly_rate=0.3, seed=5, one_sided_every=7)
    label_of = {s.sample_id: s.label for s in samples}
    fractions = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)
    splits = make_splits(samples, n_folds=5, fractions=fractions)
    assert splits.fractions == [10, 20, 40, 60, 80, 100]
    for fold in splits.folds:
        train = set(fold.train)
        train_ids = sorted(s.sample_id for s in samples if s.patient in train)
        n_per_label = Counter(label_of[i] for i in train_ids)
        assert list(fold.labelled) == ["10", "20", "40", "60", "80", "100"]
        assert fold.labelled["100"] == train_ids
        previous: set[str] = set()
        for f in fractions:
            chosen = set(fold.labelled[f"{f * 100:g}"])
            assert previous <= chosen
            previous = chosen
            counts = Counter(label_of[i] for i in chosen)
            for label, n in n_per_label.items():
                assert counts[label] == max(1, int(np.floor(f * n + 0.5)))


def test_smallest_fraction_keeps_at_least_one_sinus_per_label():
    samples = cohort(12, anomaly_rate=0.1, seed=2)
    splits = make_splits(samples, n_folds=3, fractions=(0.01, 1.0))
    for fold in splits.folds:
        train_labels = {s.label for s in samples if s.patient in fold.train}
        labels = {s.label for s in samples if s.sample_id in set(fold.labelled["1"])}
        assert labels == train_labels


def test_splits_are_deterministic_by_seed():
    samples = cohort(80)
    a = make_splits(samples, seed=7).to_json()
    b = make_splits(list(reversed(samples)), seed=7).to_json()
    c = make_splits(samples, seed=8).to_json()
    assert a == b
    assert a != c


@pytest.mark.parametrize("kwargs,message", [
    ({"n_folds": 5, "test_fraction": 0.2, "n_patients": 5}, "too few patients for 5 folds"),
    ({"n_folds": 1}, "at least 2"),
    ({"test_fraction": 1.0}, "test fraction"),
    ({"fractions": (0.0, 1.0)}, "label fractions must be above 0 %"),
    ({"fractions": (0.1, 0.1)}, "repeated"),
])
def test_bad_parameters_raise_dataset_error(kwargs, message):
    samples = cohort(kwargs.pop("n_patients", 30))
    with pytest.raises(DatasetError, match=message):
        make_splits(samples, **kwargs)


def test_bad_samples_raise_dataset_error():
    with pytest.raises(DatasetError, match="listed more than once"):
        make_splits(cohort(10) + [Sample("P000", "left", 0)], n_folds=2)
    with pytest.raises(DatasetError, match="side must be"):
        make_splits([Sample("P000", "middle", 0)] + cohort(10), n_folds=2)


def test_save_and_load_round_trip(tmp_path):
    samples = [Sample(f"site_a_{i}", side, int(i % 3 == 0), "polyp" if i % 3 == 0 else "normal")
               for i in range(15) for side in ("left", "right")]
    splits = make_splits(samples, n_folds=3, fractions=(0.125, 0.5, 1.0))
    path = tmp_path / "splits.json"
    save_splits(splits, path)
    loaded = load_splits(path)
    assert loaded.to_json() == splits.to_json()
    assert loaded.fractions == [12.5, 50, 100]
    assert list(loaded.folds[0].labelled) == ["12.5", "50", "100"]
    assert patient_of_sample("site_a_3_right") == "site_a_3"


def _move_to_val(fold: dict, patient: str) -> None:
    fold["train"].remove(patient)
    fold["val"].append(patient)


def _tampered(tmp_path, change):
    splits = make_splits(cohort(20), n_folds=4)
    data = splits.to_json()
    change(data)
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change,message", [
    (lambda d: d["folds"][0]["train"].append(d["test"][0]), "shares patients with the test set"),
    (lambda d: _move_to_val(d["folds"][1], d["folds"][0]["val"][0]), "validation patient in folds"),
    (lambda d: d["folds"][0]["train"].append(d["folds"][0]["val"][0]), "both train and val"),
    (lambda d: d["folds"][0]["labelled"]["10"].append(d["test"][0] + "_left"), "non-training sinuses"),
    (lambda d: d["folds"][0]["labelled"].__setitem__("20", []), "not a superset"),
    (lambda d: d.__setitem__("n_folds", 3), "n_folds is 3"),
    (lambda d: d.pop("test"), "not a valid splits file"),
])
def test_load_splits_rejects_inconsistent_files(tmp_path, change, message):
    path = _tampered(tmp_path, change)
    with pytest.raises(DatasetError, match=message) as info:
        load_splits(path)
    assert str(path) in str(info.value)


def test_load_splits_reports_missing_and_corrupt_files(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_splits(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DatasetError, match="cannot be read"):
        load_splits(bad)

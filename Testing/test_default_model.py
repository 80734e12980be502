"""The default model: the shipped bundle, classify without --model, and the recipe's pooling of anatomies."""
from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import SimpleITK as sitk

from SinusAnomalyLib import modelstore
from SinusAnomalyLib.bundle import load_bundle
from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib.inference import classify
from SinusAnomalyLib.modelstore import DEFAULT_BUNDLE, default_bundle, is_default_bundle
from SinusAnomalyTraining.cli import main
from SinusAnomalyTraining.defaultmodel import PoolSizes, anatomy_of, combine_pools, link_cached_scans, make_pools, patient_name
from test_bundle import bundle_path, head  # noqa: F401  (fixtures: a tiny trained bundle, a synthetic head)

MAX_SHIPPED_MB = 25


def test_the_default_bundle_ships_small_and_says_what_it_is():
    assert default_bundle() == DEFAULT_BUNDLE, f"the extension ships {DEFAULT_BUNDLE}"
    assert DEFAULT_BUNDLE.stat().st_size <= MAX_SHIPPED_MB * 1e6
    bundle = load_bundle(DEFAULT_BUNDLE)  # loads without unpickling (bundlefile's checks)
    meta = bundle.meta
    assert "not a medical device" in meta["intended_use"].lower()
    assert "synthetic" in meta["provenance"]["trained_on"]
    assert meta["provenance"]["command"].startswith("sinus-anomaly train-default")
    assert meta["provenance"]["commit"] not in ("", "unknown")
    assert len(bundle.classifiers) >= 2 and 0.0 < bundle.threshold < 1.0


def test_the_default_bundle_classifies_a_head(head):  # noqa: F811
    case, path = head
    result = classify(path, load_bundle(DEFAULT_BUNDLE))
    for side in ("left", "right"):
        r = result.sides[side]
        assert r.assessable and 0.0 <= r.probability <= 1.0
        assert (r.verdict == "anomalous") == (r.probability >= r.threshold)


def test_classify_without_model_uses_the_default_bundle_and_says_so(bundle_path, head, tmp_path, monkeypatch, caplog):  # noqa: F811
    shipped = tmp_path / "Models" / DEFAULT_BUNDLE.name
    shipped.parent.mkdir()
    shipped.write_bytes(bundle_path.read_bytes())
    monkeypatch.setattr(modelstore, "DEFAULT_BUNDLE", shipped)
    _, path = head
    with caplog.at_level(logging.WARNING):
        assert main(["classify", str(path), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert any("default bundle" in m and str(shipped) in m for m in caplog.messages)
    model = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))["model"]
    assert model["default"] is True and model["path"] == str(shipped)
    # a bundle named on the command line is not the default, even a copy of it
    assert main(["classify", str(path), "--model", str(bundle_path), "--out", str(tmp_path / "named")]) == 0
    assert json.loads((tmp_path / "named" / "result.json").read_text(encoding="utf-8"))["model"]["default"] is False
    assert is_default_bundle(shipped) and not is_default_bundle(bundle_path)


def test_classify_without_model_and_without_default_fails_clearly(head, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(modelstore, "DEFAULT_BUNDLE", tmp_path / "absent.sabundle")
    _, path = head
    assert main(["classify", str(path), "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err
    assert "no default bundle" in err and "--model" in err and str(tmp_path / "absent.sabundle") in err
    assert not (tmp_path / "out").exists()


def _fake_pool(root, kinds):
    """A pool folder as synth writes it (truth.json, images, unlabelled.csv) with placeholder images."""
    (root / "images").mkdir(parents=True)
    truth = {}
    for i, (left, right) in enumerate(kinds):
        patient = f"synth-{i:04d}"
        (root / "images" / f"{patient}.nii.gz").write_bytes(b"image")
        truth[patient] = {"image": f"images/{patient}.nii.gz", "pose": {"contrast": "t2"},
                          "left": {"anomaly": left, **({"lesion": {"volume_ml": 0.2, "size_mm": 6.0}} if left else {})},
                          "right": {"anomaly": right}}
    (root / "truth.json").write_text(json.dumps(truth))
    (root / "images" / "synth-u0000.mha").write_bytes(b"image")
    (root / "unlabelled.csv").write_text("patient,image\nsynth-u0000,synth-u0000.mha\n")
    return root


def test_pools_of_anatomies_combine_without_name_clashes(tmp_path):
    pools = {"reference": _fake_pool(tmp_path / "a", [("polyp", None)]),
             "colin27": _fake_pool(tmp_path / "b", [(None, None), ("retention_cyst", "fully_occupied")])}
    paths = combine_pools(pools, tmp_path / "out")
    labels = list(csv.DictReader(open(paths["labels"])))
    assert len(labels) == 6 and len({(r["patient"], r["side"]) for r in labels}) == 6
    assert {r["patient"] for r in labels} == {patient_name("reference", "synth-0000"), patient_name("colin27", "synth-0000"),
                                              patient_name("colin27", "synth-0001")}
    for r in labels:
        assert (paths["images"] / r["image"]).read_bytes() == b"image"
        assert (r["label"] == "1") == (r["anomaly_type"] != "normal")
    sinuses = {(r["patient"], r["side"]): r for r in csv.DictReader(open(paths["sinuses"]))}
    polyp = sinuses[(patient_name("reference", "synth-0000"), "left")]
    assert (polyp["anatomy"], polyp["contrast"], polyp["anomaly_type"], polyp["lesion_size_mm"]) == ("reference", "t2", "polyp", "6.0")
    unlabelled = list(csv.DictReader(open(paths["unlabelled"])))
    assert [r["image"] for r in unlabelled] == ["reference-synth-u0000.mha", "colin27-synth-u0000.mha"]
    # one anatomy only
    only = combine_pools(pools, tmp_path / "only", ["colin27"])
    assert {anatomy_of(r["patient"]) for r in csv.DictReader(open(only["labels"]))} == {"colin27"}
    assert anatomy_of(patient_name("single_subject_t1", "synth-u0003")) == "single_subject_t1"
    with pytest.raises(ValueError):
        patient_name("an-atomy", "synth-0000")  # its anatomy could not be read back


def test_cached_scans_are_shared_not_copied(tmp_path):
    source = tmp_path / "src" / "scans" / "p1"
    source.mkdir(parents=True)
    (source / "crops.npz").write_bytes(np.arange(4).tobytes())
    assert link_cached_scans(tmp_path / "src", tmp_path / "dst", ["p1", "absent"]) == 1
    linked = tmp_path / "dst" / "scans" / "p1" / "crops.npz"
    assert linked.read_bytes() == (source / "crops.npz").read_bytes()
    assert link_cached_scans(tmp_path / "src", tmp_path / "dst", ["p1"]) == 0  # already there: left as it is


def test_a_focal_pool_joins_its_anatomy_under_names_of_its_own(tmp_path):
    pools = {"colin27": _fake_pool(tmp_path / "a", [(None, "polyp")]),
             "colin27-focal": _fake_pool(tmp_path / "b", [("retention_cyst", None)])}
    paths = combine_pools(pools, tmp_path / "out")
    labels = {(r["patient"], r["side"]): r["anomaly_type"] for r in csv.DictReader(open(paths["labels"]))}
    assert labels == {("colin27-synth-0000", "left"): "normal", ("colin27-synth-0000", "right"): "polyp",
                      ("colin27-focal-synth-0000", "left"): "retention_cyst", ("colin27-focal-synth-0000", "right"): "normal"}
    assert {anatomy_of(patient) for patient, _ in labels} == {"colin27"}
    assert {r["anatomy"] for r in csv.DictReader(open(paths["sinuses"]))} == {"colin27"}
    assert (paths["images"] / "colin27-focal-synth-0000.nii.gz").read_bytes() == b"image"
    assert len(list(csv.DictReader(open(combine_pools(pools, tmp_path / "one", ["colin27"])["labels"])))) == 4
    with pytest.raises(DatasetError, match="at least 0"):
        make_pools(tmp_path, PoolSizes(labelled=1, unlabelled=0, focal=-1), ("colin27",), progress=False)


def test_focal_pools_hold_only_polyps_and_cysts_and_share_their_first_heads(tmp_path):
    pools = make_pools(tmp_path / "w", PoolSizes(labelled=1, unlabelled=0, focal=3), ("reference",), progress=False)
    assert pools["reference-focal"] == tmp_path / "w" / "focal-train-pools" / "reference"
    truth = json.loads((pools["reference-focal"] / "truth.json").read_text())
    assert {entry[side]["anomaly"] for entry in truth.values() for side in ("left", "right")} - {None} <= {"polyp", "retention_cyst"}
    shorter = make_pools(tmp_path / "v", PoolSizes(labelled=1, unlabelled=0, focal=1), ("reference",), progress=False)
    first = json.loads((shorter["reference-focal"] / "truth.json").read_text())
    assert first["synth-0000"]["left"] == truth["synth-0000"]["left"]  # a head's draws do not depend on the pool's size


def test_pools_made_by_two_processes_are_those_made_by_one(tmp_path):
    sizes = PoolSizes(labelled=2, unlabelled=1)
    anatomies = ("reference", "robex_atlas")
    one = make_pools(tmp_path / "one", sizes, anatomies, progress=False, workers=1)
    two = make_pools(tmp_path / "two", sizes, anatomies, progress=False, workers=2)
    assert list(two) == list(anatomies)
    for anatomy in anatomies:
        for table in ("truth.json", "unlabelled_truth.json", "labels.csv", "unlabelled.csv"):
            assert (two[anatomy] / table).read_text(encoding="utf-8") == (one[anatomy] / table).read_text(encoding="utf-8")
        heads = sorted(p.name for p in (one[anatomy] / "images").iterdir())
        assert len(heads) == 3 and heads == sorted(p.name for p in (two[anatomy] / "images").iterdir())
        first = heads[0]
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(one[anatomy] / "images" / first))),
                              sitk.GetArrayFromImage(sitk.ReadImage(str(two[anatomy] / "images" / first))))


def test_a_failing_pool_stops_the_parallel_making_with_its_error(tmp_path):
    (tmp_path / "pools" / "reference").mkdir(parents=True)
    (tmp_path / "pools" / "reference" / "synth.json").write_text(json.dumps({"seed": 999, "params": {}}))
    with pytest.raises(DatasetError, match="seed"):
        make_pools(tmp_path, PoolSizes(labelled=1, unlabelled=0), ("reference", "robex_atlas"), progress=False, workers=2)

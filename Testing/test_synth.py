"""The synthetic cohort: determinism, ground truth consistency, variety, resume, CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from SinusAnomalyLib.errors import SinusAnomalyError
from SinusAnomalyLib.imageio import read_image
from SinusAnomalyLib.reference import SIDES, load_reference
from SinusAnomalyLib.synth import ANOMALY_TYPES, LESION_LABELS, SynthParams, generate_cohort, make_case
from SinusAnomalyTraining.cli import main


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(out, n_cases=4, seed=3, progress=False, previews=2)
    return out


def _world_ras(image: sitk.Image, index) -> np.ndarray:
    p = np.asarray(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))
    return np.diag([-1.0, -1.0, 1.0]) @ p


def test_same_seed_same_head_other_seed_other_head():
    reference = load_reference()
    a = make_case("a", np.random.default_rng([5, 0]), reference=reference)
    b = make_case("a", np.random.default_rng([5, 0]), reference=reference)
    c = make_case("a", np.random.default_rng([5, 1]), reference=reference)
    assert np.array_equal(sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(b.image))
    assert all(np.array_equal(a.centers_ras[s], b.centers_ras[s]) for s in SIDES)
    assert a.anomalies == b.anomalies
    assert a.image.GetSize() != c.image.GetSize() or not np.array_equal(
        sitk.GetArrayViewFromImage(a.image), sitk.GetArrayViewFromImage(c.image))


@pytest.mark.parametrize("kind", ANOMALY_TYPES)
def test_each_lesion_type_is_bright_tissue_inside_the_sinus(kind):
    reference = load_reference()
    case = make_case("x", np.random.default_rng(11), SynthParams(max_rotation_deg=0, max_translation_mm=0),
                     anomalies={"left": kind, "right": None}, reference=reference)
    labels = sitk.GetArrayViewFromImage(case.lesion_labels)
    image = sitk.GetArrayViewFromImage(case.image)
    left = labels == LESION_LABELS["left"]
    assert left.sum() > 20, kind
    assert not (labels == LESION_LABELS["right"]).any()
    # lesion voxels lie near the left centre, which is on the patient's left (negative x)
    idx = np.argwhere(left.transpose(2, 1, 0))
    points = np.array([_world_ras(case.lesion_labels, i) for i in idx[:: max(1, len(idx) // 200)]])
    assert np.linalg.norm(points - case.centers_ras["left"], axis=1).max() < 30.0
    assert case.centers_ras["left"][0] < case.centers_ras["right"][0]
    # brighter than the air of the normal right sinus around its centre
    right_centre = np.round(case.image.TransformPhysicalPointToContinuousIndex(
        (np.diag([-1.0, -1.0, 1.0]) @ case.centers_ras["right"]).tolist())).astype(int)
    air = image[right_centre[2] - 1:right_centre[2] + 2, right_centre[1] - 1:right_centre[1] + 2, right_centre[0] - 1:right_centre[0] + 2]
    assert np.median(image[left]) > 3 * np.median(air), kind


def test_cohort_files_agree(cohort):
    with open(cohort / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["patient", "side", "label", "anomaly_type", "image"]
    assert len(rows) == 8
    truth = json.loads((cohort / "truth.json").read_text())
    assert sorted(truth) == [f"synth-{i:04d}" for i in range(4)]
    for row in rows:
        entry = truth[row["patient"]]
        # a copy: a view of a temporary image would read freed memory (this test was flaky so)
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(cohort / entry["lesion_mask"])))
        has_lesion = bool((mask == LESION_LABELS[row["side"]]).any())
        assert has_lesion == (row["label"] == "1"), row
        assert (row["anomaly_type"] == "normal") == (row["label"] == "0")
        image = read_image(cohort / "images" / row["image"])
        assert image.GetSize() == sitk.ReadImage(str(cohort / entry["lesion_mask"])).GetSize()
        spacing = np.asarray(image.GetSpacing())
        assert np.all((spacing >= 0.9 - 1e-6) & (spacing <= 2.0 + 1e-6))
    assert any(name.endswith(".nrrd") for name in (r["image"] for r in rows))  # case 3 is NRRD


def test_previews_are_written(cohort):
    previews = sorted((cohort / "previews").glob("*.png"))
    assert 1 <= len(previews) <= 2
    assert previews[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rerun_resumes_without_rewriting(cohort):
    images = sorted((cohort / "images").iterdir())
    stamps = {p: p.stat().st_mtime_ns for p in images}
    generate_cohort(cohort, n_cases=4, seed=3, progress=False)
    assert {p: p.stat().st_mtime_ns for p in images} == stamps


def test_cli_writes_a_cohort_and_rejects_bad_arguments(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "c"), "--cases", "1", "--seed", "1", "--previews", "0"]) == 0
    assert (tmp_path / "c" / "labels.csv").is_file()
    assert "1 synthetic heads" in capsys.readouterr().out
    assert main(["synth", "--out", str(tmp_path / "d"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err


def test_unknown_anomaly_type_is_an_error():
    with pytest.raises(SinusAnomalyError, match="unknown anomaly type"):
        make_case("x", np.random.default_rng(0), anomalies={"left": "tumour", "right": None})


def test_prepare_with_real_extraction_on_the_cohort(cohort, tmp_path):
    """synth -> prepare end to end: every scan extracted, crops cached, centres near the truth."""
    from SinusAnomalyLib.dataset import load_dataset, prepare_dataset

    report = prepare_dataset(cohort / "images", cohort / "labels.csv", tmp_path / "ds", n_folds=2, seed=0, progress=False)
    assert report.n_scans_prepared == 4 and not report.failures
    dataset = load_dataset(tmp_path / "ds")
    assert dataset.crops.shape == (8, 64, 64, 64)
    crops = np.asarray(dataset.crops, dtype=np.float32)
    assert crops.min() >= 0 and crops.max() <= 1 and crops.std() > 0.1
    truth = json.loads((cohort / "truth.json").read_text())
    for patient in truth:
        found = json.loads((tmp_path / "ds" / "scans" / patient / "extraction.json").read_text())
        for side in SIDES:
            error = np.linalg.norm(np.subtract(found[side]["center_ras_mm"], truth[patient][side]["center_ras_mm"]))
            assert error < 10.0, (patient, side, error)


def test_resume_with_other_settings_is_refused(cohort):
    with pytest.raises(SinusAnomalyError, match="other settings"):
        generate_cohort(cohort, n_cases=4, seed=4, progress=False)

"""Dataset preparation: labels validation, per-scan cache and resume, failures, consistent outputs.

Extraction is replaced by a fast fake (random crops, no registration); the real pipeline is
exercised end to end elsewhere.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os

import numpy as np
import pytest

import SinusAnomalyLib.dataset as dataset
from SinusAnomalyLib.dataset import load_dataset, prepare_dataset
from SinusAnomalyLib.labels import read_labels
from SinusAnomalyLib.errors import DatasetError, ImageError
from SinusAnomalyTraining.commands import prepare as prepare_command

HEADER = ("patient", "side", "label", "anomaly_type")


def fake_crop(image_name: str, side: str) -> np.ndarray:
    """Deterministic per image and side, so cached crops can be checked against it."""
    seed = sum(map(ord, f"{image_name}/{side}"))
    return np.random.default_rng(seed).random((64, 64, 64), dtype=np.float32)


class FakeExtraction:
    def __init__(self, path):
        self.path = path

    def arrays(self):
        return {side: fake_crop(self.path.name, side) for side in ("left", "right")}

    def summary(self):
        return {
            "source": str(self.path),
            "left": {"center_ras_mm": [30.0, 10.0, -20.0]},
            "right": {"center_ras_mm": [-30.0, 10.0, -20.0]},
            "registration": {"quality": 0.75},
        }


class FakeExtractor:
    """Stands in for ``extract_sinuses``: counts calls, fails for chosen patients."""

    def __init__(self, bad=(), crash_at_call=None):
        self.calls: list[str] = []
        self.bad = set(bad)
        self.crash_at_call = crash_at_call

    def __call__(self, path):
        patient = path.name.split(".")[0]
        self.calls.append(patient)
        if self.crash_at_call is not None and len(self.calls) == self.crash_at_call:
            raise KeyboardInterrupt
        if patient in self.bad:
            raise ImageError(path, "is an empty or constant image;\n a head MRI is needed")
        return FakeExtraction(path)


@pytest.fixture
def extractor(monkeypatch):
    fake = FakeExtractor()
    monkeypatch.setattr(dataset, "extract_sinuses", fake)
    return fake


def write_labels(path, rows, header=HEADER):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def make_cohort(tmp_path, n_patients=12, anomalous_every=3):
    """Dummy image files P000.nii.gz ... and a labels CSV; P001 lists only its left sinus."""
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(n_patients):
        patient = f"P{i:03d}"
        (images / f"{patient}.nii.gz").write_bytes(b"head " + patient.encode())
        for side in ("left", "right"):
            if patient == "P001" and side == "right":
                continue
            anomalous = (i + (side == "right")) % anomalous_every == 0
            rows.append((patient, side, int(anomalous), "polyp" if anomalous else "normal"))
    labels = write_labels(tmp_path / "labels.csv", rows)
    return images, labels


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_prepare_writes_consistent_manifest_crops_and_splits(tmp_path, extractor):
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False)

    assert report.n_scans_extracted == 12 and report.n_scans_reused == 0 and not report.failures
    assert report.n_sinuses == 23 and report.n_normal + report.n_anomalous == 23
    manifest = read_csv(out / "manifest.csv")
    assert [r["sample_id"] for r in manifest][:3] == ["P000_left", "P000_right", "P001_left"]
    assert "P001_right" not in {r["sample_id"] for r in manifest}
    crops = np.load(out / "crops.npy", mmap_mode="r")
    assert crops.shape == (23, 64, 64, 64) and crops.dtype == np.float16
    for index, row in enumerate(manifest):
        assert int(row["crop_index"]) == index
        assert row["crop_file"] == f"scans/{row['patient']}/crops.npz" and row["crop_key"] == row["side"]
        assert float(row["registration_quality"]) == 0.75
        expected = fake_crop(f"{row['patient']}.nii.gz", row["side"])
        assert np.allclose(crops[index], expected, atol=1e-3)
        with np.load(out / row["crop_file"]) as cached:
            assert np.array_equal(cached[row["crop_key"]], crops[index])

    loaded = load_dataset(out)
    assert len(loaded.manifest) == 23 and loaded.crops.shape[0] == 23
    for fold in loaded.splits.folds:
        rows = loaded.rows_of_patients(fold.train)
        assert {loaded.manifest[i].patient for i in rows} == set(fold.train)
        assert len(loaded.rows_of_samples(fold.labelled["100"])) == len(rows)

    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert info["counts"]["sinuses"] == 23 and info["counts"]["failures"] == 0
    assert info["parameters"]["n_folds"] == 3 and info["parameters"]["fractions"] == [10, 20, 40, 60, 80, 100]
    summary = json.loads((out / "scans" / "P000" / "extraction.json").read_text(encoding="utf-8"))
    assert summary["registration"]["quality"] == 0.75 and summary["cache"]["image"].endswith("P000.nii.gz")
    assert read_csv(out / "failures.csv") == []


def test_a_sinus_not_in_view_is_left_out_and_said_why(tmp_path, monkeypatch):
    """P002's right sinus lies mostly outside its scan: no crop of it is trained on."""
    class PartlyInView(FakeExtraction):
        def summary(self):
            summary = super().summary()
            if self.path.name.startswith("P002"):
                summary["right"].update(coverage=0.31, assessable=False)
            return summary

    monkeypatch.setattr(dataset, "extract_sinuses", PartlyInView)
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    ids = {r["sample_id"] for r in read_csv(out / "manifest.csv")}
    assert "P002_right" not in ids and "P002_left" in ids and report.n_sinuses == 22
    failures = read_csv(out / "failures.csv")
    assert [(f["patient"], "right sinus not assessable: coverage 0.31" in f["error"]) for f in failures] == [("P002", True)]


def test_rerun_reuses_cache_and_redoes_only_changed_images(tmp_path, extractor):
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    prepare_dataset(images, labels, out, n_folds=3, progress=False)
    first_splits = (out / "splits.json").read_text(encoding="utf-8")
    assert len(extractor.calls) == 12

    extractor.calls.clear()
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert extractor.calls == [] and report.n_scans_reused == 12
    assert (out / "splits.json").read_text(encoding="utf-8") == first_splits

    changed = images / "P005.nii.gz"
    changed.write_bytes(b"a different, longer head scan")
    os.utime(changed, ns=(changed.stat().st_atime_ns, changed.stat().st_mtime_ns + 10**9))
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert extractor.calls == ["P005"]
    assert report.n_scans_extracted == 1 and report.n_scans_reused == 11


def test_incomplete_cache_is_redone(tmp_path, extractor):
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    prepare_dataset(images, labels, out, n_folds=3, progress=False)
    (out / "scans" / "P002" / "crops.npz").unlink()
    (out / "scans" / "P003" / "crops.npz").write_bytes(b"truncated")
    (out / "scans" / "P004" / "extraction.json").write_text("{")
    extractor.calls.clear()
    prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert extractor.calls == ["P002", "P003", "P004"]


def test_bad_scan_is_skipped_and_recorded(tmp_path, monkeypatch, caplog):
    fake = FakeExtractor(bad={"P004"})
    monkeypatch.setattr(dataset, "extract_sinuses", fake)
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    with caplog.at_level(logging.WARNING, logger="SinusAnomalyLib.dataset"):
        report = prepare_dataset(images, labels, out, n_folds=3, progress=False)

    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith("skipped P004: ") and "\n" not in skipped[0]
    assert [f.patient for f in report.failures] == ["P004"]
    failures = read_csv(out / "failures.csv")
    assert [f["patient"] for f in failures] == ["P004"]
    assert failures[0]["image"].endswith("P004.nii.gz") and "constant image" in failures[0]["error"]
    manifest = read_csv(out / "manifest.csv")
    assert "P004" not in {r["patient"] for r in manifest} and len(manifest) == 21
    assert not (out / "scans" / "P004" / "crops.npz").exists()
    assert "P004" not in load_dataset(out).splits.patients()


def test_a_failed_scan_is_not_tried_again_until_its_image_changes(tmp_path, monkeypatch, caplog):
    fake = FakeExtractor(bad={"P004"})
    monkeypatch.setattr(dataset, "extract_sinuses", fake)
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    first = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    fake.calls.clear()
    with caplog.at_level(logging.WARNING, logger="SinusAnomalyLib.dataset"):
        again = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert fake.calls == [] and again.failures == first.failures and again.n_scans_reused == 11
    assert any(m.startswith("skipped P004 (failed before; unchanged since): ") for m in caplog.messages)
    assert [f["patient"] for f in read_csv(out / "failures.csv")] == ["P004"]

    fake.bad.clear()  # the scan is replaced by a usable one
    fixed = images / "P004.nii.gz"
    fixed.write_bytes(b"a usable head scan now")
    os.utime(fixed, ns=(fixed.stat().st_atime_ns, fixed.stat().st_mtime_ns + 10**9))
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert fake.calls == ["P004"] and report.failures == [] and report.n_scans_extracted == 1
    assert not (out / "scans" / "P004" / "failure.json").exists()


def test_all_scans_failing_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(dataset, "extract_sinuses", FakeExtractor(bad={f"P{i:03d}" for i in range(12)}))
    images, labels = make_cohort(tmp_path)
    with pytest.raises(DatasetError, match="none of the 12 scans"):
        prepare_dataset(images, labels, tmp_path / "dataset", n_folds=3, progress=False)
    assert len(read_csv(tmp_path / "dataset" / "failures.csv")) == 12


def test_interruption_leaves_only_complete_scans_and_resumes(tmp_path, monkeypatch):
    images, labels = make_cohort(tmp_path)
    out = tmp_path / "dataset"
    monkeypatch.setattr(dataset, "extract_sinuses", FakeExtractor(crash_at_call=4))
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(images, labels, out, n_folds=3, progress=False)

    for name in ("manifest.csv", "crops.npy", "splits.json", "dataset.json"):
        assert not (out / name).exists()
    assert sorted(p.parent.name for p in out.glob("scans/*/crops.npz")) == ["P000", "P001", "P002"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name]
    with pytest.raises(DatasetError, match="not a complete prepared dataset"):
        load_dataset(out)

    resumed = FakeExtractor()
    monkeypatch.setattr(dataset, "extract_sinuses", resumed)
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert resumed.calls == [f"P{i:03d}" for i in range(3, 12)]
    assert report.n_scans_reused == 3 and report.n_sinuses == 23


def test_other_errors_propagate(tmp_path, monkeypatch):
    def broken(path):
        raise RuntimeError("bug")

    monkeypatch.setattr(dataset, "extract_sinuses", broken)
    images, labels = make_cohort(tmp_path)
    with pytest.raises(RuntimeError, match="bug"):
        prepare_dataset(images, labels, tmp_path / "dataset", n_folds=3, progress=False)


def test_too_few_patients_for_the_folds_fails_before_extracting(tmp_path, extractor):
    images, labels = make_cohort(tmp_path, n_patients=4)
    with pytest.raises(DatasetError, match="too few patients for 5 folds"):
        prepare_dataset(images, labels, tmp_path / "dataset", progress=False)
    assert extractor.calls == []


# ----------------------------------------------------------------------------- labels CSV


def test_labels_with_image_column_and_dicom_folder(tmp_path):
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    (images / "sub" / "scan_a.nrrd").write_bytes(b"x")
    (images / "B").mkdir()  # a DICOM folder found by its name
    (images / "B" / "slice1.dcm").write_bytes(b"x")
    labels = write_labels(tmp_path / "labels.csv", [
        ("A", "Right", "1.0", "retention_cyst", "sub/scan_a.nrrd"),
        ("A", "left", "0", "", ""),
        ("B", "left", "1", "", ""),
    ], header=(" Patient", "side", "label", "anomaly_type", "image"))
    rows = read_labels(labels, images)
    assert [(r.patient, r.side, r.label, r.anomaly_type) for r in rows] == [
        ("A", "left", 0, "normal"), ("A", "right", 1, "retention_cyst"), ("B", "left", 1, "unspecified")]
    assert rows[0].image == rows[1].image == (images / "sub" / "scan_a.nrrd").resolve()
    assert rows[2].image == (images / "B").resolve()


@pytest.mark.parametrize("header,rows,message", [
    (("patient", "laterality", "label"), [], "missing column\\(s\\) side, anomaly_type"),
    (HEADER, [("P000", "left", "2", "polyp")], "line 2: label must be 0 or 1, not '2'"),
    (HEADER, [("P000", "left", "yes", "polyp")], "label must be 0 or 1"),
    (HEADER, [("P000", "center", "0", "normal")], "line 2: side must be 'left' or 'right'"),
    (HEADER, [("P000", "left", "0", "normal"), ("P000", "left", "1", "polyp")], "line 3: left sinus of patient P000 is already listed on line 2"),
    (HEADER, [("P999", "left", "0", "normal")], "no image in .* for patient\\(s\\) P999"),
    (HEADER, [("", "left", "0", "normal")], "patient is empty"),
    (HEADER, [("../x", "left", "0", "normal")], "cannot be used as a folder name"),
    (HEADER, [], "header but no rows"),
    (HEADER + ("image",), [("P000", "left", "0", "normal", "missing.nii.gz")], "image 'missing.nii.gz' of patient P000 not found"),
])
def test_invalid_labels_name_the_problem(tmp_path, header, rows, message):
    images = tmp_path / "images"
    images.mkdir()
    (images / "P000.nii.gz").write_bytes(b"x")
    labels = write_labels(tmp_path / "labels.csv", rows, header=header)
    with pytest.raises(DatasetError, match=message) as info:
        read_labels(labels, images)
    assert str(labels) in str(info.value)


def test_unreadable_or_missing_labels_and_ambiguous_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with pytest.raises(DatasetError, match="labels file does not exist"):
        read_labels(tmp_path / "nope.csv", images)
    binary = tmp_path / "binary.csv"
    binary.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_labels(binary, images)
    with pytest.raises(DatasetError, match="images folder does not exist"):
        read_labels(binary, tmp_path / "no_images")
    (images / "P000.nii.gz").write_bytes(b"x")
    (images / "P000.nrrd").write_bytes(b"x")
    labels = write_labels(tmp_path / "labels.csv", [("P000", "left", "0", "normal")])
    with pytest.raises(DatasetError, match="P000 has several images .*P000.nii.gz, P000.nrrd"):
        read_labels(labels, images)


# ----------------------------------------------------------------------------- command


def test_prepare_command_prints_summary(tmp_path, extractor, capsys):
    images, labels = make_cohort(tmp_path)
    parser = argparse.ArgumentParser()
    prepare_command.add_arguments(parser)
    args = parser.parse_args(["--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "ds"),
                              "--folds", "3", "--fractions", "25,50,100", "--no-progress", "--workers", "1"])  # the fake: this process only
    assert prepare_command.run(args) == 0
    printed = capsys.readouterr().out
    assert "12 of 12 prepared" in printed and "fold 2 val" in printed and "test" in printed
    splits = json.loads((tmp_path / "ds" / "splits.json").read_text(encoding="utf-8"))
    assert splits["fractions"] == [25, 50, 100] and len(splits["folds"]) == 3


def test_a_change_to_the_extraction_code_extracts_every_scan_again(tmp_path, extractor, monkeypatch):
    """The cache key follows what makes the crops (extraction's source and parameters, SimpleITK,
    the reference head), not a hand-bumped version; the rest of the library does not count."""
    import shutil

    from SinusAnomalyLib import scancache

    sources = tmp_path / "SinusAnomalyLib"
    shutil.copytree(scancache.PACKAGE_DIR, sources, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(scancache, "PACKAGE_DIR", sources)
    scancache.extraction_fingerprint.cache_clear()
    try:
        assert {"extraction.py", "registration.py", "reference.py", "imageio.py"} <= {p.name for p in scancache.extraction_sources()}
        assert not [p for p in scancache.extraction_sources() if p.stem == "synth" or p.parent.name == "synth"]
        images, labels = make_cohort(tmp_path)
        out = tmp_path / "dataset"
        prepare_dataset(images, labels, out, n_folds=3, progress=False)
        first = json.loads((out / "dataset.json").read_text(encoding="utf-8"))["extraction"]

        def edit(name: str) -> list[str]:
            (sources / name).write_text((sources / name).read_text(encoding="utf-8") + "\nA_CHANGED_PARAMETER = 2\n")
            scancache.extraction_fingerprint.cache_clear()
            extractor.calls.clear()
            prepare_dataset(images, labels, out, n_folds=3, progress=False)
            return extractor.calls

        assert edit("synth/lesions.py") == []  # not part of extraction: every scan reused
        assert len(edit("registration.py")) == 12
        assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["extraction"] != first
    finally:
        scancache.extraction_fingerprint.cache_clear()  # the next test computes it from the real sources


def test_extraction_in_two_processes_gives_the_dataset_of_one(tmp_path):
    """Real extraction of two synthetic heads and one unreadable file, by two worker processes and by one."""
    from SinusAnomalyLib.synth import generate_cohort

    cohort = generate_cohort(tmp_path / "cohort", n_cases=2, seed=5, progress=False, previews=0)
    (cohort / "images" / "broken.nii.gz").write_bytes(b"not an image")
    rows = [row for row in read_csv(cohort / "labels.csv")]
    labels = write_labels(tmp_path / "labels.csv", [(r["patient"], r["side"], r["label"], r["anomaly_type"]) for r in rows]
                          + [("broken", side, 0, "normal") for side in ("left", "right")])
    made = {}
    for workers in (2, 1):
        out = tmp_path / f"dataset-{workers}"
        report = prepare_dataset(cohort / "images", labels, out, n_folds=2, test_fraction=0.0, fractions=[1.0], progress=False,
                                 workers=workers)
        assert report.n_scans_extracted == 2 and [f.patient for f in report.failures] == ["broken"]
        assert "broken.nii.gz" in report.failures[0].error
        made[workers] = load_dataset(out)
    assert [r.sample_id for r in made[2].manifest] == [r.sample_id for r in made[1].manifest]
    assert np.array_equal(made[2].crops, made[1].crops)
    assert (tmp_path / "dataset-2" / "failures.csv").read_text() == (tmp_path / "dataset-1" / "failures.csv").read_text()


def test_workers_below_one_are_refused(tmp_path):
    images, labels = make_cohort(tmp_path)
    with pytest.raises(ValueError, match="--workers must be at least 1"):
        prepare_dataset(images, labels, tmp_path / "dataset", workers=0)
    assert not (tmp_path / "dataset").exists()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc")
def test_a_worker_leaves_when_its_parent_is_killed(tmp_path):
    """A command killed outright (no shutdown of its pool) leaves no worker process waiting for work."""
    import signal
    import subprocess
    import sys
    import time

    script = ("import sys, time\nsys.path[:0] = ['SinusAnomaly']\nfrom SinusAnomalyLib.workers import process_pool\n"
              "with process_pool(1) as pool:\n    print(pool.submit(__import__('os').getpid).result(), flush=True)\n"
              "    time.sleep(60)\n")
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=repo)
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait(10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _alive(worker):
        time.sleep(0.2)
    assert not _alive(worker), f"worker {worker} outlived its killed parent"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"  # a zombie has left; only its entry waits to be reaped
    except FileNotFoundError:
        return False

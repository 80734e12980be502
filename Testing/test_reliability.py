"""No silent wrong answers (issue 11): every failure mode found by probing gets a test here.

Finite or refuse; enough sinus in view; every byte of a bundle checked; whole outputs or none;
fail fast and cleanly; the smaller ones (CSV separators, sheared NIfTI affines, a failed first
stage). Exit codes and the absence of tracebacks are checked in subprocesses, as a user sees them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from SinusAnomalyLib import extraction as extraction_module
from SinusAnomalyLib.bundlefile import (MANIFEST, MANIFEST_DIGEST, MAX_MANIFEST_BYTES, read_bundle_file, read_bundle_manifest,
                                        write_bundle_file)
from SinusAnomalyLib.labels import read_labels
from SinusAnomalyLib.errors import BundleError, ImageError, OutputError
from SinusAnomalyLib.fileio import LOCK_FILE, atomic_folder, locked_output_folder, locked_result_folder, write_json_atomic
from SinusAnomalyLib.imageio import read_image, write_image
from SinusAnomalyLib.resultformat import RESULT_FILES, RESULT_FORMAT, RESULT_VERSION, SIDES, VERDICT_NOT_ASSESSABLE, VERDICTS
from SinusAnomalyLib.synth import SynthParams, make_case
from SinusAnomalyTraining.cli import main

REPO = Path(__file__).resolve().parents[1]


def LABELS_OF(head: Path) -> str:  # noqa: N802
    """A labels table of six patients that all use ``head`` (enough for two folds and a test set)."""
    return "patient,side,label,anomaly_type,image\n" + "".join(
        f"p{i},{side},0,normal,{head.name}\n" for i in range(6) for side in ("left", "right"))


def cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    """``sinus-anomaly ARGS`` in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "SinusAnomalyTraining", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, **kwargs)


def torch_imported_by(*args) -> tuple[int, bool, str]:
    """(exit code, whether torch was imported, the error) of ``sinus-anomaly ARGS`` in a fresh
    interpreter; the error must be one clean line."""
    code = ("import sys\nfrom SinusAnomalyTraining.cli import main\n"
            f"code = main({[str(a) for a in args]!r})\nprint(code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    code, imported = proc.stdout.split()
    return int(code), imported == "True", proc.stderr


def assert_clean_error(proc: subprocess.CompletedProcess, *fragments: str, code: int = 2) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-2000:])


# --------------------------------------------------------------------------- shared inputs

@pytest.fixture(scope="module")
def head(tmp_path_factory) -> Path:
    case = make_case("reliable", np.random.default_rng(7), SynthParams(), anomalies={"left": "polyp", "right": None})
    path = tmp_path_factory.mktemp("head") / "head.nii.gz"
    write_image(case.image, path)
    return path


@pytest.fixture(scope="module")
def other_head(tmp_path_factory) -> Path:
    case = make_case("other", np.random.default_rng(8), SynthParams(), anomalies={"left": None, "right": None})
    path = tmp_path_factory.mktemp("other") / "other.nii.gz"
    write_image(case.image, path)
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    from SinusAnomalyLib.bundle import build_untrained_bundle

    return build_untrained_bundle(tmp_path_factory.mktemp("bundle") / "untrained.sabundle", folds=2)


@pytest.fixture(scope="module")
def extraction(head):
    return extraction_module.extract_sinuses(head)


def rewrite_bundle(src: Path, dst: Path, edit_meta=None, edit_member=None, digest: bool = True) -> Path:
    """Copy a bundle with an edited ``bundle.json`` and/or members. With ``digest`` the member
    checksums and the digest of ``bundle.json`` are made consistent again (a deliberate edit);
    without it they stay as they were (an accidental edit)."""
    with zipfile.ZipFile(src) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(members[MANIFEST])
    for name in list(members):
        if edit_member and name.endswith(".npz"):
            members[name] = edit_member(name, members[name])
            if digest:
                meta["members"][name] = hashlib.sha256(members[name]).hexdigest()
    if edit_meta:
        edit_meta(meta)
    if edit_meta or (edit_member and digest):
        members[MANIFEST] = json.dumps(meta, indent=2).encode()
    if digest:
        members[MANIFEST_DIGEST] = f"{hashlib.sha256(members[MANIFEST]).hexdigest()}  {MANIFEST}\n".encode()
    with zipfile.ZipFile(dst, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return dst


def poisoned(name: str, data: bytes, key_filter=lambda key: key.endswith("weight"), value=np.nan) -> bytes:
    """An npz member with one weight array set to ``value`` in its first element."""
    if name != "classifier_fold1.npz":
        return data
    with np.load(io.BytesIO(data)) as archive:
        arrays = {key: archive[key].copy() for key in archive.files}
    key = next(k for k in arrays if key_filter(k) and arrays[k].dtype.kind == "f")
    arrays[key] = arrays[key].astype(np.float32)
    arrays[key].flat[0] = value
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


# --------------------------------------------------------------------------- 1. finite or refuse

def test_bundle_with_nan_weights_is_refused_naming_the_member(bundle, head, tmp_path):
    bad = rewrite_bundle(bundle, tmp_path / "nan.sabundle", edit_member=poisoned)
    with pytest.raises(BundleError, match=r"classifier_fold1\.npz holds NaN or infinite weights in '[\w.]+' \(1 values\)"):
        read_bundle_file(bad)
    proc = cli("classify", head, "--model", bad, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_error(proc, "nan.sabundle", "classifier_fold1.npz", "NaN or infinite")
    assert not (tmp_path / "out").exists()


def test_nan_weights_are_never_written_into_a_bundle(bundle, tmp_path):
    stored = read_bundle_file(bundle)
    classifiers = [dict(a) for a in stored.classifiers]
    key = next(k for k, v in classifiers[0].items() if v.dtype.kind == "f")
    classifiers[0][key] = np.full_like(classifiers[0][key], np.inf, dtype=np.float32)
    with pytest.raises(BundleError, match=rf"not written: classifier_fold0\.npz holds NaN or infinite weights in '{key}'"):
        write_bundle_file(tmp_path / "x.sabundle", {k: v for k, v in stored.meta.items()
                                                    if k not in ("format", "format_version", "n_folds", "members", "created")},
                          stored.cae, classifiers, half_weights=False)
    assert not list(tmp_path.iterdir())


def test_weights_that_give_nan_probabilities_are_refused_not_reported(bundle, extraction, tmp_path):
    """Whatever makes a network's output non-finite (here one fold's last bias, in memory), the
    probability is checked: an error, nothing written, never a verdict."""
    import torch

    from SinusAnomalyLib.bundle import load_bundle
    from SinusAnomalyLib.inference import classify_extraction

    model = load_bundle(bundle)
    last_bias = [v for k, v in model.classifiers[1].state_dict().items() if k.endswith("bias")][-1]
    with torch.no_grad():
        last_bias.fill_(float("nan"))
    with pytest.raises(BundleError, match="gave a non-finite probability \\(NaN or inf\\) for the left sinus"):
        classify_extraction(read_image(extraction.source), extraction, model)


def test_json_is_written_strictly(tmp_path):
    with pytest.raises(ValueError, match="not JSON compliant"):
        write_json_atomic(tmp_path / "x.json", {"probability": float("nan")})
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------- 2. enough sinus in view

def test_a_side_not_in_view_gets_no_verdict_heat_map_or_label(bundle, extraction, tmp_path):
    from SinusAnomalyLib.bundle import load_bundle
    from SinusAnomalyLib.inference import classify_extraction, save_classification

    model = load_bundle(bundle)
    low = extraction_module.MIN_COVERAGE / 2
    warn = (extraction_module.MIN_COVERAGE + extraction_module.COVERAGE_WARNING) / 2
    partial = dataclasses.replace(extraction, coverage={"left": warn, "right": low})
    assert partial.assessable("left") and not partial.assessable("right")
    image = read_image(extraction.source)
    result = classify_extraction(image, partial, model)
    save_classification(result, model, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert summary["format"] == RESULT_FORMAT and summary["version"] == RESULT_VERSION
    right, left = summary["sides"]["right"], summary["sides"]["left"]
    assert right == {**right, "coverage": pytest.approx(low, abs=1e-4), "assessable": False, "probability": None, "spread": None,
                     "anomalous_volume_ml": None, "fold_probabilities": [], "verdict": VERDICT_NOT_ASSESSABLE}
    assert left["assessable"] is True and 0 <= left["probability"] <= 1 and left["verdict"] in VERDICTS[:2]
    assert len(left["fold_probabilities"]) == 2
    assert any("right sinus not assessable" in w for w in summary["warnings"])
    assert any("left sinus only partly in view" in w for w in summary["warnings"])
    # no heat map and no label on the right side: the heat map is zero inside the right crop
    heat = sitk_array(tmp_path / "out" / "heatmap.nii.gz")
    labels = sitk_array(tmp_path / "out" / "labelmap.nii.gz")
    assert not (labels == 2).any()
    right_centre = np.round(np.asarray(image.TransformPhysicalPointToContinuousIndex(
        tuple(np.array([-1, -1, 1]) * summary["sides"]["right"]["center_ras_mm"])))).astype(int)
    left_centre = np.round(np.asarray(image.TransformPhysicalPointToContinuousIndex(
        tuple(np.array([-1, -1, 1]) * summary["sides"]["left"]["center_ras_mm"])))).astype(int)
    r, l_ = right_centre[::-1], left_centre[::-1]  # numpy order (z, y, x)
    assert heat[r[0] - 5:r[0] + 5, r[1] - 5:r[1] + 5, r[2] - 5:r[2] + 5].max() == 0.0
    assert heat[l_[0] - 15:l_[0] + 15, l_[1] - 15:l_[1] + 15, l_[2] - 15:l_[2] + 15].max() > 0.0


def test_no_verdict_at_all_when_neither_side_is_in_view(bundle, extraction):
    from SinusAnomalyLib.bundle import load_bundle
    from SinusAnomalyLib.inference import classify_extraction

    hidden = dataclasses.replace(extraction, coverage={"left": 0.0, "right": 0.0})
    with pytest.raises(ImageError, match="neither maxillary sinus"):
        classify_extraction(read_image(extraction.source), hidden, load_bundle(bundle))


def test_batch_table_has_coverage_and_verdicts_and_the_log_warns(bundle, extraction, head, tmp_path, monkeypatch, caplog):
    import SinusAnomalyTraining.commands.classify as classify_command

    monkeypatch.setattr(classify_command, "extract_sinuses",
                        lambda *a, **k: dataclasses.replace(extraction, coverage={"left": 1.0, "right": 0.0}))
    folder = tmp_path / "scans"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(head.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert main(["classify", str(folder), "--model", str(bundle), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    assert "right sinus not assessable" in caplog.text
    import csv

    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["status"] == "ok" and row["left_coverage"] == "1.0" and row["right_coverage"] == "0.0"
    assert row["right_verdict"] == VERDICT_NOT_ASSESSABLE and row["right_probability"] == ""
    assert row["left_verdict"] in VERDICTS[:2] and 0 <= float(row["left_probability"]) <= 1
    assert "right sinus not assessable" in row["warnings"]


def test_batch_scans_sharing_a_name_get_their_own_output_folders(bundle, extraction, head, tmp_path, monkeypatch):
    """p1/flair.nii.gz and p2/flair.nii.gz (a study export's layout): two result folders, each named in results.csv."""
    import csv

    import SinusAnomalyTraining.commands.classify as classify_command

    monkeypatch.setattr(classify_command, "extract_sinuses", lambda *a, source, **k: dataclasses.replace(extraction, source=source))
    for patient in ("p1", "p2"):
        (tmp_path / patient).mkdir()
        (tmp_path / patient / "flair.nii.gz").write_bytes(head.read_bytes())
    (tmp_path / "scans.csv").write_text("image\np1/flair.nii.gz\np2/flair.nii.gz\n")
    out = tmp_path / "out"
    assert main(["classify", str(tmp_path / "scans.csv"), "--model", str(bundle), "--out", str(out), "--device", "cpu"]) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(Path(r["image"]).parent.name, r["status"], r["output"]) for r in rows] == [("p1", "ok", "p1_flair"), ("p2", "ok", "p2_flair")]
    for row in rows:
        assert json.loads((out / row["output"] / "result.json").read_text(encoding="utf-8"))["input"] == row["image"]


def sitk_array(image) -> np.ndarray:
    """Voxels (z, y, x) of a SimpleITK image or an image file."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(image if isinstance(image, sitk.Image) else sitk.ReadImage(str(image)))


# --------------------------------------------------------------------------- 3. every byte of a bundle checked

def test_an_edited_bundle_json_is_caught_by_its_digest(bundle, tmp_path):
    edited = rewrite_bundle(bundle, tmp_path / "edited.sabundle", edit_meta=lambda m: m.update(threshold=0.9), digest=False)
    with pytest.raises(BundleError, match="bundle.json does not match its checksum in bundle.json.sha256"):
        read_bundle_manifest(edited)
    with zipfile.ZipFile(bundle) as archive, zipfile.ZipFile(tmp_path / "nodigest.sabundle", "w") as out:
        for name in archive.namelist():
            if name != MANIFEST_DIGEST:
                out.writestr(name, archive.read(name))
    with pytest.raises(BundleError, match="member bundle.json.sha256 is missing"):
        read_bundle_file(tmp_path / "nodigest.sabundle")
    # a second bundle.json appended to the archive (zip readers disagree on which one counts)
    with zipfile.ZipFile(bundle) as archive:
        meta = json.loads(archive.read(MANIFEST))
    (tmp_path / "twice.sabundle").write_bytes(bundle.read_bytes())
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(tmp_path / "twice.sabundle", "a") as archive:
        archive.writestr(MANIFEST, json.dumps({**meta, "threshold": 0.01}))
    with pytest.raises(BundleError, match="member\\(s\\) bundle.json appear more than once"):
        read_bundle_manifest(tmp_path / "twice.sabundle")


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("threshold"), "lacks the required key 'threshold'"),
    (lambda m: m.update(threshold=1.5), "'threshold' must be a number strictly between 0 and 1, not 1.5"),
    (lambda m: m.update(residual_threshold=0), "'residual_threshold' must be a number strictly between 0 and 1"),
    (lambda m: m.update(threshold="0.5"), "'threshold' must be a number"),
    (lambda m: m["crop"].pop("model_crop_size"), "lacks the required key 'crop.model_crop_size'"),
    (lambda m: m["models"].update(encoder_widths=[8, 16]), "'models.encoder_widths' must be a list of four"),
    (lambda m: m.update(n_folds=3), "'members' lists cae.npz, classifier_fold0.npz, classifier_fold1.npz but 'n_folds' = 3"),
    (lambda m: m["residuals"].update(median_kernel=4), "'residuals.median_kernel' must be an odd whole number"),
    (lambda m: m.update(threshold=float("nan")), "unreadable bundle.json (NaN is not valid JSON)"),
])
def test_bundle_json_schema_names_the_key(bundle, tmp_path, edit, message):
    bad = rewrite_bundle(bundle, tmp_path / "bad.sabundle", edit_meta=edit)
    with pytest.raises(BundleError) as info:
        read_bundle_manifest(bad)
    assert str(bad) in str(info.value) and message in str(info.value), str(info.value)


def test_classify_with_a_bundle_lacking_threshold_exits_2_without_traceback(bundle, head, tmp_path):
    bad = rewrite_bundle(bundle, tmp_path / "nothreshold.sabundle", edit_meta=lambda m: m.pop("threshold"))
    start = time.perf_counter()
    proc = cli("classify", head, "--model", bad, "--out", tmp_path / "out", "--device", "cpu")
    assert_clean_error(proc, "nothreshold.sabundle", "'threshold'")
    assert not (tmp_path / "out").exists()
    assert time.perf_counter() - start < 30
    code, imported, error = torch_imported_by("classify", head, "--model", bad, "--out", tmp_path / "out")
    assert (code, imported) == (2, False) and "'threshold'" in error  # checked before torch is imported


def test_result_records_the_bundle_fingerprint(bundle, head, tmp_path):
    with zipfile.ZipFile(bundle) as archive:
        digest = hashlib.sha256(archive.read(MANIFEST)).hexdigest()
        assert archive.read(MANIFEST_DIGEST).decode().split() == [digest, MANIFEST]
    assert read_bundle_file(bundle).fingerprint == digest
    assert main(["classify", str(head), "--model", str(bundle), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    summary = json.loads((tmp_path / "out" / "result.json").read_text(encoding="utf-8"))
    assert summary["model"]["fingerprint"] == digest
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(RESULT_FILES)


def test_oversized_members_are_refused_before_they_are_read(bundle, tmp_path, monkeypatch):
    big = rewrite_bundle(bundle, tmp_path / "bigjson.sabundle", edit_meta=lambda m: m.update(padding="x" * MAX_MANIFEST_BYTES))
    with pytest.raises(BundleError, match=r"member bundle.json declares \d+ bytes uncompressed, more than the 1048576"):
        read_bundle_manifest(big)
    # a member larger than the limit is refused from its declared size, before any byte is inflated
    import SinusAnomalyLib.bundlefile as bundlefile

    monkeypatch.setattr(bundlefile, "MAX_MEMBER_BYTES", 10_000)
    read = []
    original = zipfile.ZipExtFile.read
    monkeypatch.setattr(zipfile.ZipExtFile, "read", lambda self, *a: read.append(self.name) or original(self, *a))
    with pytest.raises(BundleError, match=r"member cae.npz declares \d+ bytes uncompressed, more than the 10000"):
        read_bundle_file(bundle)
    assert "cae.npz" not in read


# --------------------------------------------------------------------------- 4. whole outputs or none

def test_interrupted_classify_leaves_the_earlier_result_intact(bundle, head, other_head, tmp_path):
    """Ctrl-C or SIGTERM while the new result is being written: the folder holds the earlier result
    byte for byte (or, if the signal came after the final rename, the whole new one), nothing else."""
    out = tmp_path / "out"
    assert main(["classify", str(head), "--model", str(bundle), "--out", str(out), "--device", "cpu"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    outcomes = []
    # the real CLI, with each image write inside the temporary folder slowed down, so that the signal
    # reliably lands while the new result is being written (on a quiet machine it was done too soon)
    # (SIGINT gets Python's own handler back: a test run started in the background inherits it ignored)
    slowed = ("import signal, sys, time\n"
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "import SinusAnomalyLib.inference as inference\n"
              "write = inference.write_image\n"
              "inference.write_image = lambda *a, **k: (time.sleep(0.5), write(*a, **k))[1]\n"
              "from SinusAnomalyTraining.cli import run_and_exit\n"
              "run_and_exit(sys.argv[1:])\n")
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-c", slowed, "classify", str(other_head), "--model", str(bundle),
                                 "--out", str(out), "--device", "cpu"], cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not list(tmp_path.glob(".out.*.partial")):
            time.sleep(0.002)
        proc.send_signal(sig)  # while the new result is being written (its temporary folder exists)
        _, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert proc.returncode in (0, 130), (proc.returncode, err)
        after = {p.name: p.read_bytes() for p in out.iterdir()}
        assert not [p.name for p in tmp_path.iterdir() if p.name.endswith((".partial", ".old"))]
        if after == before:
            assert proc.returncode == 130 and "interrupted" in err
            outcomes.append("old")
        else:  # the signal came after the rename: the new result, whole
            assert json.loads(after["result.json"])["input"] == str(other_head) and set(after) == set(RESULT_FILES)
            outcomes.append("new")
            break
    assert outcomes[0] == "old", outcomes  # the interesting case did happen at least once


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "result"
    with atomic_folder(target, ["a.txt", "b.txt"]) as tmp:
        (tmp / "a.txt").write_text("first")
        (tmp / "b.txt").write_text("first")
    with pytest.raises(RuntimeError):
        with atomic_folder(target, ["a.txt", "b.txt"]) as tmp:
            (tmp / "a.txt").write_text("second")
            raise RuntimeError("failed half way")
    assert {p.name: p.read_text(encoding="utf-8") for p in target.iterdir()} == {"a.txt": "first", "b.txt": "first"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
    (target / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="holds other files \\(notes.txt\\)"):
        with atomic_folder(target, ["a.txt", "b.txt"]):
            pass
    assert (target / "notes.txt").read_text(encoding="utf-8") == "mine"


def test_a_second_process_writing_the_same_output_is_refused(bundle, head, tmp_path):
    out = tmp_path / "out"
    with locked_result_folder(out, RESULT_FILES):  # as a running classify holds it
        proc = cli("classify", head, "--model", bundle, "--out", out, "--device", "cpu")
    assert_clean_error(proc, str(out), "another process is writing this result folder")
    assert not out.exists()

    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS_OF(head))
    dataset = tmp_path / "dataset"
    with locked_output_folder(dataset, "dataset"):
        proc = cli("prepare", "--images", head.parent, "--labels", labels, "--out", dataset, "--folds", 2)
        assert_clean_error(proc, str(dataset), "another process is writing this dataset")
        assert sorted(p.name for p in dataset.iterdir()) == [LOCK_FILE]


# --------------------------------------------------------------------------- 5. fail fast and cleanly

@pytest.mark.parametrize("command", ["extract", "classify", "prepare"])
def test_output_that_is_a_file_is_refused_before_any_work(command, bundle, head, tmp_path, monkeypatch):
    blocker = tmp_path / "taken"
    blocker.write_text("a file, not a folder")
    args = {"extract": ["extract", head, "--out", blocker],
            "classify": ["classify", head, "--model", bundle, "--out", blocker, "--device", "cpu"],
            "prepare": ["prepare", "--images", head.parent, "--labels", tmp_path / "labels.csv", "--out", blocker, "--folds", 2]}[command]
    (tmp_path / "labels.csv").write_text(LABELS_OF(head))
    import SinusAnomalyLib.dataset as dataset_module
    import SinusAnomalyTraining.commands.classify as classify_command
    import SinusAnomalyTraining.commands.extract as extract_command

    def no_work(*a, **k):
        raise AssertionError("registration started before the output was checked")

    for module in (dataset_module, classify_command, extract_command):
        monkeypatch.setattr(module, "extract_sinuses", no_work)
    assert main([str(a) for a in args]) == 2  # in-process: the registration was never started
    proc = cli(*args)
    assert_clean_error(proc, str(blocker), "is a file")
    assert blocker.read_text(encoding="utf-8") == "a file, not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc to find an unwritable location as any user")
@pytest.mark.parametrize("command", ["extract", "classify", "prepare"])
def test_unwritable_output_exits_2_naming_the_path(command, bundle, head, tmp_path):
    target = Path("/proc/self/sinus-anomaly-out")  # cannot be created, not even by root
    (tmp_path / "labels.csv").write_text(LABELS_OF(head))
    args = {"extract": ["extract", head, "--out", target],
            "classify": ["classify", head, "--model", bundle, "--out", target, "--device", "cpu"],
            "prepare": ["prepare", "--images", head.parent, "--labels", tmp_path / "labels.csv", "--out", target, "--folds", 2]}[command]
    proc = cli(*args)
    assert_clean_error(proc, "/proc/self/", "cannot be")


def test_atomic_writes_name_the_target_on_os_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=f"{tmp_path / 'file'}: is a file, not a folder"):
        write_json_atomic(tmp_path / "file" / "result.json", {})


def test_classify_rejects_a_bad_image_before_importing_torch(bundle, tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b" + bytes(100))
    code, imported, error = torch_imported_by("classify", bad, "--model", bundle, "--out", tmp_path / "out")
    assert (code, imported) == (2, False) and f"{bad}: " in error
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- 6. the smaller ones

@pytest.mark.parametrize("separator", [";", "\t"])
def test_semicolon_and_tab_separated_label_tables(separator, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for patient in ("a", "b"):
        (images / f"{patient}.nii.gz").write_bytes(b"x")
    rows = [["patient", "side", "label", "anomaly_type"], ["a", "left", "1", "polyp"], ["a", "right", "0", ""], ["b", "left", "0", "normal"]]
    (tmp_path / "comma.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    (tmp_path / "other.csv").write_text("\n".join(separator.join(r) for r in rows) + "\n")
    expected = [(s.patient, s.side, s.label, s.anomaly_type) for s in read_labels(tmp_path / "comma.csv", images)]
    got = [(s.patient, s.side, s.label, s.anomaly_type) for s in read_labels(tmp_path / "other.csv", images)]
    assert got == expected == [("a", "left", 1, "polyp"), ("a", "right", 0, "normal"), ("b", "left", 0, "normal")]


def test_classify_reads_semicolon_separated_scan_lists(tmp_path):
    from SinusAnomalyTraining.commands.classify import batch_inputs

    (tmp_path / "scans.csv").write_text("patient;image\na;heads/a.nii.gz\nb;/data/b.nii.gz\n")
    assert batch_inputs(tmp_path / "scans.csv") == [(tmp_path / "heads" / "a.nii.gz").resolve(), Path("/data/b.nii.gz")]


def _sheared_nifti(path: Path, shear: float) -> Path:
    affine = np.diag([1.2, 1.0, 1.5, 1.0])
    affine[0, 1] = shear
    affine[:3, 3] = [-20.0, 10.0, 5.0]
    data = np.random.default_rng(0).random((30, 30, 20)).astype(np.float32)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(None, code=0)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def test_slightly_sheared_nifti_is_accepted_with_a_warning(tmp_path, caplog):
    path = _sheared_nifti(tmp_path / "slight.nii.gz", 0.005)
    with caplog.at_level(logging.WARNING):
        image = read_image(path)
    assert "non-orthonormal (sheared) affine replaced by the nearest orthonormal one" in caplog.text
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-9)
    assert np.allclose(image.GetSpacing(), [1.2, 1.0, 1.5], atol=1e-2)
    # every voxel stays within half a voxel of where the file's own affine puts it
    affine = nib.load(str(path)).affine
    for index in [(0, 0, 0), (29, 29, 19), (0, 29, 19), (15, 15, 10)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        ras = (affine @ [*index, 1])[:3]
        assert np.linalg.norm(lps * [-1, -1, 1] - ras) <= 0.5
    assert np.array_equal(np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0), sitk_array(image))


def test_strongly_sheared_nifti_is_called_what_it_is(tmp_path):
    path = _sheared_nifti(tmp_path / "sheared.nii.gz", 0.3)
    with pytest.raises(ImageError, match="non-orthonormal \\(sheared or skewed\\) affine.*would move voxels by up to"):
        read_image(path)


def test_failed_first_stage_leaves_no_run_folder(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    proc = cli("pretrain", "--dataset", tiny_dataset, "--run-dir", run, "--config", "demo", "--device", "cpu")
    assert_clean_error(proc, "residuals")
    assert not run.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    proc = cli("pretrain", "--dataset", tiny_dataset, "--run-dir", existing, "--config", "demo", "--device", "cpu")
    assert_clean_error(proc, "residuals")
    assert sorted(p.name for p in existing.iterdir()) == [LOCK_FILE, "notes.txt"]  # the run folder's lock stays, unheld


def test_readme_promises_name_tests_that_exist():
    """The promises table (docs/promises.md, linked from the README) points at real tests (T: this
    file, the other letters as its legend says)."""
    assert "](docs/promises.md)" in (REPO / "README.md").read_text(encoding="utf-8")
    promises = (REPO / "docs" / "promises.md").read_text(encoding="utf-8")
    table = promises.split("## What SinusAnomaly promises", 1)[1].split("\n## ", 1)[0]
    files = {"T": "test_reliability.py", "B": "test_bundle.py", "R": "test_run_folders.py", "W": "test_packaging.py",
             "P": "test_prepare.py", "S": "test_stages.py", "C": "test_configs.py", "A": "test_augment.py", "M": "test_slicer_mrml.py"}
    sources = {letter: (REPO / "Testing" / name).read_text(encoding="utf-8") for letter, name in files.items()}
    rows = [line for line in table.splitlines() if line.startswith("| ") and "`test_" in line]
    assert len(rows) >= 10
    for row in rows:
        cell = row.rsplit("|", 2)[1]
        for part in cell.split(";"):
            letter, *_ = part.strip().split(" ", 1)
            names = [n for n in part.split("`")[1::2] if n.startswith("test_")]
            assert letter in sources and names, row
            for name in names:
                assert f"def {name}(" in sources[letter], (letter, name)


def test_an_unwritable_dataset_stops_prepare_instead_of_skipping_every_scan(head, tmp_path, monkeypatch):
    """An output error is the dataset folder's problem, not a bad scan: prepare stops (exit 2)
    instead of recording every scan as failed."""
    import SinusAnomalyLib.dataset as dataset_module
    from conftest import _FakeExtraction, synthetic_crop

    rng = np.random.default_rng(0)
    monkeypatch.setattr(dataset_module, "extract_sinuses",
                        lambda *a, **k: _FakeExtraction({side: synthetic_crop(rng, False) for side in SIDES}))
    labels = tmp_path / "labels.csv"
    labels.write_text(LABELS_OF(head))
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "scans").write_text("a file where the scan caches go")
    with pytest.raises(OutputError, match="scans"):
        dataset_module.prepare_dataset(head.parent, labels, dataset, n_folds=2, progress=False)
    assert not (dataset / "failures.csv").exists()

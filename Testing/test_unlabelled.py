"""The unlabelled set (the paper's D_u): synthetic unlabelled heads, their preparation, and pretraining on them.

Preparation uses the fake extractor of test_prepare (no registration); pretraining runs the tiny
configuration on a tiny dataset prepared with an unlabelled set.
"""
from __future__ import annotations

import dataclasses
import csv
import json

import numpy as np
import pytest
import torch

import SinusAnomalyLib.dataset as dataset
from SinusAnomalyLib.dataset import load_dataset, prepare_dataset
from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib import synth
from SinusAnomalyLib.synth import cohort as synth_cohort
from SinusAnomalyLib.synth import generate_cohort
from SinusAnomalyTraining import stages
from SinusAnomalyTraining.config import config_from_dict
from conftest import TINY_CONFIG, make_tiny_dataset, tiny_fold_context
from test_prepare import FakeExtractor, fake_crop, make_cohort, read_csv


@pytest.fixture
def extractor(monkeypatch):
    fake = FakeExtractor()
    monkeypatch.setattr(dataset, "extract_sinuses", fake)
    return fake


def add_unlabelled_images(images, n, first=100):
    """Dummy unlabelled image files U100.nii.gz ... beside the labelled ones; their list as a CSV."""
    patients = [f"U{i:03d}" for i in range(first, first + n)]
    for patient in patients:
        (images / f"{patient}.nii.gz").write_bytes(b"unlabelled head " + patient.encode())
    listing = images.parent / "unlabelled.csv"
    with open(listing, "w", newline="") as fh:
        csv.writer(fh).writerows([("patient", "image"), *[(p, f"{p}.nii.gz") for p in patients]])
    return listing, patients


# --------------------------------------------------------------------------- synth


def fast_case(patient, rng, params=None, reference=None):
    """A tiny head drawn from ``rng`` alone (what generate_cohort passes), instead of seconds of anatomy."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(rng.random((6, 6, 6), dtype=np.float32))
    labels = sitk.GetImageFromArray(np.zeros((6, 6, 6), np.uint8))
    anomalies = {side: (None if rng.random() < 0.5 else "polyp") for side in ("left", "right")}
    return synth.SyntheticCase(patient, image, labels, {side: rng.normal(size=3) for side in anomalies}, anomalies, {"seed_draw": float(rng.random())})


def test_synth_unlabelled_heads_are_listed_apart_and_leave_the_labelled_cohort_unchanged(tmp_path, monkeypatch):
    from SinusAnomalyTraining.cli import main

    monkeypatch.setattr(synth_cohort, "make_case", fast_case)  # where generate_cohort looks it up
    assert main(["synth", "--out", str(tmp_path / "plain"), "--cases", "3", "--previews", "0"]) == 0
    assert main(["synth", "--out", str(tmp_path / "with"), "--cases", "3", "--unlabelled", "4", "--previews", "0"]) == 0
    plain, with_u = tmp_path / "plain", tmp_path / "with"
    for name in ("labels.csv", "truth.json", "images/synth-0000.nii.gz", "images/synth-0001.nii.gz", "masks/synth-0002_lesions.nii.gz"):
        assert (plain / name).read_bytes() == (with_u / name).read_bytes(), name
    assert not (plain / "unlabelled.csv").exists() and "unlabelled" not in json.loads((plain / "synth.json").read_text(encoding="utf-8"))
    listed = read_csv(with_u / "unlabelled.csv")
    assert [row["patient"] for row in listed] == ["synth-u0000", "synth-u0001", "synth-u0002", "synth-u0003"]
    assert all((with_u / "images" / row["image"]).is_file() for row in listed)
    assert {row["patient"] for row in read_csv(with_u / "labels.csv")} == {"synth-0000", "synth-0001", "synth-0002"}
    truth = json.loads((with_u / "unlabelled_truth.json").read_text(encoding="utf-8"))
    assert sorted(truth) == [row["patient"] for row in listed] and not set(truth) & set(json.loads((with_u / "truth.json").read_text(encoding="utf-8")))
    # the same lesion mix (make_case with the same parameters), each head from a random stream of its own
    draws = [entry["pose"]["seed_draw"] for entry in [*truth.values(), *json.loads((with_u / "truth.json").read_text(encoding="utf-8")).values()]]
    assert len(set(draws)) == 7
    # re-running resumes: nothing is made again
    stamp = (with_u / "images/synth-u0003.nrrd").stat().st_mtime_ns
    generate_cohort(with_u, 3, 0, progress=False, previews=0, n_unlabelled=4)
    assert (with_u / "images/synth-u0003.nrrd").stat().st_mtime_ns == stamp


# --------------------------------------------------------------------------- prepare


def test_prepare_caches_the_unlabelled_set_beside_the_labelled_crops(tmp_path, extractor):
    images, labels = make_cohort(tmp_path)
    listing, patients = add_unlabelled_images(images, 5)
    out = tmp_path / "dataset"
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False, unlabelled=listing)
    assert report.unlabelled["patients"] == 5 and report.unlabelled["sinuses"] == 10 and report.n_sinuses == 23
    loaded = load_dataset(out)
    assert len(loaded.manifest) == 23  # the labelled set as without an unlabelled one
    assert not set(patients) & {r.patient for r in loaded.manifest} and not set(patients) & loaded.splits.patients()
    assert [r.sample_id for r in loaded.unlabelled.manifest][:2] == ["U100_left", "U100_right"]
    assert loaded.unlabelled.crops.shape == (10, 64, 64, 64)
    for index, row in enumerate(loaded.unlabelled.manifest):
        assert row.crop_index == index and row.label == -1
        assert np.allclose(loaded.unlabelled.crops[index], fake_crop(f"{row.patient}.nii.gz", row.side), atol=1e-3)
    info = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert info["unlabelled"]["patients_listed"] == 5 and info["unlabelled"]["sinuses"] == 10

    # resumable: every scan comes from the cache the second time
    extractor.calls.clear()
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False, unlabelled=listing)
    assert extractor.calls == [] and report.unlabelled["reused"] == 5

    # prepared again without it: the dataset has none, as one prepared before unlabelled sets existed
    prepare_dataset(images, labels, out, n_folds=3, progress=False)
    assert not (out / "unlabelled_manifest.csv").exists() and not (out / "unlabelled_crops.npy").exists()
    assert len(load_dataset(out).unlabelled) == 0


def test_interrupted_unlabelled_preparation_resumes_and_a_bad_scan_is_skipped(tmp_path, monkeypatch):
    images, labels = make_cohort(tmp_path)
    listing, patients = add_unlabelled_images(images, 4)
    out = tmp_path / "dataset"
    monkeypatch.setattr(dataset, "extract_sinuses", FakeExtractor(crash_at_call=12 + 3))  # during the unlabelled scans
    with pytest.raises(KeyboardInterrupt):
        prepare_dataset(images, labels, out, n_folds=3, progress=False, unlabelled=listing)
    resumed = FakeExtractor(bad={"U102"})
    monkeypatch.setattr(dataset, "extract_sinuses", resumed)
    report = prepare_dataset(images, labels, out, n_folds=3, progress=False, unlabelled=listing)
    assert resumed.calls == ["U102", "U103"]  # the labelled scans and the first two unlabelled ones were cached
    assert report.unlabelled == {**report.unlabelled, "patients": 3, "failed": 1, "reused": 2, "extracted": 1}
    failures = read_csv(out / "failures.csv")
    assert [f["patient"] for f in failures] == ["U102"] and "constant image" in failures[0]["error"]
    assert {r.patient for r in load_dataset(out).unlabelled.manifest} == {"U100", "U101", "U103"}


def test_a_patient_both_labelled_and_unlabelled_is_refused_before_any_extraction(tmp_path, extractor):
    images, labels = make_cohort(tmp_path)
    listing = tmp_path / "unlabelled.csv"
    listing.write_text("patient,image\nP003,P003.nii.gz\n")
    with pytest.raises(DatasetError, match="P003 are both in .*labels.csv and in the unlabelled set"):
        prepare_dataset(images, labels, tmp_path / "dataset", n_folds=3, progress=False, unlabelled=listing)
    assert extractor.calls == [] and not (tmp_path / "dataset").exists()
    # a folder of scans is read the same way: the images folder holds labelled patients, so it is refused too
    with pytest.raises(DatasetError, match="both in"):
        prepare_dataset(images, labels, tmp_path / "dataset", n_folds=3, progress=False, unlabelled=images)


def test_prepare_command_reads_an_unlabelled_folder(tmp_path, extractor, capsys):
    from SinusAnomalyTraining.cli import main

    images, labels = make_cohort(tmp_path)
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for patient in ("U1", "U2"):
        (folder / f"{patient}.nrrd").write_bytes(b"head")
    code = main(["prepare", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "dataset"),
                 "--folds", "3", "--unlabelled", str(folder), "--no-progress", "--workers", "1"])  # the fake: this process only
    assert code == 0
    assert "unlabelled set: 2 of 2 scans prepared (2 extracted, 0 reused), 0 failed; 4 sinuses for pretraining" in capsys.readouterr().out
    assert [r.sample_id for r in load_dataset(tmp_path / "dataset").unlabelled.manifest] == ["U1_left", "U1_right", "U2_left", "U2_right"]
    listing = tmp_path / "bad.csv"
    listing.write_text("patient\nU9\n")
    code = main(["prepare", "--images", str(images), "--labels", str(labels), "--out", str(tmp_path / "dataset"),
                 "--folds", "3", "--unlabelled", str(listing), "--no-progress"])
    assert code == 2 and "no image in" in capsys.readouterr().err


# --------------------------------------------------------------------------- pretraining


@pytest.fixture(scope="module")
def with_unlabelled(tmp_path_factory):
    """The tiny dataset (20 labelled patients) with an unlabelled set of 6 patients (12 sinuses)."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("tiny_u")
    try:
        yield make_tiny_dataset(root, mp, n_unlabelled=6)
    finally:
        mp.undo()


def test_residual_and_baseline_pretraining_learn_from_the_unlabelled_set(with_unlabelled, tmp_path):
    ctx = tiny_fold_context(with_unlabelled, tmp_path / "run")
    unlabelled_ids = [r.sample_id for r in ctx.dataset.unlabelled.manifest]
    assert len(unlabelled_ids) == 12
    stages.train_cae(ctx)
    assert json.loads((ctx.cae_dir / "done.json").read_text(encoding="utf-8"))["n_train"] == int((ctx.dataset.labels()[ctx.indices("train")] == 0).sum())
    stages.compute_residuals(ctx)
    residuals = stages.load_residuals(ctx)
    assert set(residuals) == {r.sample_id for r in ctx.dataset.manifest} | set(unlabelled_ids)
    # an unlabelled crop's residual is the fold CAE's residual of that crop
    cae, _ = stages.load_cae(ctx)
    image = torch.from_numpy(stages.resize_crops(ctx.dataset.unlabelled.crops[3:4], 32))[:, None]
    expected = stages.residual_maps(cae, image, (1, 99), 3)[0, 0].numpy()
    assert np.allclose(residuals[unlabelled_ids[3]], expected, atol=2e-3)

    crops, described = stages.pretraining_crops(ctx, residuals)
    assert crops.sample_ids == unlabelled_ids and described == "12 unlabelled sinuses (6 patients)"
    assert torch.equal(crops.volumes[3, 1], torch.from_numpy(np.array(residuals[unlabelled_ids[3]])))
    stages.pretrain(ctx)
    assert "pretraining fold 0: 12 unlabelled sinuses (6 patients)" in (ctx.pretrain_dir / "train.log").read_text(encoding="utf-8")
    stages.pretrain_pretext(ctx, "ae")
    assert "ae pretraining fold 0: 12 unlabelled sinuses (6 patients)" in (ctx.fold_dir / "pretrain_ae" / "train.log").read_text(encoding="utf-8")

    both = tiny_fold_context(with_unlabelled, tmp_path / "both", pretrain={"data": "unlabelled+train"})
    crops, described = stages.pretraining_crops(both)
    train_ids = [both.dataset.manifest[i].sample_id for i in both.indices("train")]
    assert crops.sample_ids == unlabelled_ids + train_ids
    assert described == f"12 unlabelled sinuses (6 patients) + {len(train_ids)} training sinuses of fold 0"


def test_without_unlabelled_scans_pretraining_uses_the_folds_training_sinuses_and_says_so(tiny_dataset, tmp_path):
    ctx = tiny_fold_context(tiny_dataset, tmp_path / "run")
    assert len(ctx.dataset.unlabelled) == 0 and ctx.unlabelled_fingerprint is None
    crops, described = stages.pretraining_crops(ctx)
    train_ids = [ctx.dataset.manifest[i].sample_id for i in ctx.indices("train")]
    assert crops.sample_ids == train_ids
    assert described == f"{len(train_ids)} training sinuses of fold 0 (the dataset has no unlabelled scans)"
    stages.pretrain_pretext(ctx, "ae")
    assert "(the dataset has no unlabelled scans)" in (ctx.fold_dir / "pretrain_ae" / "train.log").read_text(encoding="utf-8")


def test_another_unlabelled_set_reruns_residuals_and_pretraining_not_the_cae(tmp_path, monkeypatch):
    dataset_dir = make_tiny_dataset(tmp_path, monkeypatch, n_unlabelled=4)
    run = tmp_path / "run"
    ctx = tiny_fold_context(dataset_dir, run)
    stages.train_cae(ctx)
    stages.compute_residuals(ctx)
    stages.pretrain(ctx)
    cae_done = (ctx.cae_dir / "done.json").read_bytes()
    first_pretrain = json.loads((ctx.pretrain_dir / "done.json").read_text(encoding="utf-8"))
    # the same labelled patients, one unlabelled patient fewer (its scans come from the cache)
    (tmp_path / "fewer.csv").write_text("patient,image\n" + "".join(f"u{u:03d},u{u:03d}.nii.gz\n" for u in range(3)))
    dataset.prepare_dataset(tmp_path / "images", tmp_path / "labels.csv", dataset_dir, n_folds=2, test_fraction=0.2,
                            fractions=(0.5, 1.0), seed=0, progress=False, unlabelled=tmp_path / "fewer.csv")
    ctx = tiny_fold_context(dataset_dir, run)
    assert len(ctx.dataset.unlabelled) == 6
    with pytest.raises(stages.StageInputError, match="another unlabelled set"):  # pretraining refuses the old residuals
        stages.pretrain(ctx)
    stages.train_cae(ctx)
    assert (ctx.cae_dir / "done.json").read_bytes() == cae_done  # the CAE never sees the unlabelled set
    stages.compute_residuals(ctx)
    assert len(json.loads((ctx.residuals_dir / "residuals.json").read_text(encoding="utf-8"))["sample_ids"]) == len(ctx.dataset.manifest) + 6
    stages.pretrain(ctx)
    assert json.loads((ctx.pretrain_dir / "done.json").read_text(encoding="utf-8"))["made_from"] != first_pretrain["made_from"]
    assert "6 unlabelled sinuses (3 patients)" in (ctx.pretrain_dir / "train.log").read_text(encoding="utf-8")


def test_the_report_says_what_pretraining_learned_from(with_unlabelled, tiny_dataset):
    from SinusAnomalyTraining.report import pretraining_data_sentence

    config = config_from_dict(TINY_CONFIG)
    assert pretraining_data_sentence(config, load_dataset(with_unlabelled)).startswith(
        "Pretraining data: the unlabelled set (the paper's D_u) of 6 patients (12 sinuses);")
    both = config.replace(pretrain=dataclasses.replace(config.pretrain, data="unlabelled+train"))
    assert "12 sinuses), plus each fold's training sinuses" in pretraining_data_sentence(both, load_dataset(with_unlabelled))
    assert "the dataset has no unlabelled scans" in pretraining_data_sentence(config, load_dataset(tiny_dataset))
    assert pretraining_data_sentence(config.replace(methods=("none",)), load_dataset(tiny_dataset)) == ""

"""The manifests of a prepared dataset (SinusAnomalyLib.manifest): round trip, unknown quality,
and the errors that name the file."""
from __future__ import annotations

import pytest

from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib.manifest import (MANIFEST_COLUMNS, ManifestRow, UnlabelledRow, load_manifest,
                                      read_unlabelled_manifest, write_manifest, write_unlabelled_manifest)


def test_manifests_round_trip_with_an_unknown_registration_quality(tmp_path):
    rows = [ManifestRow("p1_left", "p1", "left", 1, "polyp", "p1.nii.gz", "scans/p1/crops.npz", "left", 0, 0.91),
            ManifestRow("p1_right", "p1", "right", 0, "normal", "p1.nii.gz", "scans/p1/crops.npz", "right", 1, None)]
    write_manifest(tmp_path / "manifest.csv", rows)
    assert (tmp_path / "manifest.csv").read_text(encoding="utf-8").splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert load_manifest(tmp_path / "manifest.csv") == rows
    assert rows[0].sample.label == 1 and rows[0].sample.patient == "p1"

    unlabelled = [UnlabelledRow("u1_left", "u1", "left", "u1.nii.gz", "scans/u1/crops.npz", "left", 0, None)]
    write_unlabelled_manifest(tmp_path / "unlabelled_manifest.csv", unlabelled)
    assert read_unlabelled_manifest(tmp_path / "unlabelled_manifest.csv") == unlabelled
    assert unlabelled[0].label == -1


def test_a_missing_or_malformed_manifest_is_a_dataset_error_naming_it(tmp_path):
    with pytest.raises(DatasetError, match="manifest.csv: manifest does not exist"):
        load_manifest(tmp_path / "manifest.csv")
    (tmp_path / "manifest.csv").write_text("sample_id,patient\np1_left,p1\n")
    with pytest.raises(DatasetError, match="manifest.csv: manifest lacks column"):
        load_manifest(tmp_path / "manifest.csv")
    (tmp_path / "unlabelled_manifest.csv").write_text("sample_id\n")
    with pytest.raises(DatasetError, match="unlabelled manifest lacks column"):
        read_unlabelled_manifest(tmp_path / "unlabelled_manifest.csv")
    with pytest.raises(FileNotFoundError):  # the caller says why it is missing
        read_unlabelled_manifest(tmp_path / "missing.csv")

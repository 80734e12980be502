"""Shared fixtures.

``tiny_dataset``: a prepared dataset made by the real ``prepare_dataset`` from a labels table,
with the expensive head registration replaced by crops drawn directly (a dark ellipsoidal cavity
in tissue; anomalous sides get a bright mass inside it). It lets the training stages run in
seconds while every file format, split and manifest is the real one.
"""
from __future__ import annotations

import copy
import csv
from pathlib import Path

import numpy as np
import pytest

import SinusAnomalyLib.dataset as dataset_module


def synthetic_crop(rng: np.random.Generator, anomalous: bool, size: int = 64) -> np.ndarray:
    """A 64^3 crop in [0, 1]: tissue, a dark air cavity, and for anomalous ones a bright lesion."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij"))
    centre = rng.uniform(-0.1, 0.1, 3)[:, None, None, None]
    radii = rng.uniform(0.35, 0.5, 3)[:, None, None, None]
    cavity = (((grid - centre) / radii) ** 2).sum(0) < 1.0
    crop = 0.6 + 0.05 * rng.standard_normal((size, size, size))
    crop[cavity] = 0.05 + 0.02 * rng.standard_normal(int(cavity.sum()))
    if anomalous:
        lesion_centre = centre[:, 0, 0, 0] + rng.uniform(-0.15, 0.15, 3)
        lesion = ((grid - lesion_centre[:, None, None, None]) ** 2).sum(0) < rng.uniform(0.15, 0.25) ** 2
        crop[lesion & cavity] = 0.9
    return np.clip(crop, 0, 1).astype(np.float32)


class _FakeExtraction:
    def __init__(self, arrays: dict):
        self._arrays = arrays

    def arrays(self) -> dict:
        return self._arrays

    def summary(self) -> dict:
        return {
            "left": {"center_ras_mm": [-24.0, 62.0, -56.0]},
            "right": {"center_ras_mm": [20.0, 58.0, -58.0]},
            "registration": {"quality": 0.7},
        }


def make_tiny_dataset(root: Path, monkeypatch, n_patients: int = 20, seed: int = 0, n_folds: int = 2,
                      n_unlabelled: int = 0) -> Path:
    """Patients p000...; with ``n_unlabelled``, also an unlabelled set u000... (root/unlabelled.csv)
    drawn the same way, its labels withheld."""
    images = root / "images"
    images.mkdir(parents=True)
    labels = {}
    rows = []
    for p in range(n_patients):
        patient = f"p{p:03d}"
        (images / f"{patient}.nii.gz").write_bytes(b"placeholder: extraction is faked in this fixture")
        pattern = p % 4  # 0: normal, 1: left, 2: right, 3: both anomalous
        for side, anomalous in (("left", pattern in (1, 3)), ("right", pattern in (2, 3))):
            labels[(patient, side)] = anomalous
            rows.append((patient, side, int(anomalous), "polyp" if anomalous else "normal"))
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient", "side", "label", "anomaly_type"])
        writer.writerows(rows)
    for u in range(n_unlabelled):
        patient = f"u{u:03d}"
        (images / f"{patient}.nii.gz").write_bytes(b"placeholder: extraction is faked in this fixture")
        labels.update({(patient, "left"): u % 4 in (1, 3), (patient, "right"): u % 4 in (2, 3)})
    if n_unlabelled:
        with open(root / "unlabelled.csv", "w", newline="") as fh:
            csv.writer(fh).writerows([("patient", "image"), *[(f"u{u:03d}", f"u{u:03d}.nii.gz") for u in range(n_unlabelled)]])

    def fake_extract(path, *args, **kwargs):
        patient = Path(path).name.split(".")[0]
        crop_rng = np.random.default_rng([seed, int(patient[1:]), *([1] if patient.startswith("u") else [])])
        return _FakeExtraction({side: synthetic_crop(crop_rng, labels[(patient, side)]) for side in ("left", "right")})

    monkeypatch.setattr(dataset_module, "extract_sinuses", fake_extract)
    out = root / "dataset"
    dataset_module.prepare_dataset(images, root / "labels.csv", out, n_folds=n_folds, test_fraction=0.2,
                                   fractions=(0.5, 1.0), seed=seed, progress=False,
                                   unlabelled=root / "unlabelled.csv" if n_unlabelled else None)
    return out


@pytest.fixture
def two_torch_threads():
    """torch on 2 threads during the test, restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A prepared dataset of 20 patients (40 crops), 2 folds, label fractions 50 and 100 %."""
    mp = pytest.MonkeyPatch()
    try:
        yield make_tiny_dataset(tmp_path_factory.mktemp("tiny"), mp)
    finally:
        mp.undo()


def tiny_fold_context(dataset_dir, run, **changes):
    """Fold 0 of the dataset at ``dataset_dir`` with :data:`TINY_CONFIG`, on the CPU, into ``run``.

    ``changes`` replace top-level settings; a dictionary is merged into that section
    (``finetune={"lr": 0.01}``).
    """
    import torch

    from SinusAnomalyLib.dataset import load_dataset
    from SinusAnomalyTraining import stages
    from SinusAnomalyTraining.config import config_from_dict

    config = copy.deepcopy(TINY_CONFIG)
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    return stages.FoldContext(load_dataset(dataset_dir), config_from_dict(config), run, 0, torch.device("cpu"), progress=False)


TINY_CONFIG = {
    "crop_size": 32,
    "seed": 0,
    "device": "cpu",
    "amp": False,
    "num_workers": 0,
    "folds": [0],
    "fractions": [50, 100],
    "methods": ["none", "residual"],
    "encoder_widths": [8, 16, 32, 64],
    "cae": {"epochs": 3, "batch_size": 4, "lr": 0.003, "channels": [4, 8, 16], "latent_dim": 32},
    "residuals": {"median_kernel": 3, "percentiles": [1, 99], "batch_size": 8},
    "pretrain": {"epochs": 2, "batch_size": 8, "base_lr": 0.2, "base_batch": 256, "warmup_epochs": 1,
                 "weight_decay": 1e-6, "momentum": 0.9,
                 "augment": {"prob": 0.5, "rotate_deg": 10, "scale": 0.1, "translate_voxels": 2, "noise_std": 0.05}},
    "finetune": {"epochs": 2, "batch_size": 8, "lr": 0.001, "weight_decay": 0.01,
                 "augment": {"prob": 0.5, "rotate_deg": 10, "scale": 0.1, "translate_voxels": 2, "noise_std": 0.05}},
    "pretext": {},
    "medicalnet_weights": None,
    "cae_fractions": [],
    "cae_ablation_label_fraction": 10,
    "evaluate": {"bootstrap": 50},
}

"""Focal lesions painted into normal training crops: where they go, how large and bright they are,
which crops and labels they change, that a run painting them is reproducible, and that residual
pretraining's targets mark the lesions painted into its crops."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from conftest import TINY_CONFIG, synthetic_crop, tiny_fold_context
from SinusAnomalyLib.dataset import load_dataset
from SinusAnomalyTraining import stages
from SinusAnomalyTraining.config import ConfigError, FocalLesionSettings, config_from_dict, load_config
from SinusAnomalyTraining.data import CropLoader, SinusCrops
from SinusAnomalyTraining.engine import load_checkpoint
from SinusAnomalyTraining.focal_lesions import FocalLesionPainter, find_cavity, paint_lesion

SETTINGS = FocalLesionSettings(prob=1.0, diameter_mm=(4.0, 24.0), level=(0.25, 1.0))


def _cavity_truth(crop: np.ndarray) -> np.ndarray:
    return crop < 0.3  # synthetic_crop: tissue about 0.6, air about 0.05


def test_the_cavity_is_the_dark_component_at_the_centre_and_a_full_sinus_has_none():
    crop = synthetic_crop(np.random.default_rng(0), anomalous=False, size=32)
    truth = _cavity_truth(crop)
    cavity = find_cavity(crop)
    assert cavity is not None and (cavity.mask & truth).sum() / (cavity.mask | truth).sum() > 0.9
    assert not (cavity.mask[tuple(cavity.wall.T)] == 0).any() and len(cavity.inward) == len(cavity.wall)
    crop[:2] = 0.0  # a dark slab at the crop's edge (padding beyond a field of view) is another component
    assert not find_cavity(crop).mask[:2].any()
    assert find_cavity(np.full((32, 32, 32), 0.6, np.float32)) is None


@pytest.mark.parametrize("size", [32, 64])
def test_a_painted_lesion_sits_on_the_cavity_wall_at_its_size_and_level_and_nothing_outside_changes(size):
    rng = np.random.default_rng(1)
    crop = synthetic_crop(rng, anomalous=False, size=size)
    found = find_cavity(crop)
    cavity = found.mask
    voxel_mm = 64.0 / size
    for _ in range(20):
        painted, mask = paint_lesion(crop, found, rng, SETTINGS)
        assert mask.any() and not (mask & ~cavity).any()
        assert np.array_equal(painted[~cavity], crop[~cavity])  # the partial-volume edge stays inside the cavity
        assert (ndi.binary_dilation(mask) & ~cavity).any()  # attached to the wall
        for blob in ndi.find_objects(ndi.label(mask)[0]):  # each lesion within the largest diameter (+20 % radii, +1 voxel)
            assert max(s.stop - s.start for s in blob) <= 24.0 * 1.2 / voxel_mm + 2
        core = mask & ~ndi.binary_dilation(~mask)  # away from the edge: the drawn level plus the air's noise
        if core.sum() >= 5:
            assert 0.25 - 0.1 < float(np.median(painted[core])) < 1.0 + 1e-6
        assert painted.dtype == np.float32 and painted.min() >= 0.0 and painted.max() <= 1.0


def test_lesion_diameters_follow_the_configured_range():
    """Small settings give small lesions, large settings large ones (volumes in voxels at 1 mm)."""
    rng = np.random.default_rng(2)
    crop = synthetic_crop(rng, anomalous=False, size=64)
    cavity = find_cavity(crop)
    small = FocalLesionSettings(1.0, (4.0, 5.0), (0.5, 0.5))
    large = FocalLesionSettings(1.0, (18.0, 20.0), (0.5, 0.5))
    small_volumes = [paint_lesion(crop, cavity, rng, small)[1].sum() for _ in range(10)]
    large_volumes = [paint_lesion(crop, cavity, rng, large)[1].sum() for _ in range(10)]
    # one or two ellipsoids of diameter d (radii within 20 %), clipped by the wall: at most 2 * pi/6 * (1.2 d)^3
    assert max(small_volumes) <= 2 * np.pi / 6 * (1.2 * 5.0) ** 3
    assert min(large_volumes) > max(small_volumes)


def _crops(labels) -> SinusCrops:
    rng = np.random.default_rng(3)
    volumes = np.stack([synthetic_crop(rng, anomalous=bool(y), size=32) for y in labels])[:, None]
    return SinusCrops(torch.from_numpy(volumes).half(), np.asarray(labels))


def test_the_painter_relabels_only_the_normal_crops_it_paints_and_is_reproducible():
    data = _crops([0, 0, 0, 0, 1, 1])
    rows = torch.arange(6)
    painter = FocalLesionPainter(data.volumes, data.labels, SETTINGS)
    assert sorted(painter.cavities) == [0, 1, 2, 3]
    torch.manual_seed(0)
    volumes, labels = painter(data.volumes[rows], data._labels[rows], rows)
    assert labels.tolist() == [1, 1, 1, 1, 1, 1]  # prob 1: every normal crop painted
    for k in range(4):
        assert not torch.equal(volumes[k], data.volumes[k])
    assert torch.equal(volumes[4:], data.volumes[4:])  # anomalous crops untouched
    assert data.labels.tolist() == [0, 0, 0, 0, 1, 1]  # the held labels never change
    torch.manual_seed(0)
    again, _ = painter(data.volumes[rows], data._labels[rows], rows)
    assert torch.equal(again, volumes)
    off = FocalLesionPainter(data.volumes, data.labels, FocalLesionSettings(0.0, (4.0, 24.0), (0.25, 1.0)))
    state = torch.random.get_rng_state()
    same, same_labels = off(data.volumes[rows], data._labels[rows], rows)
    assert torch.equal(same, data.volumes) and same_labels.tolist() == data.labels.tolist()
    assert torch.equal(torch.random.get_rng_state(), state)  # nothing drawn when off


def test_the_loader_paints_before_it_augments_and_serves_painted_crops_as_anomalous():
    data = _crops([0, 0, 0, 0, 0, 1])
    painter = FocalLesionPainter(data.volumes, data.labels, FocalLesionSettings(0.5, (4.0, 24.0), (0.25, 1.0)))
    torch.manual_seed(0)
    served = list(CropLoader(data, 6, False, 0, torch.device("cpu"), paint=painter))[0]
    changed = [not torch.equal(served["image"][k], data.volumes[k, :1].float()) for k in range(6)]
    assert served["label"].tolist() == [int(c) for c in changed[:5]] + [1]  # a crop is anomalous iff painted (or it was)
    assert 0 < sum(changed[:5]) < 5


def test_settings_are_checked_naming_the_key_and_file(tmp_path):
    assert load_config("paper").finetune.focal_lesions.prob == 0.0  # off in the paper's recipe
    path = tmp_path / "mine.json"
    for bad, key in (({"prob": 1.5}, "prob"), ({"diameter_mm": [10, 4]}, "diameter_mm"),
                     ({"diameter_mm": [0, 4]}, "diameter_mm"), ({"level": [0.2, 1.5]}, "level"), ({"level": [0.5]}, "level")):
        path.write_text(json.dumps({"finetune": {"focal_lesions": bad}}))
        with pytest.raises(ConfigError, match=rf"'finetune\.focal_lesions\.{key}'") as info:
            load_config(path)
        assert str(path) in str(info.value)


def test_fine_tuning_with_focal_lesions_is_reproducible_and_differs_from_without(tiny_dataset, tmp_path):
    outputs = {}
    for name, prob in (("a", 0.5), ("b", 0.5), ("off", 0.0), ("off2", 0.0)):
        config = copy.deepcopy(TINY_CONFIG)
        config["finetune"]["focal_lesions"] = {"prob": prob, "diameter_mm": [4, 24], "level": [0.25, 1]}
        ctx = stages.FoldContext(load_dataset(tiny_dataset), config_from_dict(config), tmp_path / name, 0, torch.device("cpu"),
                                 progress=False)
        outputs[name] = stages.finetune(ctx, "none", 100).read_bytes()
    assert outputs["a"] == outputs["b"]
    assert outputs["a"] != outputs["off"]


def test_a_cosine_schedule_warms_up_then_decays_to_zero_and_an_unknown_one_is_refused(tiny_dataset, tmp_path):
    """finetune.schedule (with the focal lesions, the default model's recipe): the learning rate of
    the last epoch is near 0, where a constant schedule keeps the configured rate."""
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"finetune": {"schedule": "linear"}}))
    with pytest.raises(ConfigError, match=r"'finetune\.schedule' must be one of constant, cosine"):
        load_config(path)
    assert load_config("paper").finetune.schedule == "constant"
    rates = {}
    for schedule in ("constant", "cosine"):
        config = copy.deepcopy(TINY_CONFIG)
        config["finetune"] = {**config["finetune"], "epochs": 4, "schedule": schedule}
        ctx = stages.FoldContext(load_dataset(tiny_dataset), config_from_dict(config), tmp_path / schedule, 0, torch.device("cpu"),
                                 progress=False)
        history = json.loads((stages.finetune(ctx, "none", 100).parent / "history.json").read_text(encoding="utf-8"))
        rates[schedule] = [row["lr"] for row in history]
    assert rates["constant"] == [0.001] * 4
    assert rates["cosine"][-1] < 0.1 * 0.001 and max(rates["cosine"]) <= 0.001


# --------------------------------------------------------------------------- residual pretraining

def test_a_painted_crops_residual_target_marks_its_lesion_and_other_targets_are_untouched():
    data = _crops([0, 0, 0, 1])
    residual = torch.full_like(data.volumes, 0.2)
    both = SinusCrops(torch.cat([data.volumes, residual], dim=1), np.zeros(4))  # pretraining: no labels known
    painter = FocalLesionPainter(both.volumes, both.labels, FocalLesionSettings(0.5, (4.0, 24.0), (0.25, 1.0)))
    rows = torch.arange(4)
    torch.manual_seed(1)
    served, _ = painter(both.volumes[rows], both._labels[rows], rows)
    painted = [k for k in range(4) if not torch.equal(served[k, 0], both.volumes[k, 0])]
    assert 0 < len(painted) < 4
    for k in range(4):
        target = served[k, 1].float()
        if k in painted:  # the lesion's voxels (the image changed there) are 1 in the target, the rest keep 0.2
            lesion = (served[k, 0] != both.volumes[k, 0]) & (target == 1)
            assert lesion.any()
            assert torch.all((target == 1) | ((target - 0.2).abs() < 1e-3))
        else:
            assert torch.equal(served[k], both.volumes[k])


def test_residual_pretraining_with_painted_lesions_is_reproducible_differs_and_records_the_setting(tiny_dataset, tmp_path):
    done, weights = {}, {}
    for name, prob in (("a", 0.5), ("b", 0.5), ("off", 0.0)):
        ctx = tiny_fold_context(tiny_dataset, tmp_path / name,
                                pretrain={"focal_lesions": {"prob": prob, "diameter_mm": [4, 24], "level": [0.25, 1]}})
        stages.train_cae(ctx)
        stages.compute_residuals(ctx)
        weights[name] = load_checkpoint(stages.pretrain(ctx))["model"]
        done[name] = json.loads((ctx.pretrain_dir / "done.json").read_text(encoding="utf-8"))
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["off"][k]) for k in weights["a"])
    assert done["a"]["made_from"]["pretrain"]["focal_lesions"]["prob"] == 0.5
    assert "focal_lesions" not in done["off"]["made_from"]["pretrain"]  # off: stages made before the option stay valid


def test_pretraining_paint_settings_are_checked_and_off_by_default(tmp_path):
    assert load_config("paper").pretrain.focal_lesions.prob == 0.0
    painting = config_from_dict({"pretrain": {"focal_lesions": {"prob": 0.5}}}).pretrain
    assert painting.made_from(paints=True)["focal_lesions"]["prob"] == 0.5
    assert painting.made_from(paints=False) == load_config("paper").pretrain.made_from(paints=True)  # baselines ignore it
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"pretrain": {"focal_lesions": {"prob": 2}}}))
    with pytest.raises(ConfigError, match=r"'pretrain\.focal_lesions\.prob'") as info:
        load_config(path)
    assert str(path) in str(info.value)

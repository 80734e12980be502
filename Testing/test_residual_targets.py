"""Residual pretraining's targets and the floor of its loss (issue 28, items 1 and 2).

* the floor: BCE against soft targets cannot go below the targets' own mean binary entropy; a
  prediction equal to the target gives exactly it; histories record it and the excess over it, and
  the evaluation report shows them (old histories without them still load);
* the cohort-scaled target: one scale from the CAE's training normals, so a clean normal crop stays
  small where the paper's per-crop scaling stretches it over [0, 1], and an anomaly keeps its magnitude;
* the ``residuals.scaling`` setting and the focused grid's configurations.
"""
from __future__ import annotations

import copy
import csv
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from SinusAnomalyLib.errors import ConfigError
from SinusAnomalyLib.residuals import cohort_scale, residual_maps, scale_by, scale_per_crop
from SinusAnomalyLib.splits import DEFAULT_FRACTIONS
from SinusAnomalyTraining import engine, plots, report, stages
from SinusAnomalyTraining.config import config_from_dict, load_config
from SinusAnomalyTraining.engine import FLOOR, Checkpointer, fit
from SinusAnomalyTraining.pretext.losses import target_entropy
from conftest import TINY_CONFIG, tiny_fold_context

# --------------------------------------------------------------------------- the entropy floor

def _soft_targets(seed: int = 0, shape=(3, 1, 6, 6, 6)) -> torch.Tensor:
    t = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
    t[0, 0, :2] = 0.0  # hard zeros and ones as residual maps have them (clipped percentiles)
    t[1, 0, :2] = 1.0
    return t


def test_a_prediction_equal_to_the_target_gives_exactly_the_floor():
    t = _soft_targets()
    floor = target_entropy(t)
    assert floor.dtype == torch.float32 and floor.dim() == 0
    assert torch.equal(F.binary_cross_entropy(t, t), floor)  # exactly: excess 0
    assert (F.binary_cross_entropy(t, t) - floor).item() == 0.0
    # through the logits the pretraining predicts with: the same to rounding
    logits = torch.logit(t.double().clamp(1e-12, 1 - 1e-12))
    assert F.binary_cross_entropy_with_logits(logits, t.double()).item() == pytest.approx(floor.item(), abs=1e-6)
    # and by the definition: the mean over every voxel of -(t ln t + (1 - t) ln(1 - t)), 0 ln 0 = 0
    d = t.double()
    expected = -(torch.special.xlogy(d, d) + torch.special.xlogy(1 - d, 1 - d)).mean()
    assert floor.item() == pytest.approx(expected.item(), rel=1e-6)


def test_other_predictions_give_a_positive_excess():
    t = _soft_targets(1)
    floor = target_entropy(t).item()
    generator = torch.Generator().manual_seed(2)
    for scale in (0.01, 0.3, 3.0):
        logits = torch.logit(t.clamp(1e-4, 1 - 1e-4)) + scale * torch.randn(t.shape, generator=generator)
        assert F.binary_cross_entropy_with_logits(logits, t).item() - floor > 0
        p = torch.rand(t.shape, generator=generator).clamp(1e-4, 1 - 1e-4)
        assert F.binary_cross_entropy(p, t).item() - floor > 0


def test_known_floors():
    assert target_entropy(torch.full((2, 1, 4, 4, 4), 0.5)).item() == pytest.approx(math.log(2), rel=1e-6)
    hard = (torch.rand(2, 1, 4, 4, 4, generator=torch.Generator().manual_seed(3)) > 0.5).float()
    assert target_entropy(hard).item() == 0.0  # hard targets: no floor above 0
    # under autocast (bfloat16 on a CPU) it is still computed in float32, from the same values
    t = _soft_targets(4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = target_entropy(t)
    assert inside.dtype == torch.float32 and torch.equal(inside, target_entropy(t))


class _ConstantLogits(torch.nn.Module):
    """Predicts one logit everywhere: at logit(0.3) exactly the constant 0.3 target."""

    def __init__(self, value: float):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(float(value)))

    def forward(self, x):
        return self.value.expand_as(x)


def _bce_with_floor(net, batch, device):
    return F.binary_cross_entropy_with_logits(net(batch["x"]), batch["t"]), {FLOOR: target_entropy(batch["t"])}


def test_fit_records_the_floor_and_the_excess_for_training_and_validation(tmp_path):
    t = torch.full((4, 1, 4, 4, 4), 0.3)
    batches = [{"x": torch.zeros_like(t), "t": t}] * 2
    floor = target_entropy(t).item()
    # a prediction equal to the target: excess 0 (the logits' rounding only), in both splits
    model = _ConstantLogits(math.log(0.3 / 0.7))
    history = fit(model, batches, batches, _bce_with_floor, 2, torch.optim.SGD(model.parameters(), lr=0.0), None,
                  torch.device("cpu"), Checkpointer(tmp_path / "exact"), progress=False, log=lambda _: None)
    for row in history:
        assert list(row) == ["epoch", "train_loss", "val_loss", "lr", "train_floor", "train_excess", "val_floor", "val_excess"]
        assert row["train_floor"] == pytest.approx(floor, rel=1e-6) and row["val_floor"] == pytest.approx(floor, rel=1e-6)
        assert abs(row["train_excess"]) < 1e-6 and abs(row["val_excess"]) < 1e-6
    # another prediction: excess = loss - floor > 0, written to history.json, history.csv and the checkpoint
    model = _ConstantLogits(2.0)
    lines = []
    history = fit(model, batches, batches, _bce_with_floor, 2, torch.optim.SGD(model.parameters(), lr=0.5), None,
                  torch.device("cpu"), Checkpointer(tmp_path / "off"), progress=False, log=lines.append)
    for row in history:
        assert row["train_excess"] == row["train_loss"] - row["train_floor"] > 0
        assert row["val_excess"] == row["val_loss"] - row["val_floor"] > 0
    assert history[1]["val_excess"] < history[0]["val_excess"]  # it learnt towards the target
    assert json.loads((tmp_path / "off" / "history.json").read_text(encoding="utf-8")) == history
    with open(tmp_path / "off" / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["val_excess"]) == pytest.approx(history[-1]["val_excess"])
    assert engine.load_checkpoint(tmp_path / "off" / "last.pt")["history"] == history
    assert "train_excess" in lines[-1] and "(floor " in lines[-1]


def test_a_loss_without_a_floor_gets_no_floor_columns():
    batches = [{"x": torch.zeros(2, 1, 4, 4, 4), "t": torch.full((2, 1, 4, 4, 4), 0.3)}]
    model = _ConstantLogits(0.0)

    def plain(net, batch, device):
        return F.l1_loss(torch.sigmoid(net(batch["x"])), batch["t"])

    history = fit(model, batches, batches, plain, 1, torch.optim.SGD(model.parameters(), lr=0.1), None,
                  torch.device("cpu"), None, progress=False, log=lambda _: None)
    assert list(history[0]) == ["epoch", "train_loss", "val_loss", "lr"]
    with pytest.raises(TypeError, match="named scalar tensors"):
        fit(model, batches, None, lambda n, b, d: (plain(n, b, d), {FLOOR: torch.zeros(2)}), 1,
            torch.optim.SGD(model.parameters(), lr=0.1), None, torch.device("cpu"), None, progress=False, log=lambda _: None)


# --------------------------------------------------------------------------- the cohort-scaled target

def _raw_residuals(seed: int = 0):
    """Raw residuals of 12 normal crops reconstructed more or less well (half-normal noise of
    standard deviation 0.004-0.03), and of 3 anomalous crops: the backgrounds of normal crops 0, 6
    and 11 (their twins) plus a 6^3 blob of 0.4 that the CAE cannot reconstruct."""
    rng = np.random.default_rng(seed)
    sigmas = np.linspace(0.004, 0.03, 12)
    normals = np.abs(rng.normal(0.0, 1.0, (12, 1, 16, 16, 16))) * sigmas[:, None, None, None, None]
    twins = [0, 6, 11]
    blob = np.zeros((16, 16, 16), bool)
    blob[5:11, 5:11, 5:11] = True
    anomalous = normals[twins].copy()
    anomalous[:, 0, blob] += 0.4
    return torch.from_numpy(normals.astype(np.float32)), torch.from_numpy(anomalous.astype(np.float32)), twins, blob


def _means(maps: torch.Tensor) -> np.ndarray:
    return maps.mean(dim=(1, 2, 3, 4)).numpy()


@pytest.mark.parametrize("kernel", [1, 3])
def test_cohort_scaling_keeps_normal_crops_below_anomalous_ones(kernel):
    normals, anomalous, twins, blob = _raw_residuals()
    low, high = cohort_scale(normals, (1, 99))  # from the normal crops only, as the stage takes it from the CAE's
    assert (low, high) == pytest.approx(tuple(np.percentile(normals.numpy().ravel(), [1, 99])))
    cohort_normal, cohort_anomalous = scale_by(normals, low, high, kernel), scale_by(anomalous, low, high, kernel)
    per_crop_normal, per_crop_anomalous = scale_per_crop(normals, (1, 99), kernel), scale_per_crop(anomalous, (1, 99), kernel)
    for maps in (cohort_normal, cohort_anomalous):
        assert maps.min() >= 0.0 and maps.max() <= 1.0
    # cohort scale: each anomalous crop above its normal twin (same background), its anomaly at full magnitude
    assert (_means(cohort_anomalous) > _means(cohort_normal)[twins]).all()
    inner = np.zeros_like(blob)
    inner[6:10, 6:10, 6:10] = True  # the blob's inside, where the median filter leaves it whole
    assert cohort_anomalous[:, 0, inner].min() == 1.0
    assert cohort_normal[:, 0, inner].mean() < 0.5
    # per crop (the paper's): every normal crop is stretched over [0, 1] and the anomalous crops' backgrounds
    # squeezed below their anomaly, so each normal crop scores ABOVE its anomalous twin
    assert (_means(per_crop_normal)[twins] > _means(per_crop_anomalous)).all()
    # the cleanest normal crop spans the full range per crop, and stays small with the cohort's scale
    cleanest = 0
    assert _means(per_crop_normal)[cleanest] > 0.25 and torch.quantile(per_crop_normal[cleanest].flatten(), 0.99) > 0.4
    assert _means(cohort_normal)[cleanest] < 0.06 and cohort_normal[cleanest].max() < 0.3
    if kernel == 1:  # unfiltered: exactly 0 to 1 per crop
        assert per_crop_normal[cleanest].min() == 0.0 and per_crop_normal[cleanest].max() == 1.0


def test_residual_maps_with_a_scale_use_it_for_every_crop():
    class Zero(torch.nn.Module):
        def forward(self, x):
            return torch.zeros_like(x)

    images = torch.rand(3, 1, 8, 8, 8, generator=torch.Generator().manual_seed(5))
    assert torch.equal(residual_maps(Zero(), images, (1, 99), 1, scale=(0.0, 2.0)), (images / 2.0).clamp(0, 1))
    assert torch.equal(residual_maps(Zero(), images, (1, 99), 3), scale_per_crop(images, (1, 99), 3))


def test_cohort_scaled_residual_stage_records_its_scale_and_recomputes_when_the_option_changes(tiny_dataset, tmp_path):
    ctx = tiny_fold_context(tiny_dataset, tmp_path)
    stages.train_cae(ctx)
    stages.compute_residuals(ctx)
    per_crop_done = json.loads((ctx.residuals_dir / "done.json").read_text(encoding="utf-8"))
    assert per_crop_done["made_from"]["residuals"]["scaling"] == "per_crop"
    assert json.loads((ctx.residuals_dir / "residuals.json").read_text(encoding="utf-8"))["scale"] == {"scaling": "per_crop", "percentiles": [1, 99]}

    cohort = tiny_fold_context(tiny_dataset, tmp_path, residuals={"scaling": "cohort"})
    cae_done = (cohort.cae_dir / "done.json").stat().st_mtime_ns
    stages.train_cae(cohort)  # the option does not touch the CAE: its stage is skipped
    assert (cohort.cae_dir / "done.json").stat().st_mtime_ns == cae_done
    stages.compute_residuals(cohort)
    done = json.loads((cohort.residuals_dir / "done.json").read_text(encoding="utf-8"))
    assert done["made_from"]["residuals"]["scaling"] == "cohort" and done["made_from"] != per_crop_done["made_from"]
    assert done["residuals_sha256"] != per_crop_done["residuals_sha256"]  # recomputed, not skipped
    meta = json.loads((cohort.residuals_dir / "residuals.json").read_text(encoding="utf-8"))
    scale = meta["scale"]
    assert scale["scaling"] == "cohort" and scale["percentiles"] == [1, 99] and 0 <= scale["low"] < scale["high"]
    rows = stages.cae_training_rows(cohort)
    assert scale["n_crops"] == len(rows) == json.loads((cohort.cae_dir / "done.json").read_text(encoding="utf-8"))["n_train"]
    # reproducible from what residuals.json records: the same percentiles of the CAE training normals' raw residuals
    cae, _ = stages.load_cae(cohort)
    images = torch.from_numpy(stages.resize_crops(cohort.dataset.crops[np.asarray(rows)], 32))[:, None]
    with torch.no_grad():
        raw = (images - cae(images)).abs()
    assert (scale["low"], scale["high"]) == pytest.approx(cohort_scale(raw, (1, 99)))
    residuals = stages.load_residuals(cohort)
    row = cohort.dataset.manifest[5]
    image = torch.from_numpy(stages.resize_crops(cohort.dataset.crops[5:6], 32))[:, None]
    expected = residual_maps(cae, image, (1, 99), 3, scale=(scale["low"], scale["high"]))[0, 0].numpy()
    assert np.allclose(residuals[row.sample_id], expected, atol=2e-3)  # stored as float16
    stacked = np.stack(list(residuals.values()))
    assert stacked.min() >= 0.0 and stacked.max() <= 1.0
    # pretraining on them records the floor and the excess, training and validation, every epoch
    stages.pretrain(cohort)
    history = json.loads((cohort.pretrain_dir / "history.json").read_text(encoding="utf-8"))
    assert len(history) == TINY_CONFIG["pretrain"]["epochs"]
    for entry in history:
        for split in ("train", "val"):
            assert 0 < entry[f"{split}_floor"] < math.log(2)
            assert entry[f"{split}_excess"] == entry[f"{split}_loss"] - entry[f"{split}_floor"] > 0


# --------------------------------------------------------------------------- reports

def _history(path, epochs: int, floor: bool, val: bool = True):
    rows = []
    for e in range(epochs):
        row = {"epoch": e + 1, "train_loss": 0.7 - 0.05 * e, "val_loss": (0.72 - 0.04 * e) if val else None, "lr": 0.01}
        if floor:
            row.update(train_floor=0.42, train_excess=row["train_loss"] - 0.42)
            if val:
                row.update(val_floor=0.4, val_excess=row["val_loss"] - 0.4)
        rows.append(row)
    path.mkdir(parents=True, exist_ok=True)
    (path / "history.json").write_text(json.dumps(rows))


def test_the_report_shows_the_floor_and_excess_and_reads_old_histories(tmp_path):
    config = copy.deepcopy(TINY_CONFIG)
    config.update(methods=["none", "residual", "byol"], folds=[0, 1], pretext={"byol": {}})
    config = config_from_dict(config)
    dataset = SimpleNamespace(splits=SimpleNamespace(folds=[0, 1]), unlabelled=[])
    _history(tmp_path / "fold0" / "pretrain", 3, floor=True)
    _history(tmp_path / "fold1" / "pretrain", 2, floor=False)  # written before the floor was recorded
    _history(tmp_path / "fold0" / "pretrain_byol", 3, floor=False)
    entries = report.pretraining_losses(config, dataset, tmp_path, [0, 1])  # fold 1 of byol: no history, left out
    assert [(e["method"], e["fold"], e["has_floor"]) for e in entries] == [
        ("residual", 0, True), ("residual", 1, False), ("byol", 0, False)]
    assert entries[0]["rows"][-1]["val_excess"] == pytest.approx(0.64 - 0.4)
    assert entries[1]["rows"][0]["train_floor"] is None and entries[1]["rows"][0]["train_loss"] == 0.7

    text = "\n".join(report.pretraining_loss_lines(entries))
    assert "## Pretraining loss" in text
    assert "| residual | 0 | 3 | 0.600 | 0.420 | 0.280 → 0.180 | 0.640 | 0.400 | 0.320 → 0.240 |" in text
    assert "| residual | 1 | 2 | 0.650 | not recorded | not recorded | 0.680 | not recorded | not recorded |" in text
    assert "| byol | 0 | 3 | 0.600 | no floor | — | 0.640 | no floor | — |" in text
    assert report.pretraining_loss_lines([]) == []

    report._write_pretraining_losses(tmp_path, entries)
    with open(tmp_path / "pretraining_loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(report.PRETRAINING_LOSS_COLUMNS) and len(rows) == 3 + 2 + 3
    assert rows[3]["train_floor"] == "" and float(rows[0]["train_excess"]) == pytest.approx(0.28)
    figure = plots.plot_pretraining_losses(entries, tmp_path / "pretraining_loss.png")
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- configuration

def test_residual_scaling_is_per_crop_by_default_and_cohort_loads(tmp_path):
    assert load_config("paper").residuals.scaling == "per_crop"
    assert load_config("demo").residuals.scaling == "per_crop"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"residuals": {"scaling": "cohort"}}))
    config = load_config(path)
    assert config.residuals.scaling == "cohort" and config.residuals.as_dict()["scaling"] == "cohort"


@pytest.mark.parametrize("value", ["global", "per-crop", 1, None])
def test_a_bad_residual_scaling_is_refused_naming_the_file_and_the_choices(value, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"residuals": {"scaling": value}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message and "'residuals.scaling' must be one of per_crop, cohort" in message and repr(value) in message


@pytest.mark.parametrize("percentiles", [[99, 1], [5, 5], [1, 101]])
def test_residual_percentiles_must_be_increasing_within_0_to_100(percentiles, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"residuals": {"percentiles": percentiles}}))
    with pytest.raises(ConfigError, match=r"'residuals\.percentiles' must be \[low, high\]") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_the_focused_grid_configs_differ_only_in_the_residual_scaling():
    paper, cohort = load_config("grid-residual"), load_config("grid-residual-cohort")
    assert paper.residuals.scaling == "per_crop" and cohort.residuals.scaling == "cohort"
    assert paper.methods == ("none", "residual", "byol") and paper.folds == (0, 1, 2, 3, 4)
    assert paper.fractions == (10, 20) and {f / 100 for f in paper.fractions} <= set(DEFAULT_FRACTIONS)
    assert paper.crop_size == 32 and paper.encoder_widths == (16, 32, 64, 128) and paper.pretrain.epochs > 5
    a, b = paper.as_dict(), cohort.as_dict()
    differing = {k for k in a if a[k] != b[k]}
    assert differing <= {"residuals", "description", "source"}
    assert {k for k in a["residuals"] if a["residuals"][k] != b["residuals"][k]} == {"scaling"}

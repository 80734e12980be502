"""The heat map on the normal scale, the validated label and the out-of-distribution check (issue 26).

The calibration code runs on drawn crops (a dark cavity in tissue, a bright lesion) with an ideal
stand-in for the CAE: it reconstructs every voxel as the normal tissue or air level, so its
residual is the noise on a normal crop and the lesion's contrast on an anomalous one. That keeps
these tests to seconds; what a trained CAE gives is measured by the demo (README).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from SinusAnomalyLib.bundlefile import describe_bundle
from SinusAnomalyLib.heatmap import VOLUME_AS_REGION, VOLUME_TOLERANCE, ood_measure
from SinusAnomalyLib.residuals import scale_per_crop
from SinusAnomalyTraining import calibration
from SinusAnomalyTraining.heatmap_report import heatmap_lines
from test_reliability import bundle, extraction, head, rewrite_bundle  # noqa: F401  (fixtures)

SIZE = 32  # the model's input size in these tests; crops are 64^3 as everywhere


class NormalLevels(torch.nn.Module):
    """Stand-in CAE: each voxel reconstructed as normal tissue (0.6) or air (0.05)."""

    def forward(self, x):
        return torch.where(x > 0.3, torch.tensor(0.6), torch.tensor(0.05))


def drawn_crop(rng: np.random.Generator, lesion: str | None, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(64^3 crop in [0, 1], cavity mask, lesion mask): a dark cavity in tissue; a polyp-like ball
    or the whole cavity filled ("full") at a bright level."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 64)] * 3, indexing="ij"))
    centre = rng.uniform(-0.1, 0.1, 3)[:, None, None, None]
    cavity = (((grid - centre) / rng.uniform(0.35, 0.5, 3)[:, None, None, None]) ** 2).sum(0) < 1.0
    crop = 0.6 + noise * rng.standard_normal(cavity.shape)
    crop[cavity] = 0.05 + 0.4 * noise * rng.standard_normal(int(cavity.sum()))
    mask = np.zeros_like(cavity)
    if lesion == "full":
        mask = cavity.copy()
    elif lesion == "polyp":
        mask = cavity & ((((grid - centre) - rng.uniform(-0.1, 0.1, 3)[:, None, None, None]) ** 2).sum(0) < 0.2 ** 2)
    crop[mask] = 0.9 + 0.02 * rng.standard_normal(int(mask.sum()))
    return np.clip(crop, 0, 1).astype(np.float32), cavity, mask


def grown(cavity: np.ndarray) -> np.ndarray:
    """The label's search region, as inference grows the reference cavity (4 mm)."""
    return ndi.binary_dilation(cavity, iterations=4)


@pytest.fixture(scope="module")
def fitted():
    """Scale on normal crops, label level on polyp crops, OOD range on a training-like mix."""
    rng = np.random.default_rng(0)
    cae = NormalLevels()
    normals = np.stack([drawn_crop(rng, None)[0] for _ in range(8)])
    scale = calibration.normal_scale(calibration.residuals_of(cae, normals, SIZE))
    polyps = [drawn_crop(rng, "polyp") for _ in range(6)]
    heats = list(calibration.heat_in_crop(scale, calibration.residuals_of(cae, np.stack([c for c, _, _ in polyps]), SIZE), 3))
    level = calibration.choose_level(heats, [grown(c) for _, c, _ in polyps], [m for _, _, m in polyps])
    training = np.concatenate([normals, np.stack([c for c, _, _ in polyps])])
    return cae, scale, level, calibration.ood_range(calibration.residuals_of(cae, training, SIZE))


def test_a_normal_sinus_stays_below_the_label_level_and_a_lesion_reaches_it(fitted):
    cae, scale, level, _ = fitted
    rng = np.random.default_rng(1)
    normal = drawn_crop(rng, None)[0]
    polyp, _, mask = drawn_crop(rng, "polyp")
    heat = calibration.heat_in_crop(scale, calibration.residuals_of(cae, np.stack([normal, polyp]), SIZE), 3)
    assert 0.05 <= level <= 0.95
    assert (heat[0] >= level).mean() < 0.001  # quiet almost everywhere
    assert (heat[1][mask] >= level).mean() > 0.8  # the lesion bright
    # the paper's per-crop scale makes the same normal crop's strongest residuals as bright as a lesion's
    raw = torch.from_numpy(calibration.residuals_of(cae, normal[None], SIZE))[:, None]
    assert (scale_per_crop(raw, (1, 99), 3).numpy() >= level).mean() > 0.01


def test_a_fully_occupied_sinus_gets_a_label_volume_within_the_stated_error(fitted):
    cae, scale, level, _ = fitted
    crop, cavity, mask = drawn_crop(np.random.default_rng(2), "full")
    heat = calibration.heat_in_crop(scale, calibration.residuals_of(cae, crop[None], SIZE), 3)[0]
    dice, volume_error = calibration.label_scores(heat, grown(cavity), mask, level)
    assert abs(volume_error) <= VOLUME_TOLERANCE and dice > 0.8


def test_validation_summary_shows_volume_in_ml_only_when_most_lesions_are_within_tolerance(fitted):
    cae, scale, level, _ = fitted
    rng = np.random.default_rng(3)
    lesions = [drawn_crop(rng, kind) for kind in ("full", "polyp", "polyp")]
    heats = list(calibration.heat_in_crop(scale, calibration.residuals_of(cae, np.stack([c for c, _, _ in lesions]), SIZE), 3))
    cavities, truths = [grown(c) for _, c, _ in lesions], [m for _, _, m in lesions]
    good = calibration.validate_labels(level, heats, cavities, truths, ["fully_occupied", "polyp", "polyp"])
    assert good["n_lesions"] == 3 and set(good["by_kind"]) == {"fully_occupied", "polyp"}
    assert good["within_tolerance"] > 0.5 and good["median_dice"] > 0.5
    # a level no lesion reaches: every volume off by -100 %
    bad = calibration.validate_labels(1.01, heats, cavities, truths, ["fully_occupied", "polyp", "polyp"])
    assert bad["within_tolerance"] == 0.0 and bad["median_volume_error"] == -1.0


def test_report_says_whether_the_volume_is_millilitres_or_a_coarse_region(fitted):
    cae, scale, level, ranged = fitted
    crops = [drawn_crop(np.random.default_rng(5), kind) for kind in ("full", "polyp", None)]
    heats = list(calibration.heat_in_crop(scale, calibration.residuals_of(cae, np.stack([c for c, _, _ in crops]), SIZE), 3))
    cavities, truths = [grown(c) for _, c, _ in crops], [m for _, _, m in crops]
    meta = {"residual_threshold": level, "heatmap": scale.as_meta("8 drawn normal crops"),
            "ood": {**ranged.as_meta("14 drawn crops"), "test_fired": 1, "test_sinuses": 3}}
    for shown, words in (("mL", "Volume shown as: millilitres"), ("coarse region", "a coarse region, not millilitres")):
        meta["label_validation"] = {"level_chosen_on": "drawn crops", "volume_shown_as": shown, "volume_rule": "the rule",
                                    "test": calibration.validate_labels(level, heats[:2], cavities[:2], truths[:2], ["a", "b"]),
                                    "heat_levels_test": calibration.heat_levels(level, heats[2:], cavities[2:], heats[:2], truths[:2])}
        text = "\n".join(heatmap_lines(meta, {"other heads": (2, 5)}))
        assert words in text and "| all | 2 |" in text and "fired on 1 of 3 held-out" in text and "2 of 5 assessed" in text
        assert f"(shown as {'mL' if shown == 'mL' else 'a coarse region'})" in describe_bundle(meta)  # Slicer's tooltip, export's output


def test_ood_fires_outside_the_training_range_and_not_on_a_training_like_crop(fitted):
    cae, _, _, ranged = fitted
    rng = np.random.default_rng(4)
    like = [drawn_crop(rng, kind)[0] for kind in (None, "polyp")]
    t2_like = 1.0 - drawn_crop(rng, None)[0]  # another contrast: dark tissue, bright cavity
    noisy = drawn_crop(rng, None, noise=0.25)[0]  # another scanner's noise
    measures = ood_measure(torch.from_numpy(calibration.residuals_of(cae, np.stack([*like, t2_like, noisy]), SIZE)))
    assert [ranged.outside(float(v)) for v in measures] == [False, False, True, True]


def test_bundles_with_and_without_the_calibration_blocks(bundle, extraction, tmp_path):  # noqa: F811
    """An old bundle (no blocks) still classifies: per-crop heat map, volume as a coarse region,
    no OOD check, each said; with the blocks the result carries the measure and its verdict."""
    from SinusAnomalyLib.bundle import load_bundle
    from SinusAnomalyLib.imageio import read_image
    from SinusAnomalyLib.inference import classify_extraction, result_summary

    image = read_image(extraction.source)
    old = load_bundle(bundle)
    result = classify_extraction(image, extraction, old)
    summary = result_summary(result, old)
    assert summary["label_map"]["heatmap_scale"] == "per crop" and summary["label_map"]["volume"] == VOLUME_AS_REGION
    assert all(summary["sides"][s]["anomalous_volume_ml"] is None and summary["sides"][s]["out_of_distribution"] is None
               for s in ("left", "right"))
    assert any("scaled per crop" in w for w in result.warnings) and any("no training range" in w for w in result.warnings)

    errors = [result.sides[s].reconstruction_error for s in ("left", "right")]
    assert errors[0] != errors[1]
    blocks = {"heatmap": {"residual_median": 0.01, "residual_high": 0.2},
              "ood": {"low": 0.0, "high": float(np.mean(errors)), "margin": 1.0}}  # the larger error lies outside
    new = load_bundle(rewrite_bundle(bundle, tmp_path / "calibrated.sabundle", edit_meta=lambda m: m.update(blocks)))
    result = classify_extraction(image, extraction, new)
    flags = [result.sides[s].out_of_distribution for s in ("left", "right")]
    assert flags == [e > np.mean(errors) for e in errors]
    assert sum("unlike the bundle's training sinuses" in w for w in result.warnings) == sum(flags)
    assert result_summary(result, new)["label_map"]["heatmap_scale"] == "normal sinuses"
    assert not any("scaled per crop" in w for w in result.warnings)
    bad = rewrite_bundle(bundle, tmp_path / "bad.sabundle", edit_meta=lambda m: m.update(ood={"low": 1, "high": 0, "margin": 1}))
    with pytest.raises(Exception, match="'ood' needs"):
        load_bundle(bad)
    assert json.loads(json.dumps(result_summary(result, new), allow_nan=False))["sides"]["left"]["reconstruction_error"] > 0


def test_slicer_text_shows_a_coarse_region_not_millilitres_and_flags_a_side_unlike_the_training_data():
    module_dir = str(Path(__file__).resolve().parents[1] / "SinusAnomaly")  # where Slicer finds the module's libraries
    if module_dir not in sys.path:
        sys.path.insert(0, module_dir)
    from SinusAnomalyMRMLLib import resultinfo

    side = {"probability": 0.9, "spread": 0.01, "coverage": 1.0, "anomalous_volume_ml": None}
    result = {"sides": {"left": {**side, "verdict": "anomalous", "out_of_distribution": True},
                        "right": {**side, "verdict": "normal", "probability": 0.1, "out_of_distribution": False}},
              "label_map": {"note": "coarse region, not a volume measurement: ...", "heatmap_scale": "normal sinuses"},
              "model": {"name": "m"}, "warnings": []}
    left, right, label_line, _ = resultinfo.summary_lines(result)
    assert "anomalous region marked (coarse, not a volume)" in left and "mL" not in left and "UNLIKE THE TRAINING DATA" in left
    assert "region" not in right and "UNLIKE" not in right
    assert label_line.startswith("Heat map: scaled on normal sinuses; label map: coarse region")
    assert [row[5] for row in resultinfo.result_rows(result)] == ["", ""]  # no number in the Volume (mL) column
    result["sides"]["left"]["anomalous_volume_ml"] = 3.25  # a bundle whose volume was validated
    assert "anomalous volume 3.25 mL" in resultinfo.summary_lines(result)[0]

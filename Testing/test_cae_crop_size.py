"""The CAE (heat map) may see coarser crops than the classifiers: ``cae_crop_size`` end to end.

Classifiers on 64^3 crops (1 mm) with the heat map of a CAE on 32^3 crops (2 mm) fit a CPU budget
that 64^3 for both would not; these tests hold the configuration's rules, the run, the bundle it
exports and classification with it to that split.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SinusAnomalyLib.bundle import build_untrained_bundle, load_bundle
from SinusAnomalyLib.bundlefile import BundleError, check_manifest, describe_bundle, read_bundle_file
from SinusAnomalyLib.inference import classify
from SinusAnomalyLib.synth import SynthParams, make_case
from SinusAnomalyTraining import pipeline
from SinusAnomalyTraining.config import ConfigError, config_from_dict
from SinusAnomalyTraining.export import export_run
from conftest import TINY_CONFIG


def _config(**changes) -> dict:
    config = copy.deepcopy(TINY_CONFIG)
    config.update(changes)
    return config


def test_the_cae_sees_the_classifiers_crops_unless_told_otherwise():
    follows = config_from_dict(_config(crop_size=64))
    assert follows.cae_size == 64 and follows.as_dict()["cae_crop_size"] is None  # a saved config keeps following crop_size
    split = config_from_dict(_config(crop_size=64, cae_crop_size=32, methods=["none"]))
    assert (split.crop_size, split.cae_size) == (64, 32)


@pytest.mark.parametrize("changes, message", [
    ({"crop_size": 64, "cae_crop_size": 32, "methods": ["none", "residual"]}, "residual pretraining"),
    ({"crop_size": 64, "cae_crop_size": 32, "methods": ["none"], "cae_fractions": [50]}, "residual pretraining"),
    ({"crop_size": 64, "cae_crop_size": 48, "methods": ["none"]}, "cae_crop_size must be 32 or 64"),
])
def test_a_cae_size_the_run_cannot_use_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message) as error:
        config_from_dict(_config(**changes), "split.json")
    assert "split.json" in str(error.value)


@pytest.fixture(scope="module")
def split_bundle(tiny_dataset, tmp_path_factory):
    """A bundle of a tiny run whose classifiers see 64^3 crops and whose CAE sees 32^3."""
    root = tmp_path_factory.mktemp("split")
    config = _config(crop_size=64, cae_crop_size=32, methods=["none"], fractions=[100], folds=[0],
                     cae={**TINY_CONFIG["cae"], "epochs": 1}, finetune={**TINY_CONFIG["finetune"], "epochs": 1})
    pipeline.run_pipeline(config_from_dict(config), tiny_dataset, root / "run", torch.device("cpu"), progress=False)
    return root / "run", export_run(root / "run", root / "split.sabundle", "none", 100)


def test_the_run_trains_each_network_at_its_own_size_and_the_bundle_says_so(split_bundle):
    run, path = split_bundle
    cae_done = json.loads((run / "fold0" / "cae" / "done.json").read_text(encoding="utf-8"))
    finetune_done = json.loads((run / "fold0" / "finetune" / "none" / "frac100" / "done.json").read_text(encoding="utf-8"))
    assert cae_done["made_from"]["crop_size"] == 32 and finetune_done["made_from"]["crop_size"] == 64
    bundle = load_bundle(path)
    assert (bundle.model_crop_size, bundle.cae_crop_size) == (64, 32)
    assert bundle.meta["models"]["cae"]["crop_size"] == 32
    assert bundle.cae(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 1, 32, 32, 32)
    assert "64^3 network input (32^3 for the heat map)" in describe_bundle(bundle.meta)


def test_classifying_with_a_split_bundle_gives_both_verdicts_and_a_heat_map_on_the_input_grid(split_bundle):
    case = make_case("split-head", np.random.default_rng(7), SynthParams(), anomalies={"left": "fully_occupied", "right": None})
    result = classify(case.image, load_bundle(split_bundle[1]), source="split-head")
    for side in ("left", "right"):
        assert 0.0 <= result.sides[side].probability <= 1.0
    heat = sitk.GetArrayFromImage(result.heatmap)
    assert result.heatmap.GetSize() == case.image.GetSize()
    assert np.isfinite(heat).all() and 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0.0


def test_a_bundle_without_a_cae_size_has_one_size_for_both(tmp_path):
    bundle = load_bundle(build_untrained_bundle(tmp_path / "old.sabundle", model_crop_size=32))
    assert "crop_size" not in bundle.meta["models"]["cae"]
    assert bundle.cae_crop_size == bundle.model_crop_size == 32


def test_a_malformed_cae_size_is_refused_naming_the_key(tmp_path):
    path = build_untrained_bundle(tmp_path / "split.sabundle", model_crop_size=64, cae_crop_size=32)
    meta = copy.deepcopy(read_bundle_file(path).meta)
    check_manifest(path, meta)
    meta["models"]["cae"]["crop_size"] = "32"
    with pytest.raises(BundleError, match="models.cae.crop_size"):
        check_manifest(path, meta)

"""The built-in configurations: each loads, and each is shaped for the job its description names;
a user's file is read strictly (booleans, probabilities, flips)."""
import json

import pytest

from SinusAnomalyLib.errors import ConfigError
from SinusAnomalyLib.splits import DEFAULT_FRACTIONS
from SinusAnomalyTraining.config import BUILTIN, PRETRAINING, ablation_fractions, load_config

CPU_SIZED = ("demo", "grid-cpu", "grid-cpu5")


@pytest.mark.parametrize("name", BUILTIN)
def test_every_builtin_config_loads_and_its_fractions_are_prepared_by_default(name):
    config = load_config(name)
    assert config.description
    # `prepare` makes the default nested fractions; a config asking for another would fail at fine-tuning
    assert {f / 100 for f in config.fractions} <= set(DEFAULT_FRACTIONS)


@pytest.mark.parametrize("name", CPU_SIZED)
def test_cpu_configs_are_cpu_sized(name):
    config = load_config(name)
    assert config.crop_size == 32 and max(config.encoder_widths) == 128
    assert not config.amp and config.deterministic


def test_grid_cpu5_is_issue_13s_grid():
    """5 folds (all of a default dataset's), every pretraining method, 10 % labels, no CAE ablation."""
    config = load_config("grid-cpu5")
    assert config.folds == "all"
    assert set(PRETRAINING) | {"none"} <= set(config.methods)
    assert 10 in config.fractions and 100 in config.fractions
    assert ablation_fractions(config) == []
    assert config.pretrain.data == "unlabelled"
    assert config.bootstrap >= 1000


@pytest.mark.parametrize("key,value", [("amp", "false"), ("amp", 0), ("deterministic", "true"), ("channels_last", None)])
def test_a_setting_that_is_not_true_or_false_is_refused_naming_the_key_and_file(key, value, tmp_path):
    """JSON's "false" is a string: read with bool() it would turn mixed precision on."""
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value) and f"'{key}' must be true or false" in str(info.value)
    path.write_text(json.dumps({key: False}))
    assert getattr(load_config(path), key) is False


@pytest.mark.parametrize("prob", [1.5, -0.1])
def test_an_augmentation_probability_outside_0_to_1_is_refused(prob, tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"finetune": {"augment": {"prob": prob}}}))
    with pytest.raises(ConfigError, match=r"'finetune\.augment\.prob'") as info:
        load_config(path)
    assert str(path) in str(info.value)
    path.write_text(json.dumps({"finetune": {"augment": {"prob": 1}}}))
    assert load_config(path).finetune.augment.prob == 1.0


def test_flips_are_anatomically_possible_by_default_and_the_authors_axes_are_a_named_option(tmp_path):
    for name in BUILTIN:
        config = load_config(name)
        assert config.pretrain.augment.flips == config.finetune.augment.flips == "left-right", name
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"finetune": {"augment": {"flips": "authors"}}}))
    assert load_config(path).finetune.augment.flips == "authors"
    path.write_text(json.dumps({"finetune": {"augment": {"flips": "upside-down"}}}))
    with pytest.raises(ConfigError, match="'finetune.augment.flips' must be one of left-right, authors, none"):
        load_config(path)

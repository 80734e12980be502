"""The built-in configurations: each loads, and each is shaped for the job its description names."""
import pytest

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

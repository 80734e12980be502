"""Run configurations: JSON files, the paper's defaults underneath.

``load_config("paper")`` and ``load_config("demo")`` read the files shipped in
``SinusAnomalyTraining/configs``; any other value is a path to a user's JSON file. A user file
may be partial: every key it leaves out takes the paper's value. Unknown keys are an error (a
typo must not silently fall back to a default).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

from SinusAnomalyLib.errors import ConfigError, DatasetError
from SinusAnomalyLib.splits import fraction_key

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BUILTIN = ("paper", "demo", "grid-cpu", "grid-paper")
PRETEXT = ("ae", "dae", "simclr", "byol", "simsiam", "spark")  # the baselines of the paper's Table 2
METHODS = ("none", "residual", *PRETEXT, "medicalnet")


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a configuration must be a JSON object")
    return data


def _merge(base: dict, override: dict, where: str, path: Path) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if key not in base:
            raise ConfigError(f"{path}: unknown setting '{where}{key}' (known: {', '.join(sorted(base))})")
        if where == "pretext.":  # a method's options are checked by build_pretext, which knows them
            out[key] = value
        elif isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: '{where}{key}' must be an object")
            out[key] = _merge(base[key], value, f"{where}{key}.", path)
        else:
            out[key] = value
    return out


def _validate(config: dict, path: Path) -> None:
    size = config["crop_size"]
    if size not in (32, 64):
        raise ConfigError(f"{path}: crop_size must be 32 or 64 (the U-Net needs multiples of 32 dividing 64), got {size}")
    unknown = [m for m in config["methods"] if m not in METHODS]
    if unknown:
        raise ConfigError(f"{path}: unknown methods {unknown} (known: {', '.join(METHODS)})")
    if config["folds"] != "all" and not (isinstance(config["folds"], list) and all(isinstance(f, int) and f >= 0 for f in config["folds"])):
        raise ConfigError(f"{path}: folds must be \"all\" or a list of fold numbers")
    if not config["fractions"] or any(not (0 < float(f) <= 100) for f in config["fractions"]):
        raise ConfigError(f"{path}: fractions must be percentages in (0, 100]")
    if len(config["encoder_widths"]) != 4:
        raise ConfigError(f"{path}: encoder_widths needs 4 stage widths")
    for stage in ("cae", "pretrain", "finetune"):
        if int(config[stage]["epochs"]) < 1 or int(config[stage]["batch_size"]) < 1:
            raise ConfigError(f"{path}: {stage}.epochs and {stage}.batch_size must be at least 1")
    if "medicalnet" in config["methods"] and not config["medicalnet_weights"]:
        raise ConfigError(f"{path}: method 'medicalnet' needs medicalnet_weights: the path of a local MedicalNet "
                          "ResNet18 file (nothing is downloaded)")
    if any(not (0 < float(f) <= 100) for f in config["cae_fractions"]):
        raise ConfigError(f"{path}: cae_fractions must be percentages in (0, 100]")
    if int(config["residuals"]["median_kernel"]) % 2 != 1:
        raise ConfigError(f"{path}: residuals.median_kernel must be odd")


def load_config(name_or_path: str | Path) -> dict:
    """The paper's defaults overlaid with a built-in (``paper``, ``demo``) or a user's JSON file."""
    paper_path = CONFIG_DIR / "paper.json"
    base = _read(paper_path)
    path = CONFIG_DIR / f"{name_or_path}.json" if str(name_or_path) in BUILTIN else Path(name_or_path)
    override = _read(path)
    override.pop("source", None)  # written into a run's saved config.json, not a setting
    config = _merge(base, override, "", path) if path != paper_path else base
    _validate(config, path)
    config["source"] = str(path)
    return config


def chosen_folds(config: dict, n_folds: int) -> list[int]:
    """The fold numbers a run trains: every fold of the dataset, or the configured ones (checked)."""
    folds = list(range(n_folds)) if config["folds"] == "all" else [int(f) for f in config["folds"]]
    missing = [f for f in folds if f >= n_folds]
    if missing:
        raise DatasetError(f"folds {missing} do not exist: the dataset has {n_folds} folds (0..{n_folds - 1})")
    return folds


def ablation_fractions(config: dict) -> list[float]:
    """CAE training fractions of the ablation other than 100 % (which is the main run's CAE)."""
    return [f for f in config["cae_fractions"] if float(f) != 100]


def percent_key(percent: float) -> str:
    """The folder and split key of a percentage of the configuration (``10`` -> the key of 0.1).

    Fractions in configurations and on the command line are percentages; the dataset's splits
    key them as fractions of one (:func:`SinusAnomalyLib.splits.fraction_key`).
    """
    return fraction_key(float(percent) / 100.0)

"""Run configurations: JSON files, the paper's defaults underneath.

``load_config("paper")`` and ``load_config("demo")`` read the files shipped in
``SinusAnomalyTraining/configs``; any other value is a path to a user's JSON file. A user file
may be partial: every key it leaves out takes the paper's value. Unknown keys are an error (a
typo must not silently fall back to a default).

The result is a frozen :class:`RunConfig` of typed settings, checked once here (types, ranges,
known methods), so code reads ``config.pretrain.base_lr`` without converting; ``as_dict()`` gives
back the JSON form (what ``RUN/config.json`` and the stages' ``done.json`` record). Label and CAE
fractions are percentages (:data:`Percent`); :func:`percent_key` turns one into the dataset's key.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

from SinusAnomalyLib.errors import ConfigError, DatasetError
from SinusAnomalyLib.splits import fraction_key

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BUILTIN = ("paper", "demo", "default", "grid-cpu", "grid-cpu5", "grid-paper", "grid-residual", "grid-residual-cohort")
PRETEXT = ("ae", "dae", "simclr", "byol", "simsiam", "spark")  # the baselines of the paper's Table 2
METHODS = ("none", "residual", *PRETEXT, "medicalnet")
RETIRED = ("num_workers",)  # settings of earlier versions, dropped when read so their saved config.json files still load
PRETRAINING = ("residual", *PRETEXT)  # the methods with a pretraining stage of their own (`pretrain --method`)
# what pretraining learns from when the dataset has unlabelled scans: them (the paper's D_u), or them and the
# fold's training sinuses; a dataset without any pretrains on the fold's training sinuses
PRETRAIN_DATA = ("unlabelled", "unlabelled+train")


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


Percent = float
"""A share given in percent, 0-100 (label fractions, CAE fractions); the dataset's splits key
fractions of one (:func:`percent_key` converts)."""


def _checked_number(value, where: str, path: Path, integer: bool = False, low: float | None = None, keep: bool = False):
    """``value`` checked as an int (``integer``) or a number, at least ``low``; a number comes back as a float
    unless ``keep`` (a value written into bundles as given)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"{path}: '{where}' must be {'an integer' if integer else 'a number'}, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{path}: '{where}' must be at least {low}, got {value!r}")
    return value if integer or keep else float(value)


def _checked_numbers(values, where: str, path: Path, integer: bool = False, low: float | None = None,
                     keep: bool = False) -> tuple:
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{path}: '{where}' must be a list, got {values!r}")
    return tuple(_checked_number(v, f"{where}[{i}]", path, integer, low, keep) for i, v in enumerate(values))


def _choice(value, choices: tuple[str, ...], where: str, path: Path) -> str:
    if value not in choices:
        raise ConfigError(f"{path}: '{where}' must be one of {', '.join(choices)}, got {value!r}")
    return value


def _flag(value, where: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: '{where}' must be true or false, got {value!r}")
    return value


def _percents(values, where: str, path: Path) -> tuple:
    """Percentages in (0, 100], kept as given (10 stays 10: it names folders and table rows)."""
    if not isinstance(values, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100
                                                     for v in values):
        raise ConfigError(f"{path}: {where} must be percentages in (0, 100]")
    return tuple(values)


def _plain(value):
    """Tuples to lists, settings to dicts: the JSON form of a setting."""
    if isinstance(value, _Settings):
        return value.as_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _Settings:
    def as_dict(self) -> dict:
        """The JSON form, key for key as in the configuration files (lists, not tuples)."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}


# Which crop axes augmentation may flip. A crop's axes are the reference's RAS axes (0: left-right,
# 1: anterior-posterior, 2: superior-inferior; the right crop mirrored into a left one), so only a
# left-right flip gives an anatomically possible sinus; "authors": the two flips of the paper's code
# (anterior-posterior and superior-inferior: upside-down sinuses, fluid levels with the fluid on top).
FLIPS = ("left-right", "authors", "none")
SCHEDULES = ("constant", "cosine")  # fine-tuning learning rate: the paper's constant, or warm-up then cosine decay


# Augmentation settings added after stages were first recorded, at the values where they do nothing
# (no random draw, no change): a stage recorded before such a setting existed was made exactly as
# one with it at this value (stagerunner.same_inputs).
AUGMENT_OFF = {"gamma_max": 1.0, "blur_sigma_max": 0.0}


@dataclass(frozen=True)
class AugmentSettings(_Settings):
    """Training augmentation (:func:`SinusAnomalyTraining.augment.augment_batch`): each with probability ``prob``."""

    prob: float  # in [0, 1]
    rotate_deg: float  # degrees, about each axis
    scale: float  # zoom in [1 - scale, 1 + scale]
    translate_voxels: float  # voxels of the served crop
    noise_std: float  # Gaussian noise on the image only
    gamma_max: float = 1.0  # image ** gamma, gamma log-uniform in [1 / gamma_max, gamma_max]; 1: off (the paper's)
    blur_sigma_max: float = 0.0  # Gaussian blur of the image, sigma uniform in [0, blur_sigma_max] voxels; 0: off (the paper's)
    flips: str = "left-right"  # one of FLIPS

    @classmethod
    def parse(cls, data: dict, where: str, path: Path) -> AugmentSettings:
        flips = _choice(data["flips"], FLIPS, f"{where}.flips", path)
        settings = cls(**{f.name: _checked_number(data[f.name], f"{where}.{f.name}", path, low=0)
                          for f in fields(cls) if f.name != "flips"}, flips=flips)
        if settings.prob > 1:
            raise ConfigError(f"{path}: '{where}.prob' is a probability: it must be between 0 and 1, got {settings.prob!r}")
        if settings.gamma_max < 1:
            raise ConfigError(f"{path}: '{where}.gamma_max' must be at least 1 (1: no gamma change), got {settings.gamma_max!r}")
        return settings


@dataclass(frozen=True)
class FocalLesionSettings(_Settings):
    """Focal lesions painted into normal training crops (:mod:`SinusAnomalyTraining.focal_lesions`)."""

    prob: float  # share of the normal crops served that are painted (and labelled anomalous); 0: off (the paper's)
    diameter_mm: tuple[float, float]  # log-uniform lesion diameter, low and high
    level: tuple[float, float]  # uniform lesion intensity in the crop's [0, 1] scale, low and high

    @classmethod
    def parse(cls, data: dict, where: str, path: Path) -> FocalLesionSettings:
        prob = _checked_number(data["prob"], f"{where}.prob", path, low=0)
        if prob > 1:
            raise ConfigError(f"{path}: '{where}.prob' is a probability: it must be between 0 and 1, got {prob!r}")
        ranges = {}
        for key in ("diameter_mm", "level"):
            values = _checked_numbers(data[key], f"{where}.{key}", path, low=0)
            if len(values) != 2 or values[0] > values[1] or (key == "diameter_mm" and values[0] <= 0):
                raise ConfigError(f"{path}: '{where}.{key}' must be [low, high] with 0 {'<' if key == 'diameter_mm' else '<='} "
                                  f"low <= high, got {list(values)!r}")
            ranges[key] = tuple(float(v) for v in values)
        if ranges["level"][1] > 1:
            raise ConfigError(f"{path}: '{where}.level' is in the crops' [0, 1] scale, got {list(ranges['level'])!r}")
        return cls(prob, ranges["diameter_mm"], ranges["level"])


@dataclass(frozen=True)
class CAESettings(_Settings):
    epochs: int
    batch_size: int
    lr: float
    channels: tuple[int, ...]
    latent_dim: int

    @classmethod
    def parse(cls, data: dict, path: Path) -> CAESettings:
        return cls(epochs=_checked_number(data["epochs"], "cae.epochs", path, True, 1),
                   batch_size=_checked_number(data["batch_size"], "cae.batch_size", path, True, 1),
                   lr=_checked_number(data["lr"], "cae.lr", path, low=0),
                   channels=_checked_numbers(data["channels"], "cae.channels", path, True, 1),
                   latent_dim=_checked_number(data["latent_dim"], "cae.latent_dim", path, True, 1))


# How a raw residual |x - CAE(x)| becomes a target in [0, 1]: "per_crop" (the paper's) maps each crop's own
# residuals.percentiles to 0 and 1; "cohort" maps those percentiles of the raw residuals of the fold's CAE
# training normals, pooled over their voxels, to 0 and 1 for every crop (computed once per fold, recorded in
# residuals.json), so a normal crop's target stays small and an anomalous crop's keeps its magnitude
RESIDUAL_SCALINGS = ("per_crop", "cohort")


@dataclass(frozen=True)
class ResidualSettings(_Settings):
    median_kernel: int  # odd, voxels
    percentiles: tuple[float, float]  # of the residual, mapped to 0 and 1
    batch_size: int
    scaling: str = "per_crop"  # one of RESIDUAL_SCALINGS

    @classmethod
    def parse(cls, data: dict, path: Path) -> ResidualSettings:
        kernel = _checked_number(data["median_kernel"], "residuals.median_kernel", path, True, 1)
        if kernel % 2 != 1:
            raise ConfigError(f"{path}: residuals.median_kernel must be odd")
        percentiles = _checked_numbers(data["percentiles"], "residuals.percentiles", path, low=0, keep=True)
        if len(percentiles) != 2:
            raise ConfigError(f"{path}: residuals.percentiles needs a low and a high percentile")
        if not percentiles[0] < percentiles[1] <= 100:
            raise ConfigError(f"{path}: 'residuals.percentiles' must be [low, high] with 0 <= low < high <= 100, "
                              f"got {list(percentiles)}")
        scaling = data["scaling"]
        if scaling not in RESIDUAL_SCALINGS:
            raise ConfigError(f"{path}: 'residuals.scaling' must be one of {', '.join(RESIDUAL_SCALINGS)} (per_crop: each "
                              "crop by its own percentiles, the paper's; cohort: by the percentiles of the fold's CAE "
                              f"training normals), got {scaling!r}")
        return cls(kernel, percentiles, _checked_number(data["batch_size"], "residuals.batch_size", path, True, 1), scaling)


@dataclass(frozen=True)
class PretrainSettings(_Settings):
    data: str  # one of PRETRAIN_DATA
    epochs: int
    batch_size: int
    base_lr: float  # at base_batch; scaled linearly with the global batch
    base_batch: int
    warmup_epochs: float
    weight_decay: float
    momentum: float
    augment: AugmentSettings
    # residual pretraining only: lesions painted into the crops it learns from, each painted mask added to the
    # crop's residual target, so the U-Net also learns to outline small lesions (0: off, the paper's)
    focal_lesions: FocalLesionSettings

    @classmethod
    def parse(cls, data: dict, path: Path) -> PretrainSettings:
        n = lambda key, **kw: _checked_number(data[key], f"pretrain.{key}", path, **kw)  # noqa: E731
        if data["data"] not in PRETRAIN_DATA:
            raise ConfigError(f"{path}: pretrain.data must be one of {', '.join(PRETRAIN_DATA)}, got {data['data']!r}")
        return cls(data["data"], n("epochs", integer=True, low=1), n("batch_size", integer=True, low=1), n("base_lr", low=0),
                   n("base_batch", integer=True, low=1), n("warmup_epochs", low=0), n("weight_decay", low=0),
                   n("momentum", low=0), AugmentSettings.parse(data["augment"], "pretrain.augment", path),
                   FocalLesionSettings.parse(data["focal_lesions"], "pretrain.focal_lesions", path))

    def made_from(self, paints: bool) -> dict:
        """What a pretraining stage records as its settings. Painting is left out where it does not act:
        while it is off (so stages made before the option existed stay valid) and for a method that
        ignores it (``paints`` False: the baselines, which changing it must not retrain)."""
        settings = self.as_dict()
        if not paints or self.focal_lesions.prob == 0:
            del settings["focal_lesions"]
        return settings


@dataclass(frozen=True)
class FinetuneSettings(_Settings):
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    augment: AugmentSettings
    # BatchNorm statistics averaged over the training sinuses after every epoch (engine.recompute_batchnorm_statistics):
    # steadier validation and test predictions when an epoch is only a few steps
    recompute_batchnorm: bool
    focal_lesions: FocalLesionSettings
    schedule: str  # one of SCHEDULES; "cosine": linear warm-up over the first 5 % of the steps, then cosine decay to 0

    @classmethod
    def parse(cls, data: dict, path: Path) -> FinetuneSettings:
        n = lambda key, **kw: _checked_number(data[key], f"finetune.{key}", path, **kw)  # noqa: E731
        return cls(n("epochs", integer=True, low=1), n("batch_size", integer=True, low=1), n("lr", low=0),
                   n("weight_decay", low=0), AugmentSettings.parse(data["augment"], "finetune.augment", path),
                   _flag(data["recompute_batchnorm"], "finetune.recompute_batchnorm", path),
                   FocalLesionSettings.parse(data["focal_lesions"], "finetune.focal_lesions", path),
                   _choice(data["schedule"], SCHEDULES, "finetune.schedule", path))


@dataclass(frozen=True)
class RunConfig(_Settings):
    """A run's configuration, checked once when it is read (:func:`load_config`); frozen.

    Change a setting with :meth:`replace`. ``fractions``, ``cae_fractions`` and
    ``cae_ablation_label_fraction`` are :data:`Percent`. ``pretext`` holds each baseline's options,
    checked by :func:`SinusAnomalyTraining.pretext.build_pretext`, which knows them.
    """

    description: str
    crop_size: int  # voxels per edge the classifier and the U-Net see: 32 or 64
    cae_crop_size: int | None  # as set: None follows crop_size (a saved config.json keeps following it)
    seed: int
    device: str  # auto, cpu, cuda or cuda:N
    amp: bool
    deterministic: bool  # reproducible GPU kernels (True) or cuDNN's auto-tuned fastest (False); CPU: either way
    channels_last: bool  # train in the channels_last_3d memory layout (bench_training_steps --options)
    folds: str | tuple[int, ...]  # "all" or fold numbers
    fractions: tuple[Percent, ...]  # label fractions fine-tuned
    methods: tuple[str, ...]
    encoder_widths: tuple[int, ...]
    cae: CAESettings
    residuals: ResidualSettings
    pretrain: PretrainSettings
    finetune: FinetuneSettings
    pretext: dict
    medicalnet_weights: str | None
    cae_fractions: tuple[Percent, ...]
    cae_ablation_label_fraction: Percent
    evaluate: dict
    source: str = ""  # the file it was read from

    @property
    def cae_size(self) -> int:
        """Voxels per edge the CAE (the heat map) sees: ``cae_crop_size``, or ``crop_size`` where it is not set."""
        return self.crop_size if self.cae_crop_size is None else self.cae_crop_size

    @property
    def bootstrap(self) -> int:
        """Bootstrap replicates of the pooled intervals."""
        return self.evaluate["bootstrap"]

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def parse(cls, data: dict, path: Path) -> RunConfig:
        crop = _checked_number(data["crop_size"], "crop_size", path, True)
        if crop not in (32, 64):
            raise ConfigError(f"{path}: crop_size must be 32 or 64 (the U-Net needs multiples of 32 dividing 64), got {crop}")
        methods = tuple(data["methods"])
        cae_setting = data["cae_crop_size"]
        cae_crop = crop if cae_setting is None else _checked_number(cae_setting, "cae_crop_size", path, True)
        if cae_crop not in (32, 64):
            raise ConfigError(f"{path}: cae_crop_size must be 32 or 64 (or null: crop_size), got {cae_crop}")
        if cae_crop != crop and ("residual" in methods or data["cae_fractions"]):
            raise ConfigError(f"{path}: cae_crop_size {cae_crop} differs from crop_size {crop}, but residual pretraining "
                              "(method 'residual', cae_fractions) learns the CAE's residual maps at crop_size: leave "
                              "cae_crop_size null or drop those")
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ConfigError(f"{path}: unknown methods {unknown} (known: {', '.join(METHODS)})")
        folds = data["folds"]
        if folds != "all" and not (isinstance(folds, list) and all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)):
            raise ConfigError(f"{path}: folds must be \"all\" or a list of fold numbers")
        fractions = _percents(data["fractions"], "fractions", path)
        if not fractions:
            raise ConfigError(f"{path}: fractions must be percentages in (0, 100]")
        widths = _checked_numbers(data["encoder_widths"], "encoder_widths", path, True, 1)
        if len(widths) != 4:
            raise ConfigError(f"{path}: encoder_widths needs 4 stage widths")
        if "medicalnet" in methods and not data["medicalnet_weights"]:
            raise ConfigError(f"{path}: method 'medicalnet' needs medicalnet_weights: the path of a local MedicalNet "
                              "ResNet18 file (nothing is downloaded)")
        bootstrap = _checked_number(data["evaluate"]["bootstrap"], "evaluate.bootstrap", path, True, 1)
        return cls(description=str(data.get("description", "")), crop_size=crop, cae_crop_size=cae_setting, seed=_checked_number(data["seed"], "seed", path, True),
                   device=str(data["device"]), amp=_flag(data["amp"], "amp", path), deterministic=_flag(data["deterministic"], "deterministic", path),
                   channels_last=_flag(data["channels_last"], "channels_last", path),
                   folds="all" if folds == "all" else tuple(folds), fractions=fractions, methods=methods, encoder_widths=widths,
                   cae=CAESettings.parse(data["cae"], path), residuals=ResidualSettings.parse(data["residuals"], path),
                   pretrain=PretrainSettings.parse(data["pretrain"], path), finetune=FinetuneSettings.parse(data["finetune"], path),
                   pretext=copy.deepcopy(dict(data["pretext"])), medicalnet_weights=data["medicalnet_weights"],
                   cae_fractions=_percents(data["cae_fractions"], "cae_fractions", path),
                   cae_ablation_label_fraction=_percents([data["cae_ablation_label_fraction"]], "cae_ablation_label_fraction", path)[0],
                   evaluate={"bootstrap": bootstrap}, source=str(data.get("source", "")))


def load_config(name_or_path: str | Path) -> RunConfig:
    """The paper's defaults overlaid with a built-in (``paper``, ``demo``, ...) or a user's JSON file, checked."""
    paper_path = CONFIG_DIR / "paper.json"
    base = _read(paper_path)
    path = CONFIG_DIR / f"{name_or_path}.json" if str(name_or_path) in BUILTIN else Path(name_or_path)
    override = _read(path)
    for key in ("source", *RETIRED):  # source: written into a run's saved config.json, not a setting
        override.pop(key, None)
    merged = _merge(base, override, "", path) if path != paper_path else base
    merged["source"] = str(path)
    return RunConfig.parse(merged, path)


def config_from_dict(data: dict, path: str | Path = "<settings>") -> RunConfig:
    """A configuration from a dict of settings over the paper's defaults (for tests and scripts)."""
    merged = _merge(_read(CONFIG_DIR / "paper.json"), {k: v for k, v in data.items() if k not in ("source", *RETIRED)}, "", Path(path))
    merged["source"] = str(data.get("source", path))
    return RunConfig.parse(merged, Path(path))


def chosen_folds(config: RunConfig, n_folds: int) -> list[int]:
    """The fold numbers a run trains: every fold of the dataset, or the configured ones (checked)."""
    folds = list(range(n_folds)) if config.folds == "all" else list(config.folds)
    missing = [f for f in folds if f >= n_folds]
    if missing:
        raise DatasetError(f"folds {missing} do not exist: the dataset has {n_folds} folds (0..{n_folds - 1})")
    return folds


def ablation_fractions(config: RunConfig) -> list[Percent]:
    """CAE training fractions of the ablation other than 100 % (which is the main run's CAE)."""
    return [f for f in config.cae_fractions if f != 100]


def percent_key(percent: float) -> str:
    """The folder and split key of a percentage of the configuration (``10`` -> the key of 0.1).

    Fractions in configurations and on the command line are percentages; the dataset's splits
    key them as fractions of one (:func:`SinusAnomalyLib.splits.fraction_key`).
    """
    return fraction_key(float(percent) / 100.0)

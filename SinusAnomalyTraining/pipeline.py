"""The whole method over folds, pretraining methods and label fractions, then its evaluation.

``run_pipeline`` runs, for every chosen fold: CAE -> residuals -> residual pretraining (when the
"residual" method is asked for) and each baseline's pretraining -> fine-tuning per method and
label fraction; finished stages are skipped and an interrupted one continues from its last
checkpoint, so re-running resumes. :func:`SinusAnomalyTraining.report.evaluate_run` then writes ``RUN/evaluation``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from SinusAnomalyLib.dataset import PreparedDataset, load_dataset
from SinusAnomalyLib.errors import ConfigError
from SinusAnomalyLib.fileio import write_json_atomic

from . import report, runtime, stages
from .config import PRETRAINING, RunConfig, ablation_fractions, chosen_folds, load_config


def fold_context(config: RunConfig, dataset: PreparedDataset, run_dir: Path, fold: int, device: torch.device,
                 restart: bool = False, progress: bool = True, cae_fraction: float = 100) -> stages.FoldContext:
    return stages.FoldContext(dataset, config, Path(run_dir), fold, device, restart=restart, progress=progress,
                              cae_fraction=cae_fraction)


# Settings a command line may change for one command without changing the run: where it runs, and the file it came from.
PER_COMMAND_SETTINGS = ("device", "source")


def save_run_config(config: RunConfig, run_dir: Path, dataset: PreparedDataset) -> None:
    """A new run's ``RUN/config.json`` and ``RUN/dataset.json`` (where the data came from, its summary).

    An existing run's are never rewritten: they describe what its stages were made with. A
    configuration that differs from the saved one is refused (:class:`ConfigError` naming the
    settings), so no stage is trained with settings its run folder does not record.
    """
    saved = Path(run_dir) / "config.json"
    if saved.is_file():
        differences = config_differences(load_config(saved), config)
        if differences:
            raise ConfigError(f"{saved}: the run was made with other settings than the --config given ({'; '.join(differences)}); "
                              "leave out --config to continue the run with its own, edit its config.json to change them "
                              "(stages whose settings changed start over), or choose a new --run-dir")
        return
    if runtime.is_main_process():
        write_json_atomic(Path(run_dir) / "config.json", config.as_dict())
        write_json_atomic(Path(run_dir) / "dataset.json", {"path": str(Path(dataset.root).resolve()), "summary": dataset.info})


def config_differences(saved: RunConfig, given: RunConfig) -> list[str]:
    """``"key: saved -> given"`` for every setting (dotted, leaf by leaf) in which ``given`` differs, but
    :data:`PER_COMMAND_SETTINGS`."""
    def leaves(value, prefix: str = "") -> dict:
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in leaves(item, f"{prefix}{key}.").items()}
        return {prefix[:-1]: value}

    old, new = leaves(saved.as_dict()), leaves(given.as_dict())
    return [f"{key}: {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(old.keys() | new.keys())
            if key.split(".")[0] not in PER_COMMAND_SETTINGS and old.get(key) != new.get(key)]


def run_pipeline(config: RunConfig, dataset_dir: str | Path, run_dir: str | Path, device: torch.device, progress: bool = True) -> dict:
    """Run every stage for the configured folds, methods and fractions, then evaluate."""
    dataset = load_dataset(dataset_dir)
    run_dir = Path(run_dir)
    save_run_config(config, run_dir, dataset)
    for fold in chosen_folds(config, len(dataset.splits.folds)):
        ctx = fold_context(config, dataset, run_dir, fold, device, progress=progress)
        stages.train_cae(ctx)
        for method in config.methods:
            if method == "residual":
                stages.compute_residuals(ctx)
            if method in PRETRAINING:
                stages.pretrain_method(ctx, method)  # once per fold, shared by every label fraction
            for fraction in config.fractions:
                stages.finetune(ctx, method, fraction)
        for cae_fraction in ablation_fractions(config):  # the paper's Table 3
            actx = fold_context(config, dataset, run_dir, fold, device, progress=progress, cae_fraction=cae_fraction)
            stages.train_cae(actx)
            stages.compute_residuals(actx)
            stages.pretrain(actx)
            stages.finetune(actx, "residual", config.cae_ablation_label_fraction)
    runtime.barrier()
    return report.evaluate_run(config, dataset, run_dir) if runtime.is_main_process() else {}


def load_run_config(run_dir: Path, config_arg: str | None) -> RunConfig:
    """The configuration of a run: ``--config`` if given, else the run's saved ``config.json``."""
    if config_arg:
        return load_config(config_arg)
    saved = Path(run_dir) / "config.json"
    if saved.is_file():
        return load_config(saved)
    return load_config("paper")

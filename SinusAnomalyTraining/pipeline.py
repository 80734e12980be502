"""The whole method over folds, pretraining methods and label fractions, then its evaluation.

``run_pipeline`` runs, for every chosen fold: CAE -> residuals -> residual pretraining (when the
"residual" method is asked for) and each baseline's pretraining -> fine-tuning per method and
label fraction; finished stages are skipped and an interrupted one continues from its last
checkpoint, so re-running resumes. On the CPU, :func:`train_folds_side_by_side` trains the folds
in worker processes first (``train-default``). :func:`SinusAnomalyTraining.report.evaluate_run` then writes ``RUN/evaluation``.
"""
from __future__ import annotations

import os
from concurrent.futures import as_completed
from pathlib import Path

import torch

from SinusAnomalyLib.dataset import PreparedDataset, load_dataset
from SinusAnomalyLib.errors import ConfigError
from SinusAnomalyLib.fileio import write_json_atomic
from SinusAnomalyLib.workers import process_pool

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
        train_fold(config, dataset, run_dir, fold, device, progress)
    runtime.barrier()
    return report.evaluate_run(config, dataset, run_dir) if runtime.is_main_process() else {}


def train_fold(config: RunConfig, dataset: PreparedDataset, run_dir: Path, fold: int, device: torch.device,
               progress: bool = True) -> None:
    """Every stage of one fold, in order; each depends on nothing but this fold's earlier stages."""
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


def train_folds_side_by_side(config: RunConfig, dataset_dir: str | Path, run_dir: str | Path, workers: int) -> None:
    """Train the configured folds on the CPU in up to ``workers`` processes at once, one thread each.

    A fold's stages seed themselves and read nothing of another fold, so each fold's checkpoints are
    those :func:`run_pipeline` makes on one thread, bit for bit; on 2 cores two folds take the time of
    one. :func:`run_pipeline` then finds every stage finished and evaluates. An error or an interrupt
    ends the other processes (their stages resume when re-run).
    """
    dataset = load_dataset(dataset_dir)
    run_dir = Path(run_dir)
    save_run_config(config, run_dir, dataset)
    folds = chosen_folds(config, len(dataset.splits.folds))
    with process_pool(max(1, min(workers, len(folds)))) as pool:
        futures = [pool.submit(_train_fold_alone, config, str(dataset_dir), str(run_dir), fold) for fold in folds]
        for future in as_completed(futures):
            future.result()  # the first error stops the others (process_pool)


def _train_fold_alone(config: RunConfig, dataset_dir: str, run_dir: str, fold: int) -> None:
    """One fold in a worker process (:func:`train_folds_side_by_side`), on one CPU thread, without progress bars."""
    torch.set_num_threads(1)
    runtime.set_deterministic(config.deterministic)
    print(f"fold {fold}: training in process {os.getpid()}", flush=True)
    train_fold(config, load_dataset(dataset_dir), Path(run_dir), fold, torch.device("cpu"), progress=False)


def load_run_config(run_dir: Path, config_arg: str | None) -> RunConfig:
    """The configuration of a run: ``--config`` if given, else the run's saved ``config.json``."""
    if config_arg:
        return load_config(config_arg)
    saved = Path(run_dir) / "config.json"
    if saved.is_file():
        return load_config(saved)
    return load_config("paper")

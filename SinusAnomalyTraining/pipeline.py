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
from SinusAnomalyLib.fileio import write_json_atomic

from . import report, runtime, stages
from .config import PRETRAINING, RunConfig, ablation_fractions, chosen_folds, load_config


def fold_context(config: RunConfig, dataset: PreparedDataset, run_dir: Path, fold: int, device: torch.device,
                 restart: bool = False, progress: bool = True, cae_fraction: float = 100) -> stages.FoldContext:
    return stages.FoldContext(dataset, config, Path(run_dir), fold, device, restart=restart, progress=progress,
                              cae_fraction=cae_fraction)


def save_run_config(config: RunConfig, run_dir: Path, dataset: PreparedDataset) -> None:
    """``RUN/config.json`` and ``RUN/dataset.json`` (where the data came from, its summary)."""
    if runtime.is_main_process():
        write_json_atomic(Path(run_dir) / "config.json", config.as_dict())
        write_json_atomic(Path(run_dir) / "dataset.json", {"path": str(Path(dataset.root).resolve()), "summary": dataset.info})


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

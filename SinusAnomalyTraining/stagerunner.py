"""The runner every stage of a fold shares: what a stage needs and how it is skipped, started and finished.

:class:`FoldContext` (one fold of a run: its folders, crop indices and data fingerprints); the
``done.json`` bookkeeping (a stage whose ``done.json`` records what it is made from is finished, one
started from other inputs starts over, a missing input is an error naming the stage to run); the
shapes of a run's networks (:func:`network_spec`); and :func:`run_training_stage`, the skeleton
every training stage runs on (skip when done, record inputs, build, fit with resume, mark done).
The stages themselves are in :mod:`.stages`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from SinusAnomalyLib.dataset import PreparedDataset
from SinusAnomalyLib.errors import DatasetError, StageInputError
from SinusAnomalyLib.fileio import sha256_file, write_json_atomic
from SinusAnomalyLib.manifest import UNLABELLED_MANIFEST_FILE
from SinusAnomalyLib.models import NetworkSpec

from . import runtime
from .config import AUGMENT_OFF, RunConfig, percent_key
from .engine import Checkpointer, LossStepFn, fit

DONE = "done.json"


@dataclass
class FoldContext:
    """Everything a stage needs for one fold."""

    dataset: PreparedDataset
    config: RunConfig
    run_dir: Path
    fold: int
    device: torch.device
    restart: bool = False  # start its stages over, discarding their checkpoints (default: finish or resume them)
    progress: bool = True
    cae_fraction: float = 100  # the paper's CAE ablation: the CAE sees this % of the training normals

    def __post_init__(self) -> None:
        if not 0 <= self.fold < len(self.dataset.splits.folds):
            raise DatasetError(f"fold {self.fold} does not exist: the dataset has {len(self.dataset.splits.folds)} folds")

    @property
    def fold_dir(self) -> Path:
        return Path(self.run_dir) / f"fold{self.fold}"

    @property
    def _cae_suffix(self) -> str:
        return "" if float(self.cae_fraction) == 100 else f"_cae{percent_key(self.cae_fraction)}"

    @property
    def cae_dir(self) -> Path:
        return self.fold_dir / f"cae{self._cae_suffix}"

    @property
    def residuals_dir(self) -> Path:
        return self.fold_dir / f"residuals{self._cae_suffix}"

    @property
    def pretrain_dir(self) -> Path:
        return self.fold_dir / f"pretrain{self._cae_suffix}"

    @property
    def residual_method(self) -> str:
        """Name of residual pretraining in the fine-tuning folders ("residual", or "residual_cae20" etc.)."""
        return f"residual{self._cae_suffix}"

    @property
    def splits(self):
        return self.dataset.splits

    def indices(self, split: str) -> np.ndarray:
        """Crop indices of ``train`` / ``val`` (this fold's patients) or ``test``."""
        fold = self.splits.folds[self.fold]
        patients = {"train": fold.train, "val": fold.val, "test": self.splits.test}[split]
        return self.dataset.rows_of_patients(patients)

    def labelled_indices(self, fraction: float) -> np.ndarray:
        key = percent_key(fraction)
        labelled = self.splits.folds[self.fold].labelled
        if key not in labelled:
            raise DatasetError(f"label fraction {fraction} % is not in the dataset's splits (has {sorted(labelled)})")
        return self.dataset.rows_of_samples(labelled[key])

    @property
    def dataset_fingerprint(self) -> str:
        """Checksum of the manifest, splits and crops: a stage made from other data is stale (crops of
        another extraction too; datasets prepared before dataset.json recorded the crops' checksum: not those)."""
        root = self.dataset.root
        parts = sha256_file(root / "manifest.csv") + sha256_file(root / "splits.json") + self.dataset.info.get("crops", {}).get("sha256", "")
        return hashlib.sha256(parts.encode()).hexdigest()

    @property
    def unlabelled_fingerprint(self) -> str | None:
        """Checksum of the unlabelled set's manifest and crops (None without one): stages made from another set are stale."""
        if not len(self.dataset.unlabelled):
            return None
        manifest = sha256_file(self.dataset.root / UNLABELLED_MANIFEST_FILE)
        crops = self.dataset.info["unlabelled"].get("crops", {}).get("sha256")
        return manifest if crops is None else hashlib.sha256((manifest + crops).encode()).hexdigest()

    def logger(self, stage_dir: Path) -> runtime.RunLogger:
        return runtime.setup_run_logging(stage_dir)


def _done(stage_dir: Path) -> dict | None:
    path = stage_dir / DONE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _without_off_settings(value):
    """``value`` (a recorded ``made_from``) without the augmentation settings at their off value (:data:`AUGMENT_OFF`)."""
    if isinstance(value, dict):
        return {k: _without_off_settings(v) for k, v in value.items() if not (k in AUGMENT_OFF and v == AUGMENT_OFF[k])}
    if isinstance(value, list):
        return [_without_off_settings(v) for v in value]
    return value


def same_inputs(recorded: dict | None, made_from: dict) -> bool:
    """Whether a stage recorded as made from ``recorded`` was made from ``made_from``: equal, except that a
    setting added since (:data:`AUGMENT_OFF`) counts as off where the record does not name it, so that
    upgrading does not retrain stages whose training the new setting leaves as it was."""
    return recorded is not None and _without_off_settings(recorded) == _without_off_settings(made_from)


def _finished(stage_dir: Path, made_from: dict) -> bool:
    """True when ``stage_dir`` holds a finished stage made from ``made_from`` (:func:`same_inputs`)."""
    done = _done(stage_dir)
    return done is not None and same_inputs(done.get("made_from"), made_from)


def _start_stage(stage_dir: Path, made_from: dict, restart: bool = False) -> None:
    """Record what a stage is being made from; leftovers of a run with other inputs (or all of
    them, with ``restart``) are removed, so the stage starts over; otherwise it resumes.

    Without this, changing a setting and re-running would resume the old run's checkpoint.
    """
    if not runtime.is_main_process():
        runtime.barrier()
        return
    started = stage_dir / "started.json"
    if started.is_file():
        try:
            previous = json.loads(started.read_text(encoding="utf-8")).get("made_from")
        except json.JSONDecodeError:
            previous = None
        if restart or not same_inputs(previous, made_from):
            for name in (Checkpointer.LAST, Checkpointer.BEST, "history.json", "history.csv", DONE, "predictions.csv"):
                (stage_dir / name).unlink(missing_ok=True)
    write_json_atomic(started, {"made_from": made_from})
    runtime.barrier()


def _mark_done(stage_dir: Path, made_from: dict, **outputs) -> None:
    if runtime.is_main_process():
        write_json_atomic(stage_dir / DONE, {"made_from": made_from, **outputs})


def _require(path: Path, stage: str, fold_dir: Path) -> Path:
    if not path.is_file():
        raise StageInputError(f"{path} is missing: run the '{stage}' stage for {fold_dir.name} first")
    return path


def _image_batch(batch: dict, device: torch.device) -> torch.Tensor:
    return batch["image"].to(device, non_blocking=True)


def network_spec(config: RunConfig, shortcut_type: str = "B") -> NetworkSpec:
    """The shapes of a run's networks (``shortcut_type`` from :func:`classifier_shortcut`)."""
    return NetworkSpec(cae_crop_size=config.cae_size, encoder_widths=config.encoder_widths,
                       cae_channels=config.cae.channels, cae_latent_dim=config.cae.latent_dim,
                       shortcut_type=shortcut_type)


def classifier_shortcut(method: str) -> str:
    """The classifier's shortcut type after ``method``'s pretraining: "A" (parameter-free, MedicalNet's
    layout) for the MedicalNet weights, "B" (1x1x1 projections) for every other method."""
    return "A" if method == "medicalnet" else "B"


@dataclass
class Training:
    """What a training stage trains, built by the stage once it knows it has work to do."""

    description: str  # the stage's first log line
    model: torch.nn.Module  # on the context's device
    train_loader: object
    val_loader: object | None
    loss_step: LossStepFn
    epochs: int
    optimizer: torch.optim.Optimizer
    scheduler: object | None = None
    extra: dict = field(default_factory=dict)  # stored in every checkpoint
    after_step: Callable[[int, int], None] | None = None  # e.g. BYOL's target update
    done: dict = field(default_factory=dict)  # more entries for done.json
    recompute_batchnorm: bool = False  # engine.fit's: BatchNorm statistics averaged over the training set each epoch
    amp: bool = True  # mixed precision when the configuration asks for it; False: always float32


def run_training_stage(ctx: FoldContext, stage_dir: Path, made_from: dict, build: Callable[[], Training],
                       finish: Callable[[], None] | None = None) -> bool:
    """The skeleton every training stage shares; True when it trained, False when already done.

    Skips a stage whose ``done.json`` records ``made_from`` (unless ``ctx.restart``); otherwise
    records what the stage is made from (clearing another run's leftovers, or every leftover with
    ``ctx.restart``), builds the training with ``build`` (seeding first is the builder's job, so
    weights and data order depend on the seed only), fits, resuming from ``last.pt`` when an
    interrupted run left one, runs ``finish`` (e.g. the predictions of the best checkpoint; rank 0 only)
    and writes ``done.json`` with the best checkpoint's checksum.
    """
    if not ctx.restart and _finished(stage_dir, made_from):
        return False
    _start_stage(stage_dir, made_from, ctx.restart)
    training = build()
    model = training.model
    if ctx.config.channels_last:  # the same weights in another memory layout (faster 3-D convolutions on a CPU)
        model = model.to(memory_format=torch.channels_last_3d)
    with ctx.logger(stage_dir) as log:
        log.info(training.description)
        fit(runtime.wrap_ddp(model, ctx.device), training.train_loader, training.val_loader, training.loss_step,
            training.epochs, training.optimizer, training.scheduler, ctx.device, Checkpointer(stage_dir),
            resume=True, amp=ctx.config.amp and training.amp, progress=ctx.progress, log=log, seed=ctx.config.seed,
            extra=training.extra, after_step=training.after_step, recompute_batchnorm=training.recompute_batchnorm)
    runtime.barrier()
    if finish is not None and runtime.is_main_process():  # e.g. the predictions: once, by rank 0
        finish()
    _mark_done(stage_dir, made_from, checkpoint_sha256=sha256_file(stage_dir / Checkpointer.BEST), **training.done)
    runtime.barrier()
    return True

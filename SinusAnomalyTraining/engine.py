"""A small, generic training loop with exact resume.

* :class:`Checkpointer` writes ``run_dir/last.pt`` after every epoch (atomically, main process only)
  and ``run_dir/best.pt`` when the monitored value improves. Checkpoints hold only tensors, numbers,
  strings, lists and dicts, so they load with ``torch.load(..., weights_only=True)``; a file that is
  not one of ours is rejected with an error naming it. Checkpoints are always addressed by an
  explicit path — never "the first file in a folder".
* :func:`fit` runs the epochs. A run interrupted after epoch ``k`` and resumed with
  ``resume=True`` ends with exactly the weights of an uninterrupted run with the same seed (on
  CPU; on GPU up to non-deterministic kernels), because

  1. every epoch starts by reseeding Python's ``random``, NumPy and torch — and the loaders' own
     generators and ``DistributedSampler.set_epoch`` — from ``(seed, epoch, rank)``, so the data
     order and all augmentation / dropout randomness of an epoch depend on nothing that happened
     before it;
  2. the checkpoint restores everything else that carries over between epochs: model parameters
     and buffers, optimiser state (momentum buffers), scheduler position, GradScaler state,
     history and best value (plus the global RNG states, for code running before the first epoch).

  Not covered: DataLoaders with ``persistent_workers=True`` (their workers keep RNG state across
  epochs; :func:`fit` warns) and stateful samplers other than ``DistributedSampler``.
"""
from __future__ import annotations

import csv
from collections import OrderedDict
import io
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from SinusAnomalyLib.errors import CheckpointError, InvalidValueError, TrainingError
from SinusAnomalyLib.fileio import atomic_path, write_json_atomic, write_text_atomic

from . import runtime

__all__ = ["CheckpointError", "TrainingError", "Checkpointer", "load_checkpoint", "capture_rng_state",
           "restore_rng_state", "fit", "resume_training", "train_epoch", "validate", "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION",
           "FLOOR", "LossStepFn"]

CHECKPOINT_FORMAT = "sinus-anomaly-checkpoint"
CHECKPOINT_VERSION = 1

LossStepFn = Callable[[nn.Module, Any, torch.device], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]
"""``loss_step(model, batch, device)``: the batch's scalar loss, or ``(loss, metrics)`` with named scalar
metrics of the same batch (e.g. :data:`FLOOR`), averaged over the epoch as the loss is."""

FLOOR = "floor"
"""A step metric that is a lower bound of the loss (the soft targets' entropy under binary
cross-entropy): the history records ``<split>_floor`` and ``<split>_excess`` = ``<split>_loss`` - floor."""


# ------------------------------------------------------------------------------------ RNG states

def capture_rng_state() -> dict:
    """The global RNG states (Python, NumPy, torch CPU and CUDA) as weights-only-loadable data."""
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states only when the GPU count matches)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"]), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["kind"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])


# ----------------------------------------------------------------------------------- checkpoints

# Exact types only: subclasses of str/int (e.g. torch's TorchVersion, enums) would be pickled by class.
_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device, torch.Size)


def _check_plain(obj, where: str) -> None:
    """Raise TypeError when ``obj`` holds anything ``torch.load(weights_only=True)`` would refuse."""
    if type(obj) in _PLAIN or type(obj) in (torch.Tensor, nn.Parameter):
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            if type(k) not in (str, int, float, bool, type(None)):
                raise TypeError(f"checkpoint entry {where} has a key of type {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"checkpoint entry {where} is a {type(obj).__module__}.{type(obj).__name__}; "
                    "store only tensors, numbers, strings, lists and dicts (convert NumPy values first)")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate one of our checkpoints with ``weights_only=True``.

    Raises :class:`CheckpointError` naming ``path`` if it is missing, unreadable, not a PyTorch
    file, or a PyTorch file that is not a SinusAnomaly checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means "not a usable checkpoint"
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "WeightsUnpickler error" in ln]
        first = (detail or lines or [type(exc).__name__])[0]
        raise CheckpointError(path, f"not a SinusAnomaly checkpoint (torch.load with weights_only=True "
                                    f"failed: {first})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(path, "is a PyTorch file but not a SinusAnomaly checkpoint "
                                    f"(no '{CHECKPOINT_FORMAT}' format marker)")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(path, f"checkpoint format version {version!r} is newer than this program "
                                    f"understands ({CHECKPOINT_VERSION}); update SinusAnomaly")
    for key in ("epoch", "model"):
        if key not in payload:
            raise CheckpointError(path, f"damaged checkpoint: no '{key}' entry")
    return payload


class Checkpointer:
    """Owns a run directory's ``last.pt``, ``best.pt``, ``history.json`` and ``history.csv``.

    Only the main process writes; on other ranks :meth:`save` and :meth:`write_history` do nothing.
    Every file is written to a temporary name beside it, flushed to disk and renamed into place, so
    an interruption leaves either the old or the new file, never a partial one.
    """

    LAST = "last.pt"
    BEST = "best.pt"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    @property
    def last_path(self) -> Path:
        return self.run_dir / self.LAST

    @property
    def best_path(self) -> Path:
        return self.run_dir / self.BEST

    def has_checkpoint(self) -> bool:
        return self.last_path.is_file()

    def save(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
             scheduler=None, scaler: torch.amp.GradScaler | None = None, extra: dict | None = None,
             best_metric: float | None = None, *, is_best: bool = False, history: list[dict] | None = None,
             monitor: str | None = None, mode: str | None = None) -> Path | None:
        """Write ``last.pt`` for ``epoch`` completed epochs (and ``best.pt`` too when ``is_best``).

        ``best_metric`` is the best monitored value so far (kept for resuming). ``extra`` is any
        caller data made of tensors, numbers, strings, lists and dicts. The model is unwrapped from
        DDP / ``torch.compile`` first. Returns the path written, or ``None`` on non-main ranks.
        """
        if not runtime.is_main_process():
            return None
        payload = {
            "format": CHECKPOINT_FORMAT,
            "format_version": CHECKPOINT_VERSION,
            "epoch": int(epoch),
            "model": runtime.unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
            "best_metric": None if best_metric is None else float(best_metric),
            "monitor": monitor,
            "mode": mode,
            "history": list(history or []),
            "rng": capture_rng_state(),
            "world_size": runtime.world_size(),
            "torch_version": str(torch.__version__),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "extra": dict(extra or {}),
        }
        _check_plain(payload, "checkpoint")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write(self.last_path, payload)
        if is_best:
            with atomic_path(self.best_path) as tmp:
                shutil.copyfile(self.last_path, tmp)
                _fsync(tmp)
        return self.last_path

    @staticmethod
    def _write(path: Path, payload: dict) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                torch.save(payload, fh)
                fh.flush()
                os.fsync(fh.fileno())

    def load_latest(self, map_location: str | torch.device = "cpu") -> dict | None:
        """The payload of ``last.pt``, or ``None`` when the run has none yet."""
        if not self.has_checkpoint():
            return None
        return load_checkpoint(self.last_path, map_location)

    def restore(self, payload: dict, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                scheduler=None, scaler: torch.amp.GradScaler | None = None, rng: bool = True,
                path: str | Path | None = None) -> None:
        """Put a checkpoint's state back into the given objects (errors name the checkpoint file)."""
        where = path or self.last_path
        try:
            runtime.unwrap_model(model).load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise CheckpointError(where, f"model weights do not fit the current model: {exc}") from exc
        if optimizer is not None and payload.get("optimizer") is not None:
            try:
                optimizer.load_state_dict(payload["optimizer"])
            except (ValueError, KeyError) as exc:
                raise CheckpointError(where, f"optimizer state does not fit the current optimizer: {exc}") from exc
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and scaler.is_enabled() and payload.get("scaler"):
            scaler.load_state_dict(payload["scaler"])
        if rng and payload.get("rng") is not None:
            restore_rng_state(payload["rng"])

    def write_history(self, history: list[dict]) -> None:
        """Write ``history.json`` and ``history.csv`` (main process only, atomically)."""
        if not runtime.is_main_process():
            return
        write_json_atomic(self.run_dir / "history.json", history)
        columns: list[str] = []
        for row in history:
            for key in row:
                if key not in columns:
                    columns.append(key)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
        write_text_atomic(self.run_dir / "history.csv", buf.getvalue())


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


# ---------------------------------------------------------------------------------------- loop

def _as_log(log) -> Callable[[str], None]:
    if log is None:
        return logging.getLogger("sinus_anomaly.train").info
    if isinstance(log, (logging.Logger, runtime.RunLogger)):
        return log.info
    if callable(log):
        return log
    raise TypeError("log must be a logging.Logger, a RunLogger, a callable or None")


def _loaders_samplers(loader) -> list:
    found = []
    for obj in (getattr(loader, "sampler", None), getattr(getattr(loader, "batch_sampler", None), "sampler", None)):
        if obj is not None and all(obj is not f for f in found):
            found.append(obj)
    return found


def _begin_epoch(loaders, seed: int, epoch: int, rank: int) -> None:
    """Make everything random in this epoch a function of ``(seed, epoch, rank)``."""
    runtime.reseed_all(runtime.derive_seed(seed, epoch, rank))
    for i, loader in enumerate(loaders):
        if loader is None:
            continue
        gens = [getattr(loader, "generator", None)]
        for sampler in _loaders_samplers(loader):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            gens.append(getattr(sampler, "generator", None))
        seen = []
        for j, g in enumerate(gens):
            if isinstance(g, torch.Generator) and all(g is not s for s in seen):
                g.manual_seed(runtime.derive_seed(seed, epoch, rank, 1000 + i, j))
                seen.append(g)


def _better(value: float, best: float | None, mode: str) -> bool:
    if value is None or not math.isfinite(value):
        return False
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def _check_loss(result, where: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """A loss step's result as ``(scalar loss, {name: scalar metric})`` (a bare loss: no metrics)."""
    loss, metrics = result if isinstance(result, tuple) and len(result) == 2 and isinstance(result[1], dict) else (result, {})
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"loss_step_fn must return a scalar loss tensor or (loss, metrics) ({where}); got {type(loss).__name__}")
    checked = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise TypeError(f"loss_step_fn's metrics must be named scalar tensors ({where}); got {name!r}: {type(value).__name__}")
        checked[name] = value.detach().reshape(()).to(torch.float64)
    return loss.reshape(()), checked


def _epoch_means(totals: dict[str, torch.Tensor], n_steps: int) -> dict[str, float]:
    """Each metric's mean over the epoch's steps and all ranks, as the loss (names in one order on every rank)."""
    return {name: float(runtime.reduce_mean((totals[name] / max(n_steps, 1)).float()).item()) for name in sorted(totals)}


def metric_columns(split: str, loss: float | None, metrics: dict[str, float]) -> dict[str, float]:
    """History columns ``<split>_<metric>``, and with a :data:`FLOOR` ``<split>_excess`` = loss - floor."""
    columns = {f"{split}_{name}": value for name, value in metrics.items()}
    if FLOOR in metrics and loss is not None:
        columns[f"{split}_excess"] = loss - metrics[FLOOR]
    return columns


@dataclass
class _Progress:
    """What carries over between epochs besides the objects' own state: resumed from ``last.pt``."""

    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float | None = None


def resume_training(checkpointer: Checkpointer | None, resume: bool, model: nn.Module, optimizer, scheduler,
                    scaler: torch.amp.GradScaler, monitor: str, mode: str, epochs: int, info: Callable[[str], None]) -> _Progress:
    """Restore the run's ``last.pt`` into the given objects (with ``resume``) and say where it stopped.

    Without ``resume`` an existing ``last.pt`` is an error (no silent overwriting of a finished
    run); with ``resume`` and no checkpoint the run starts from scratch.
    """
    if checkpointer is None or not checkpointer.has_checkpoint():
        if resume:
            info("no checkpoint to resume from; starting from scratch")
        return _Progress()
    if not resume:
        raise CheckpointError(checkpointer.last_path, "a checkpoint of an earlier run is already here; "
                              "resume it or choose a new run directory")
    payload = checkpointer.load_latest()
    checkpointer.restore(payload, model, optimizer, scheduler, scaler)
    start = int(payload["epoch"])
    progress = _Progress(start, [dict(row) for row in payload.get("history") or []][:start], payload.get("best_metric"))
    if payload.get("monitor") not in (None, monitor) or payload.get("mode") not in (None, mode):
        info(f"warning: checkpoint monitored {payload.get('monitor')} ({payload.get('mode')}), "
             f"this run monitors {monitor} ({mode}); the best value is reset")
        progress.best = None
    if payload.get("world_size", 1) != runtime.world_size():
        info(f"warning: checkpoint was written with {payload.get('world_size')} process(es), now "
             f"{runtime.world_size()}; the data order will differ from the original run")
    info(f"resuming from {checkpointer.last_path} after epoch {start}/{epochs}")
    return progress


def train_epoch(model: nn.Module, loader, loss_step_fn: LossStepFn, optimizer: torch.optim.Optimizer, scheduler,
                scaler: torch.amp.GradScaler, device: torch.device, amp: bool, epoch: int, epochs: int, show: bool,
                after_step: Callable[[int, int], None] | None = None, metrics: dict | None = None) -> float:
    """One pass over ``loader`` with an optimisation step per batch; the mean loss over all ranks.

    The scheduler steps once per batch; ``after_step(global step, total steps)`` follows each step.
    ``metrics``, when given, receives the epoch mean (all ranks) of each metric the loss step returns.
    """
    from tqdm.auto import tqdm  # noqa: PLC0415

    model.train()
    total = torch.zeros((), dtype=torch.float64, device=device)
    totals: dict[str, torch.Tensor] = {}
    n_steps = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs} train", leave=False, disable=not show, dynamic_ncols=True)
    for batch in bar:
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast_context(device, amp):
            loss, step_metrics = _check_loss(loss_step_fn(model, batch, device), "training")
        for name, value in step_metrics.items():
            totals[name] = totals.get(name, 0.0) + value
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        total += loss.detach().to(torch.float64)
        n_steps += 1
        if after_step is not None:
            after_step(epoch * len(loader) + n_steps, epochs * len(loader))
        if show and (n_steps % 10 == 1 or n_steps == len(loader)):
            bar.set_postfix(loss=f"{total.item() / n_steps:.4g}", lr=f"{optimizer.param_groups[0]['lr']:.3g}")
    bar.close()
    mean = float(runtime.reduce_mean((total / max(n_steps, 1)).float()).item())
    if metrics is not None:
        metrics.update(_epoch_means(totals, n_steps))
    return mean


def recompute_batchnorm_statistics(model: nn.Module, loader, loss_step_fn: LossStepFn, device: torch.device, amp: bool) -> None:
    """Replace every BatchNorm's running mean and variance by their average over one pass of
    ``loader`` with the current weights (no gradients, no optimisation step).

    ``torch.optim.swa_utils.update_bn``'s procedure (reset, ``momentum=None`` for a cumulative
    average, forward passes in train mode), fed through ``loss_step_fn`` so any batch layout works.
    Why: with a few optimisation steps per epoch, the running statistics (an exponential average
    over recent batches, computed with older weights) lag the weights, and eval-mode predictions
    swing from epoch to epoch; the checkpoint chosen by validation loss is then a matter of luck.
    Under DDP each process averages its own share of the batches (every process has as many), and
    the statistics are then averaged over the processes: the average over all batches, the same on
    every rank, so rank 0's checkpoint holds them.
    """
    net = runtime.unwrap_model(model)  # not through DDP, which copies rank 0's buffers over every rank's at each forward
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    with torch.no_grad():
        for batch in loader:
            with runtime.autocast_context(device, amp):
                loss_step_fn(net, batch, device)  # for the forward pass only
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        m.running_mean.copy_(runtime.reduce_mean(m.running_mean))
        m.running_var.copy_(runtime.reduce_mean(m.running_var))


def validate(model: nn.Module, loader, loss_step_fn: LossStepFn, device: torch.device, amp: bool, epoch: int,
             epochs: int, show: bool, metrics: dict | None = None) -> float | None:
    """Mean loss over ``loader`` in eval mode without gradients (all ranks); ``None`` without batches.
    ``metrics``, when given, receives the mean of each metric the loss step returns (as :func:`train_epoch`)."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    if loader is None:
        return None
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    totals: dict[str, torch.Tensor] = {}
    n_steps = 0
    with torch.no_grad():
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs} val", leave=False, disable=not show, dynamic_ncols=True)
        for batch in bar:
            with runtime.autocast_context(device, amp):
                loss, step_metrics = _check_loss(loss_step_fn(model, batch, device), "validation")
            for name, value in step_metrics.items():
                totals[name] = totals.get(name, 0.0) + value
            total += loss.detach().to(torch.float64)
            n_steps += 1
        bar.close()
    if not n_steps:
        return None
    if metrics is not None:
        metrics.update(_epoch_means(totals, n_steps))
    return float(runtime.reduce_mean((total / n_steps).float()).item())


def fit(model: nn.Module, train_loader, val_loader, loss_step_fn: LossStepFn, epochs: int,
        optimizer: torch.optim.Optimizer, scheduler, device: torch.device, checkpointer: Checkpointer | None,
        resume: bool = False, monitor: str = "val_loss", mode: str = "min", amp: bool = False,
        progress: bool = True, log=None, *, seed: int = 0, extra: dict | None = None,
        after_step: Callable[[int, int], None] | None = None, recompute_batchnorm: bool = False) -> list[dict]:
    """Train ``model`` for ``epochs`` epochs; return the per-epoch history.

    Each epoch: reseed (:func:`_begin_epoch`), :func:`train_epoch`, with ``recompute_batchnorm``
    :func:`recompute_batchnorm_statistics` over the training loader, :func:`validate`, then
    ``last.pt`` (and ``best.pt`` on improvement) and the history files.

    Args:
        model: the model, already on ``device`` (and wrapped with :func:`runtime.wrap_ddp` for DDP).
        train_loader, val_loader: :class:`~SinusAnomalyTraining.data.CropLoader` (batches already on
            the device, augmented on it) or DataLoaders; anything with ``len`` that yields batches
            (``val_loader`` may be ``None``). With DDP give them a ``DistributedSampler``
            (:func:`runtime.distributed_sampler`, as ``.sampler``); a ``.generator`` is reseeded too.
        loss_step_fn: ``loss_step_fn(model, batch, device) -> scalar loss tensor`` or ``(loss,
            {name: scalar tensor})``; moves the batch to ``device`` if it is not there. Used for
            training and, under ``model.eval()`` and ``torch.no_grad()``, for validation. Each named
            metric's epoch mean (over steps and ranks, as the loss's) becomes ``train_<name>`` /
            ``val_<name>`` in the history; a :data:`FLOOR` (a lower bound of the loss, e.g. the soft
            targets' entropy under BCE) also gives ``train_excess`` / ``val_excess`` = loss - floor.
        epochs: total number of epochs of the run (also when resuming).
        scheduler: stepped once per optimisation step (e.g. :class:`optim.WarmupCosine`), or None.
        checkpointer: writes ``last.pt`` every epoch, ``best.pt`` on improvement and the history
            files; ``None`` for no files. Without ``resume``, an existing ``last.pt`` is an error.
        resume: continue from ``checkpointer``'s ``last.pt`` (:func:`resume_training`).
        monitor, mode: history key deciding ``best.pt`` (``"min"`` or ``"max"``). With no
            validation loader, ``"val_loss"`` falls back to ``"train_loss"``.
        amp: mixed precision on CUDA (bf16, or fp16 with a GradScaler); ignored on CPU.
        progress: tqdm bars (main process only).
        log: a ``logging.Logger``, :class:`runtime.RunLogger` or ``callable(str)``.
        seed: the run's seed; each epoch reseeds from ``(seed, epoch, rank)``.
        extra: caller data stored in every checkpoint (plain data only).
        after_step: ``after_step(step, total_steps)`` after every optimisation step (1-based global
            step; e.g. BYOL's target update). A function of the step only, so resuming repeats it.

    Returns:
        A list with one dict per epoch: ``epoch`` (1-based), ``train_loss``, ``val_loss`` (or None)
        and ``lr`` (learning rate of the first group at the end of the epoch), then the loss step's
        metrics if it returns any (see ``loss_step_fn``).
    """
    if mode not in ("min", "max"):
        raise InvalidValueError(f"mode must be 'min' or 'max' (got {mode!r})")
    epochs = int(epochs)
    if epochs < 1:
        raise InvalidValueError(f"epochs must be at least 1 (got {epochs})")
    if len(train_loader) == 0:
        raise TrainingError("the training loader yields no batches (dataset smaller than one batch with drop_last?)")
    info = _as_log(log)
    device = torch.device(device)
    rank = runtime.rank()
    if monitor == "val_loss" and val_loader is None:
        info("no validation data: best.pt follows the training loss")
        monitor = "train_loss"
    scaler = runtime.make_grad_scaler(device, amp)
    for loader in (train_loader, val_loader):
        if loader is not None and getattr(loader, "persistent_workers", False):
            info("warning: persistent_workers=True keeps worker RNG state across epochs; "
                 "a resumed run will not repeat the uninterrupted one exactly")

    state = resume_training(checkpointer, resume, model, optimizer, scheduler, scaler, monitor, mode, epochs, info)
    history = state.history
    show = bool(progress) and runtime.is_main_process()
    for epoch in range(state.start_epoch, epochs):
        t0 = time.perf_counter()
        _begin_epoch([train_loader, val_loader], seed, epoch, rank)
        train_metrics, val_metrics = {}, {}
        train_loss = train_epoch(model, train_loader, loss_step_fn, optimizer, scheduler, scaler, device, amp, epoch,
                                 epochs, show, after_step, metrics=train_metrics)
        if recompute_batchnorm:
            recompute_batchnorm_statistics(model, train_loader, loss_step_fn, device, amp)
        val_loss = validate(model, val_loader, loss_step_fn, device, amp, epoch, epochs, show, metrics=val_metrics)
        entry: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                                 "lr": float(optimizer.param_groups[0]["lr"]),
                                 **metric_columns("train", train_loss, train_metrics), **metric_columns("val", val_loss, val_metrics)}
        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            raise TrainingError(f"the loss became {train_loss if not math.isfinite(train_loss) else val_loss} in "
                                f"epoch {epoch + 1}; lower the learning rate or check the data "
                                f"(last good checkpoint: epoch {epoch})")
        if monitor not in entry:
            raise InvalidValueError(f"monitor {monitor!r} is not in the history entry (keys: {', '.join(entry)})")
        history.append(entry)
        improved = _better(entry[monitor], state.best, mode)
        if improved:
            state.best = float(entry[monitor])
        if checkpointer is not None:
            checkpointer.save(epoch + 1, model, optimizer, scheduler, scaler, extra, state.best, is_best=improved,
                              history=history, monitor=monitor, mode=mode)
            checkpointer.write_history(history)
        val_txt = "n/a" if val_loss is None else f"{val_loss:.5g}"
        excess = "".join(f"  {split}_excess {entry[f'{split}_excess']:.5g} (floor {entry[f'{split}_floor']:.5g})"
                         for split in ("train", "val") if f"{split}_excess" in entry)
        info(f"epoch {epoch + 1}/{epochs}: train_loss {train_loss:.5g}  val_loss {val_txt}{excess}  "
             f"lr {entry['lr']:.4g}  {time.perf_counter() - t0:.1f}s" + ("  (best)" if improved else ""))

    runtime.barrier()
    return history

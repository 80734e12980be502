"""Run-time plumbing shared by the training commands: device, seeding, DDP, mixed precision, logging.

Nothing here knows about models or data. Distributed runs are launched with ``torchrun`` (or
``python -m torch.distributed.run``); :func:`init_distributed` reads its environment variables.
Without them every helper degrades to the single-process behaviour.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from SinusAnomalyLib.errors import DeviceError, InvalidValueError

__all__ = [
    "DeviceError", "select_device",
    "seed_everything", "set_deterministic", "derive_seed", "make_generator", "reseed_all",
    "DistInfo", "init_distributed", "is_distributed", "is_main_process", "rank", "world_size", "barrier",
    "cleanup", "wrap_ddp", "unwrap_model", "distributed_sampler", "per_process_batch", "describe_batch",
    "all_gather_tensor", "reduce_mean", "to_device", "bf16_native", "amp_dtype", "autocast_context", "make_grad_scaler",
    "RunLogger", "setup_run_logging",
]


# ----------------------------------------------------------------------------------------- device

def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cuda"``, ``"cuda:N"`` or ``"cpu"``.

    Under ``torchrun`` with CUDA, ``"auto"``/``"cuda"`` pick the GPU of this process
    (``LOCAL_RANK``) and make it the current device.
    """
    name = (name or "auto").strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda") and not name.startswith("cuda:"):
        raise DeviceError(f"unknown device {name!r}; use 'auto', 'cuda', 'cuda:N' or 'cpu'")
    if not torch.cuda.is_available():
        if name == "auto":
            return torch.device("cpu")
        raise DeviceError(f"device {name!r} requested but CUDA is not available "
                          f"(torch {torch.__version__}, built with CUDA {torch.version.cuda or 'none'}); "
                          "use --device cpu or install a CUDA build of PyTorch")
    if name.startswith("cuda:"):
        try:
            index = int(name.split(":", 1)[1])
        except ValueError:
            raise DeviceError(f"unknown device {name!r}; use 'cuda:N' with a GPU number") from None
    else:
        index = int(os.environ.get("LOCAL_RANK", "0"))
    count = torch.cuda.device_count()
    if not 0 <= index < count:
        if not name.startswith("cuda:") and "LOCAL_RANK" in os.environ:
            raise DeviceError(f"this process has LOCAL_RANK={index} but only {count} GPU(s) are visible: start at most "
                              f"{count} process(es) per machine (torchrun --nproc_per_node {count}) or use --device cpu")
        raise DeviceError(f"GPU {index} requested but only {count} GPU(s) are visible")
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return device


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (a CPU tensor) on ``device``; to a GPU through pinned memory without blocking, because a
    copy from pageable memory makes the CPU wait for every kernel queued before it."""
    if torch.device(device).type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------- seeding

def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (e.g. ``(seed, epoch, rank)``)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(1)[0])


def reseed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every GPU)."""
    seed = int(seed) & 0xFFFFFFFF
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed every global random generator and choose the GPU kernels (:func:`set_deterministic`)."""
    os.environ.setdefault("PYTHONHASHSEED", str(int(seed)))  # affects child processes only
    reseed_all(seed)
    set_deterministic(deterministic)


CUBLAS_WORKSPACE = ":4096:8"  # what cuBLAS needs for deterministic results (PyTorch's "Reproducibility" notes)


def set_deterministic(deterministic: bool) -> None:
    """The kernel choice: deterministic where PyTorch has such a kernel (``True``) or fastest (``False``).

    ``True`` (the configurations' ``"deterministic": true``, CPU runs and tests): cuDNN's
    deterministic kernels without auto-tuning, ``torch.use_deterministic_algorithms(True,
    warn_only=True)`` and ``CUBLAS_WORKSPACE_CONFIG`` (read when cuBLAS starts, so set it before the
    first CUDA work: the training commands call this before choosing the device). ``warn_only``:
    ops without a deterministic CUDA kernel (per PyTorch's documentation: the backward passes of
    trilinear upsampling and of adaptive average pooling, which our networks use) warn instead of
    stopping the run, so a GPU run is NOT guaranteed to repeat bit for bit. ``False``:
    ``cudnn.benchmark`` times the candidate kernels and keeps the fastest (the ``paper``
    configurations on a GPU). CPU runs repeat either way.
    """
    if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            logging.getLogger(__name__).warning("deterministic mode set after CUDA started: CUBLAS_WORKSPACE_CONFIG "
                                                "may not take effect; set it in the environment")
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)


def make_generator(seed: int, *parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from ``(seed, *parts)``, for a loader's shuffling order
    (:class:`SinusAnomalyTraining.data.CropLoader`, or a DataLoader's ``generator=``), so the data
    order is a function of the seed. :func:`SinusAnomalyTraining.engine.fit` reseeds it every epoch.
    """
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *parts))
    return g


# ------------------------------------------------------------------------------------ distributed

@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def init_distributed(device: torch.device | str, timeout_s: float | None = None) -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Backend from the run's ``device`` (from :func:`select_device`), not from the machine: NCCL for
    a CUDA device, gloo for the CPU (``--device cpu`` on a GPU machine too). Without those
    variables (or with ``WORLD_SIZE=1``) nothing is initialised and a single-process
    :class:`DistInfo` is returned. Needs ``MASTER_ADDR``/``MASTER_PORT`` (torchrun sets them).
    Leave the group with :func:`cleanup` (the CLI does, in a ``finally``).
    """
    env = os.environ
    ws = int(env.get("WORLD_SIZE", "1"))
    if ws <= 1 or "RANK" not in env:
        return DistInfo()
    rk = int(env["RANK"])
    local = int(env.get("LOCAL_RANK", rk))
    if not dist.is_available():
        raise DeviceError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed support")
    backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
    if not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in env]
        if missing:
            raise DeviceError(f"distributed run (WORLD_SIZE={ws}) without {', '.join(missing)}; launch with torchrun")
        kwargs = {}
        if timeout_s is not None:
            import datetime
            kwargs["timeout"] = datetime.timedelta(seconds=timeout_s)
        if backend == "nccl":  # binds this process's GPU (set by select_device) to the group
            kwargs["device_id"] = torch.device(device)
        dist.init_process_group(backend=backend, init_method="env://", rank=rk, world_size=ws, **kwargs)
    return DistInfo(rank=rk, world_size=ws, local_rank=local, backend=dist.get_backend())


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup(synchronise: bool = False) -> None:
    """Leave the process group (no-op when not distributed).

    ``synchronise``: after work that finished on every rank, wait for all of them first. A gloo
    rank that tears the group down while its peer is still leaving it was at times aborted
    ("terminate called without an active exception", seen once in a full test run under load);
    after a failure no barrier is attempted (the other ranks may never reach it).
    """
    if is_distributed():
        if synchronise:
            dist.barrier()
        dist.destroy_process_group()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP / DataParallel / ``torch.compile`` wrapper."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Move ``model`` to ``device`` and wrap it in DDP when distributed; otherwise return it moved."""
    model = model.to(device)
    if not is_distributed() or world_size() == 1:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def distributed_sampler(dataset, shuffle: bool, seed: int = 0, drop_last: bool = False):
    """A ``DistributedSampler`` when running on more than one process, else ``None``.

    Pass it as the DataLoader's ``sampler`` (and ``shuffle=shuffle`` only when it is ``None``);
    :func:`SinusAnomalyTraining.engine.fit` calls ``set_epoch`` on it every epoch.
    """
    if world_size() <= 1:
        return None
    from torch.utils.data.distributed import DistributedSampler
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                              seed=int(seed), drop_last=drop_last)


def per_process_batch(global_batch: int) -> int:
    """Each process's batch when the processes together train on ``global_batch`` (rounded down to a
    multiple of the world size): a configuration's ``batch_size`` is the global batch, so the paper's
    batch and learning rate hold under any number of processes. Under DDP every process needs two
    samples or more (BatchNorm cannot train on one whose deepest feature map is one voxel)."""
    ws = world_size()
    if ws > 1 and global_batch // ws < 2:
        raise InvalidValueError(f"a batch of {global_batch} split over {ws} processes leaves fewer than 2 samples per "
                                "process; use fewer processes (torchrun --nproc_per_node) or more data")
    return max(1, global_batch // ws)


def describe_batch(per_process: int) -> str:
    """``"batch 256"``, or under DDP ``"batch 256 (4 processes x 64)"``: what a stage's first log line says."""
    ws = world_size()
    return f"batch {per_process * ws}" + (f" ({ws} processes x {per_process})" if ws > 1 else "")


def _collective_device(t: torch.Tensor) -> torch.device:
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_tensor(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` from every process along dim 0 (sizes along dim 0 may differ).

    Returns ``t`` itself (detached) when not distributed. Order: rank 0's rows first.
    """
    t = t.detach()
    if not is_distributed() or world_size() == 1:
        return t
    if t.ndim == 0:
        t = t.reshape(1)
    home = t.device
    work = t.to(_collective_device(t))
    n = torch.tensor([work.shape[0]], device=work.device, dtype=torch.long)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes_i = [int(s.item()) for s in sizes]
    longest = max(sizes_i)
    if work.shape[0] < longest:
        pad = work.new_zeros((longest - work.shape[0],) + tuple(work.shape[1:]))
        work = torch.cat([work, pad])
    parts = [torch.empty_like(work) for _ in range(world_size())]
    dist.all_gather(parts, work.contiguous())
    return torch.cat([p[:s] for p, s in zip(parts, sizes_i)]).to(home)


def reduce_mean(value):
    """Mean of a number or tensor over all processes (the value itself when not distributed).

    A Python number comes back as a float, a tensor as a tensor on its own device.
    """
    if not is_distributed() or world_size() == 1:
        return value
    is_tensor = isinstance(value, torch.Tensor)
    t = value.detach() if is_tensor else torch.tensor(float(value), dtype=torch.float64)
    home = t.device
    work = t.to(_collective_device(t)).clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    work = work / world_size()
    return work.to(home) if is_tensor else float(work.item())


# -------------------------------------------------------------------------------- mixed precision

def bf16_native(device: torch.device) -> bool:
    """True when the GPU ``device`` computes in bfloat16 natively (compute capability 8.0 or newer).

    ``torch.cuda.is_bf16_supported()`` alone also counts emulation, which makes a V100 or T4
    (capability 7.x) run bfloat16 3-D convolutions slowly or not at all.
    """
    if torch.cuda.get_device_capability(device)[0] < 8:
        return False
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # a torch from before the argument existed: it did not count emulation
        return torch.cuda.is_bf16_supported()


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``device``: bfloat16 where the GPU has it natively (:func:`bf16_native`),
    else float16 (with loss scaling, :func:`make_grad_scaler`); None on the CPU."""
    if torch.device(device).type != "cuda":
        return None
    return torch.bfloat16 if bf16_native(device) else torch.float16


def autocast_context(device: torch.device, enabled: bool):
    """Autocast for mixed-precision training on CUDA (bf16 if supported, else fp16); a no-op on CPU.

    Pair it with :func:`make_grad_scaler`, which is active only for fp16.
    """
    dtype = amp_dtype(device) if enabled else None
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """A GradScaler, enabled only for fp16 autocast on CUDA (bf16 and fp32 need no loss scaling).

    A disabled scaler is a pass-through: ``scale(loss)`` is ``loss``, ``step(opt)`` is ``opt.step()``.
    """
    use = bool(enabled) and amp_dtype(device) == torch.float16
    return torch.amp.GradScaler("cuda", enabled=use)


# ---------------------------------------------------------------------------------------- logging

_HANDLER_TAG = "_sinus_anomaly_run_handler"


class RunLogger:
    """A run's logger: ``run_dir/train.log`` (appended, so a resumed run continues it) + console.

    Only the main process writes; on other ranks the logger drops everything below ERROR. Use as a
    context manager or call :meth:`close` to release the log file.
    """

    def __init__(self, run_dir: str | Path | None, name: str = "sinus_anomaly.train",
                 level: int = logging.INFO, console: bool = True):
        self.logger = logging.getLogger(name)
        self.logger.propagate = False
        self.path: Path | None = None
        self._remove_own_handlers()
        if is_main_process():
            self.logger.setLevel(level)
            if run_dir is not None:
                run_dir = Path(run_dir)
                run_dir.mkdir(parents=True, exist_ok=True)
                self.path = run_dir / "train.log"
                fh = logging.FileHandler(self.path, mode="a", encoding="utf-8")
                fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
                self._add(fh)
            if console:
                sh = logging.StreamHandler(sys.stderr)
                sh.setFormatter(logging.Formatter("%(message)s"))
                self._add(sh)
        else:
            self.logger.setLevel(logging.ERROR)
            sh = logging.StreamHandler(sys.stderr)
            sh.setFormatter(logging.Formatter(f"[rank {rank()}] %(levelname)s %(message)s"))
            self._add(sh)

    def _add(self, handler: logging.Handler) -> None:
        setattr(handler, _HANDLER_TAG, True)
        self.logger.addHandler(handler)

    def _remove_own_handlers(self) -> None:
        for h in list(self.logger.handlers):
            if getattr(h, _HANDLER_TAG, False):
                self.logger.removeHandler(h)
                h.close()

    def debug(self, msg: str, *args) -> None:
        self.logger.debug(msg, *args)

    def info(self, msg: str, *args) -> None:
        self.logger.info(msg, *args)

    def warning(self, msg: str, *args) -> None:
        self.logger.warning(msg, *args)

    def error(self, msg: str, *args) -> None:
        self.logger.error(msg, *args)

    def close(self) -> None:
        self._remove_own_handlers()

    def __enter__(self) -> "RunLogger":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def setup_run_logging(run_dir: str | Path | None, level: int = logging.INFO, console: bool = True) -> RunLogger:
    """Create the :class:`RunLogger` of a run (``run_dir/train.log`` plus console, main process only)."""
    return RunLogger(run_dir, level=level, console=console)


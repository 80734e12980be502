"""Worker for the CPU/gloo DDP test in test_engine.py; launched with ``python -m torch.distributed.run``.

Usage: ddp_worker.py RUN_DIR OUT_DIR. Every rank trains the same tiny model for two epochs with
``fit``; each writes its final weights and what it saw to OUT_DIR/rank{R}.pt / .json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from SinusAnomalyTraining import engine, runtime
from SinusAnomalyLib.models import parameter_groups
from SinusAnomalyTraining.optim import LARS, WarmupCosine


class Volumes(Dataset):
    def __init__(self, n: int = 16):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 1, 8, 8, 8, generator=g)
        self.y = self.x.mean(dim=(1, 2, 3, 4))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x + 0.05 * torch.rand_like(x), self.y[i]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.BatchNorm3d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool3d(2), nn.Flatten())
        self.head = nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.features(x))


class RecordingCheckpointer(engine.Checkpointer):
    def __init__(self, run_dir):
        super().__init__(run_dir)
        self.written = []

    def save(self, *args, **kwargs):
        path = super().save(*args, **kwargs)
        if path is not None:
            self.written.append(str(path))
        return path


def loss_step(model, batch, device):
    x, y = batch
    return nn.functional.mse_loss(model(x.to(device)).squeeze(1), y.to(device))


def main() -> int:
    run_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    device = runtime.select_device("cpu")
    info = runtime.init_distributed(device, timeout_s=60)
    finished = False
    try:
        assert info.world_size == 2 and runtime.world_size() == 2, info
        runtime.seed_everything(7)
        torch.manual_seed(100 + info.rank)  # different init per rank: DDP must broadcast rank 0's weights
        model = runtime.wrap_ddp(Net(), device)
        ds = Volumes()
        sampler = runtime.distributed_sampler(ds, shuffle=True, seed=7)
        loader = DataLoader(ds, batch_size=4, sampler=sampler)
        val_loader = DataLoader(ds, batch_size=4, sampler=runtime.distributed_sampler(ds, shuffle=False))
        opt = LARS(parameter_groups(runtime.unwrap_model(model), 1e-4), lr=0.5, eta=0.02)
        sched = WarmupCosine.for_loader(opt, loader, epochs=2, warmup_epochs=1)
        ckpt = RecordingCheckpointer(run_dir)
        history = engine.fit(model, loader, val_loader, loss_step, 2, opt, sched, device, ckpt,
                             progress=False, seed=7)
        gathered = runtime.all_gather_tensor(torch.full((info.rank + 1, 2), float(info.rank)))
        mean = runtime.reduce_mean(float(info.rank))
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(runtime.unwrap_model(model).state_dict(), out_dir / f"rank{info.rank}.pt")
        (out_dir / f"rank{info.rank}.json").write_text(json.dumps({
            "rank": info.rank, "backend": info.backend, "written": ckpt.written, "history": history,
            "sampler": type(sampler).__name__, "gathered": gathered[:, 0].tolist(), "mean": mean,
            "steps_per_epoch": len(loader),
        }))
        finished = True
    finally:
        runtime.cleanup(synchronise=finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Worker for the 2-process gloo checks of the multi-GPU paths in test_gpu_paths.py (issue 27, item 8).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 ddp_checks_worker.py OUT_DIR [cpu|cuda]``
(default cpu: gloo; cuda: NCCL, one GPU per process, as ``benchmarks/gpu_check.sh`` runs it with 2
GPUs). Each rank writes OUT_DIR/rank{R}.json with what it saw:

* ``batchnorm``: running statistics after :func:`engine.recompute_batchnorm_statistics` on the
  DDP-wrapped model, and the reference (one process through every rank's batches);
* ``tiny``: the batch sizes a fine-tuning loader serves this rank from 5 crops, and the error for 3;
* ``backend`` and whether the process group is gone after :func:`runtime.cleanup`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from ddp_worker import Net
from SinusAnomalyLib.errors import InvalidValueError
from SinusAnomalyTraining import engine, runtime
from SinusAnomalyTraining.data import CropLoader, SinusCrops


def crops(n: int, seed: int = 0) -> SinusCrops:
    g = torch.Generator().manual_seed(seed)
    return SinusCrops(torch.rand(n, 1, 8, 8, 8, generator=g).half(), np.zeros(n, dtype=np.int64))


def image_step(net, batch, device):
    return net(batch["image"].to(device)).mean()


def batchnorm_check(device) -> dict:
    torch.manual_seed(100 + runtime.rank())  # different weights per rank: DDP broadcasts rank 0's
    model = runtime.wrap_ddp(Net(), device)
    loader = CropLoader(crops(12), 2, True, 0, device)  # 6 crops, 3 batches per rank
    seen = torch.cat([b["image"] for b in loader])  # this rank's batches, in order
    engine.recompute_batchnorm_statistics(model, loader, image_step, device, amp=False)
    bn = runtime.unwrap_model(model).features[1]

    reference = Net().to(device)
    reference.load_state_dict(runtime.unwrap_model(model).state_dict())
    norm = reference.features[1]
    norm.reset_running_stats()
    norm.momentum = None
    reference.train()
    every = runtime.all_gather_tensor(seen)  # rank 0's batches, then rank 1's
    with torch.no_grad():
        for start in range(0, len(every), 2):
            reference(every[start:start + 2])
    return {"mean": bn.running_mean.tolist(), "var": bn.running_var.tolist(),
            "reference_mean": norm.running_mean.tolist(), "reference_var": norm.running_var.tolist()}


def tiny_check(device) -> dict:
    batch = runtime.per_process_batch(min(16, 5))
    loader = CropLoader(crops(5), batch, True, 0, device, drop_single=True)
    sizes = [len(b["image"]) for b in loader]
    try:
        runtime.per_process_batch(min(16, 3))
        error = None
    except InvalidValueError as exc:
        error = str(exc)
    return {"per_process": batch, "sizes": sizes, "error_for_3": error}


def main() -> int:
    out_dir = Path(sys.argv[1])
    device = runtime.select_device(sys.argv[2] if len(sys.argv) > 2 else "cpu")
    info = runtime.init_distributed(device, timeout_s=60)
    finished = False
    try:
        result = {"rank": info.rank, "backend": info.backend, "batchnorm": batchnorm_check(device),
                  "tiny": tiny_check(device)}
        finished = True
    finally:
        runtime.cleanup(synchronise=finished)
    result["group_destroyed"] = not torch.distributed.is_initialized()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"rank{info.rank}.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

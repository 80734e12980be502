#!/usr/bin/env bash
# A GPU check of training, about 5 minutes on one CUDA machine (README, "Benchmarks"):
#
#   bash benchmarks/gpu_check.sh [--work DIR] [--no-compile] [--cpu]
#
# 1. Throughput at the paper's size on GPU 0: the input pipeline (CropLoader: gather by index from
#    the float16 crop-and-residual tensor, pinned copy, widening and augmentation on the GPU;
#    batch 256 of 64^3) and the residual pretraining step (ResNet18 U-Net, widths 64-512, bf16
#    autocast, cudnn.benchmark, batch 64): samples/s and peak GPU memory; the step also with
#    channels_last_3d and under torch.compile, the two options that stay off until this shows
#    them faster (--no-compile skips the compilation, a minute or more).
# 2. A small synthetic cohort (16 heads), prepared (2 folds).
# 3. One short epoch of every stage of fold 0 at the paper's size with bf16 autocast: train-cae,
#    residuals, pretrain (residual, ae, simclr, spark), finetune (each of them and none; 100 %
#    labels), evaluate; seconds per command and each stage's epoch line.
# 4. With 2 or more GPUs: residual pretraining again as a 2-process DDP run under torchrun.
#
# --cpu: a smoke run of the same steps on the CPU at toy size (8 heads, no torch.compile): it
# checks the script, it measures nothing. Without --cpu and without CUDA the script stops at once (exit 2).
# Everything goes to --work (default: a new temporary folder), which is kept for inspection.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$here/.venv/bin/python" ]]; then python="$here/.venv/bin/python"; else python="python3"; fi
fi
cpu=0
compile=1
work=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) cpu=1; compile=0 ;;  # compiling takes minutes on a CPU
    --no-compile) compile=0 ;;
    --work) work="$2"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

gpus=$("$python" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
if [[ "$cpu" == 0 && "$gpus" == 0 ]]; then
  echo "gpu_check: no CUDA GPU visible to $python (torch $("$python" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')); run it on a GPU machine, or with --cpu for a smoke run of the script" >&2
  exit 2
fi
work="${work:-$(mktemp -d -t gpu_check.XXXXXX)}"
mkdir -p "$work"
cd "$here"
start=$SECONDS
echo "gpu_check: work folder $work; $gpus GPU(s); $("$python" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
if [[ "$gpus" != 0 ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true; fi

# ------------------------------------------------------------------ 1. throughput at paper size
GPU_CHECK_CPU=$cpu GPU_CHECK_COMPILE=$compile "$python" - <<'PYTHON'
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from SinusAnomalyLib.models import ResidualUNet, parameter_groups
from SinusAnomalyTraining import runtime
from SinusAnomalyTraining.config import load_config
from SinusAnomalyTraining.data import CropLoader, SinusCrops
from SinusAnomalyTraining.optim import LARS

cpu = os.environ["GPU_CHECK_CPU"] == "1"
device = torch.device("cpu" if cpu else "cuda")
size, widths, batch, loader_batch, n = (32, (8, 16, 32, 64), 4, 8, 32) if cpu else (64, (64, 128, 256, 512), 64, 256, 1536)
runtime.set_deterministic(False)
torch.manual_seed(0)


def sync():
    if not cpu:
        torch.cuda.synchronize()


def peak_gib() -> float:
    return float("nan") if cpu else torch.cuda.max_memory_allocated() / 2**30


def reset_peak():
    if not cpu:
        torch.cuda.reset_peak_memory_stats()


crops = SinusCrops(torch.rand(n, 2, size, size, size).half(), np.zeros(n, dtype=np.int64))
loader = CropLoader(crops, loader_batch, True, 0, device, load_config("paper").pretrain.augment, drop_last=True)
for _ in loader:  # warm-up: pinned-memory pool, kernels
    pass
rates = []
for _ in range(3):
    sync()
    t = time.perf_counter()
    count = sum(len(b["image"]) for b in loader)
    sync()
    rates.append(count / (time.perf_counter() - t))
pipeline = sorted(rates)[1]
print(f"input pipeline: {pipeline:.0f} samples/s (CropLoader on {device}, batch {loader_batch} of {size}^3 with residuals, augmented)")


def pretrain_step(channels_last=False, compiled=False):
    model = ResidualUNet(encoder_widths=widths).to(device).train()
    optimizer = LARS(parameter_groups(model, 1e-6), lr=0.1)
    x = torch.rand(batch, 1, size, size, size, device=device)
    target = torch.rand_like(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    net = torch.compile(model) if compiled else model

    def step():
        optimizer.zero_grad(set_to_none=True)
        with runtime.autocast_context(device, True):
            loss = F.binary_cross_entropy_with_logits(net(x), target)
        loss.backward()
        optimizer.step()

    return step


def measure(name, **options):
    t = time.perf_counter()
    step = pretrain_step(**options)
    step()
    step()
    sync()
    warm = time.perf_counter() - t
    reset_peak()
    steps = 3 if cpu else 10
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    rate = batch * steps / (time.perf_counter() - t)
    print(f"model step ({name}): {rate:.1f} samples/s, peak memory {peak_gib():.1f} GiB (first two steps {warm:.1f} s)")
    return rate


plain = measure("pretraining, paper size, bf16 autocast" if not cpu else "pretraining, toy size")
last = measure("channels_last_3d", channels_last=True)
print(f"ratio channels_last_3d / plain: {last / plain:.2f}")
if os.environ["GPU_CHECK_COMPILE"] == "1":
    try:
        compiled = measure("torch.compile", compiled=True)
        print(f"ratio torch.compile / plain: {compiled / plain:.2f}")
    except Exception as error:  # noqa: BLE001 - a compiler failure is a finding, not the end of the check
        print(f"torch.compile failed: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}")
print(f"input pipeline / model step throughput on this device: {pipeline / plain:.1f}")
PYTHON
echo "  ($((SECONDS - start)) s so far)"

# ------------------------------------------------------------------ 2. a small synthetic cohort
sa() { "$python" -m SinusAnomalyTraining "$@"; }
if [[ "$cpu" == 1 ]]; then cases=8; else cases=16; fi
sa synth --out "$work/cohort" --cases "$cases" --seed 0 --previews 0 > "$work/synth.log" 2>&1
sa prepare --images "$work/cohort/images" --labels "$work/cohort/labels.csv" --out "$work/dataset" --folds 2 --no-progress > "$work/prepare.log" 2>&1
echo "cohort of $cases heads prepared ($((SECONDS - start)) s so far)"

# ------------------------------------------------------------------ 3. one epoch of each stage
if [[ "$cpu" == 1 ]]; then
  sizes='"crop_size": 32, "amp": false, "deterministic": true, "device": "cpu", "encoder_widths": [8, 16, 32, 64],
  "cae": {"epochs": 1, "batch_size": 8, "channels": [4, 8, 16], "latent_dim": 32}, "residuals": {"median_kernel": 3, "batch_size": 16},
  "pretrain": {"epochs": 1, "batch_size": 8, "warmup_epochs": 0}, "finetune": {"epochs": 1, "batch_size": 8},
  "pretext": {"ae": {}, "simclr": {"projection_dim": 32}, "spark": {"patch_size": 4}}'
else
  sizes='"crop_size": 64, "amp": true, "deterministic": false, "device": "cuda",
  "cae": {"epochs": 1}, "pretrain": {"epochs": 1, "warmup_epochs": 0}, "finetune": {"epochs": 1}'
fi
cat > "$work/gpu-check.json" <<JSON
{"description": "gpu_check.sh: one epoch of every stage", $sizes,
 "folds": [0], "fractions": [100], "methods": ["none", "residual", "ae", "simclr", "spark"], "evaluate": {"bootstrap": 50}}
JSON
run=("--config" "$work/gpu-check.json" "--dataset" "$work/dataset" "--run-dir" "$work/run" "--no-progress")
stage() {
  local t=$SECONDS
  sa "$@" "${run[@]}" > "$work/stage.log" 2>&1 || { cat "$work/stage.log"; echo "gpu_check: '$*' failed" >&2; exit 1; }
  echo "$* : $((SECONDS - t)) s; $(grep -h "epoch 1/1:" "$work/stage.log" | tail -1 | sed 's/^ *//')"
}
stage train-cae
stage residuals
for method in residual ae simclr spark; do stage pretrain --method "$method"; done
for method in none residual ae simclr spark; do stage finetune --method "$method" --fraction 100; done
sa evaluate --run-dir "$work/run" --dataset "$work/dataset" > "$work/evaluate.log" 2>&1 || { cat "$work/evaluate.log"; exit 1; }
echo "evaluate: done ($((SECONDS - start)) s so far)"

# ------------------------------------------------------------------ 4. two processes
if [[ "$cpu" == 1 || "$gpus" -ge 2 ]]; then
  t=$SECONDS
  "$python" -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29533 \
    -m SinusAnomalyTraining pretrain --method residual --restart "${run[@]}" > "$work/ddp.log" 2>&1 \
    || { tail -40 "$work/ddp.log"; echo "gpu_check: the 2-process DDP run failed" >&2; exit 1; }
  echo "DDP, 2 processes, pretrain --method residual: $((SECONDS - t)) s; $(grep -h "epoch 1/1:" "$work/ddp.log" | tail -1 | sed 's/^ *//')"
else
  echo "DDP: skipped (one GPU)"
fi
echo "gpu_check: done in $((SECONDS - start)) s; logs in $work"

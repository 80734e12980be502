"""Issue 27's checks of the CUDA and mixed-precision paths on GPU 0, one per item; run by gpu_check.sh.

    python benchmarks/gpu_paths_check.py --table FILE --work DIR --config RUN_CONFIG --dataset DATASET [--cpu]

Appends one tab-separated line per check to FILE: item, what was checked, the result ("verified on
GPU", "verified on CPU", "measured on GPU: ...", "skipped: ..." or "FAILED: ..."); exits 1 when a
check failed. Items 2, 3, 4 and 8 (processes, process groups) are checked by gpu_check.sh itself.
With --cpu, the checks that mean something on a CPU run there and the others are skipped.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from SinusAnomalyTraining import runtime

failed = []


def row(table: Path, item: int, check: str, result: str) -> None:
    if result.startswith("FAILED"):
        failed.append(item)
    with open(table, "a", encoding="utf-8") as fh:
        fh.write(f"{item}\t{check}\t{result}\n")
    print(f"item {item}: {check}: {result}", flush=True)


def where(device: torch.device) -> str:
    return "GPU" if device.type == "cuda" else "CPU"


def check_bf16(table, device) -> None:
    """1. bf16 where the GPU has it natively, else fp16 with an active GradScaler; a scaled step works."""
    if device.type != "cuda":
        row(table, 1, "autocast dtype and GradScaler", "skipped: needs a GPU (mocked capabilities: test_gpu_paths.py)")
        return
    capability = torch.cuda.get_device_capability(device)
    dtype = runtime.amp_dtype(device)
    conv = torch.nn.Conv3d(1, 8, 3, padding=1).to(device)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1)
    scaler = runtime.make_grad_scaler(device, True)
    with runtime.autocast_context(device, True):
        out = conv(torch.rand(2, 1, 16, 16, 16, device=device))
    scaler.scale(out.float().square().mean()).backward()
    scaler.step(optimizer)
    scaler.update()
    expected = torch.bfloat16 if capability[0] >= 8 else torch.float16
    ok = (dtype == expected and out.dtype == expected and scaler.is_enabled() == (expected == torch.float16)
          and all(torch.isfinite(p).all() for p in conv.parameters()))
    said = f"capability {capability[0]}.{capability[1]}: autocast {str(out.dtype)[6:]}, GradScaler {'on' if scaler.is_enabled() else 'off'}"
    row(table, 1, said, "verified on GPU" if ok else f"FAILED: expected {expected}")


def check_cae_float32(table, device, config_path: Path, dataset_dir: Path, work: Path) -> None:
    """5. With amp on, the CAE's convolutions compute in float32 and the classifier's in the autocast dtype."""
    if device.type != "cuda":
        row(table, 5, "CAE in float32 under amp", "skipped: needs a GPU (no autocast on a CPU; stage choice: test_gpu_paths.py)")
        return
    from SinusAnomalyLib.dataset import load_dataset
    from SinusAnomalyTraining import pipeline, stagerunner, stages
    from SinusAnomalyTraining.config import load_config

    seen: dict[str, set] = {}
    real_fit = stagerunner.fit  # what run_training_stage calls

    def fit(model, *args, **kwargs):  # records the dtypes the model's convolutions compute in (training, validation)
        kind = type(runtime.unwrap_model(model)).__name__
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d):
                module.register_forward_hook(lambda m, i, o, kind=kind: seen.setdefault(kind, set()).add(str(o.dtype)[6:]))
        return real_fit(model, *args, **kwargs)

    stagerunner.fit = fit
    ctx = pipeline.fold_context(load_config(config_path).replace(amp=True), load_dataset(dataset_dir), work / "cae_fp32",
                                0, device, restart=True, progress=False)
    stages.train_cae(ctx)
    stages.finetune(ctx, "none", 100)
    stagerunner.fit = real_fit
    ok = seen.get("ConvAutoencoder") == {"float32"} and seen.get("SinusClassifier") == {str(runtime.amp_dtype(device))[6:]}
    row(table, 5, f"conv output dtypes with amp on: {json.dumps({k: sorted(v) for k, v in seen.items()})}",
        "verified on GPU" if ok else "FAILED")


def train_twice(device) -> tuple[bool, list[str]]:
    """Two identical short trainings (U-Net with trilinear upsampling; classifier with adaptive pooling and
    cross-entropy): bitwise equal weights?, and the warnings of ops without a deterministic kernel."""
    from SinusAnomalyLib.models import ResidualUNet, SinusClassifier

    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            runtime.reseed_all(0)
            unet = ResidualUNet(encoder_widths=(8, 16, 32, 64)).to(device)
            classifier = SinusClassifier(encoder_widths=(8, 16, 32, 64)).to(device)
            x = torch.rand(4, 1, 32, 32, 32, device=device)
            target, labels = torch.rand_like(x), torch.tensor([0, 1, 0, 1], device=device)
            optimizer = torch.optim.SGD([*unet.parameters(), *classifier.parameters()], lr=0.01, momentum=0.9)
            for _ in range(3):
                optimizer.zero_grad()
                loss = F.binary_cross_entropy_with_logits(unet(x), target) + F.cross_entropy(classifier(x), labels)
                loss.backward()
                optimizer.step()
            results.append([p.detach().cpu().clone() for p in [*unet.parameters(), *classifier.parameters()]])
    same = all(torch.equal(a, b) for a, b in zip(*results))
    ops = sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught
                  if "deterministic" in str(w.message)})
    return same, ops


def check_deterministic(table, device, cuda_started_before: bool) -> None:
    """6. deterministic: true sets the flags (CUBLAS_WORKSPACE_CONFIG before CUDA started); repeatability measured."""
    import os

    flags = (torch.are_deterministic_algorithms_enabled() and os.environ.get("CUBLAS_WORKSPACE_CONFIG") == runtime.CUBLAS_WORKSPACE
             and not cuda_started_before)
    row(table, 6, "use_deterministic_algorithms + CUBLAS_WORKSPACE_CONFIG set before CUDA started",
        f"verified on {where(device)}" if flags else "FAILED")
    same, ops = train_twice(device)
    said = f"two 3-step trainings bitwise equal: {'yes' if same else 'no'}; ops warned: {', '.join(ops) or 'none'}"
    if device.type == "cuda":
        row(table, 6, said, "verified on GPU" if same else "measured on GPU: not repeatable bit for bit (docs/training.md's caveat)")
    else:
        row(table, 6, said, "verified on CPU" if same else "FAILED")


def check_overlap(table, device) -> None:
    """7. During a CropLoader epoch no host-to-device copy comes from pageable memory, and the crops'
    copies run on another stream than the kernels."""
    if device.type != "cuda":
        row(table, 7, "pinned copies on a side stream", "skipped: needs a GPU (staging order: test_gpu_paths.py)")
        return
    from torch.profiler import ProfilerActivity, profile

    from SinusAnomalyTraining.config import load_config
    from SinusAnomalyTraining.data import CropLoader, SinusCrops

    runtime.set_deterministic(False)
    crops = SinusCrops(torch.rand(64, 2, 64, 64, 64).half(), np.zeros(64, dtype=np.int64))
    loader = CropLoader(crops, 16, True, 0, device, load_config("paper").pretrain.augment)
    conv = torch.nn.Conv3d(1, 16, 3, padding=1).to(device)

    def epoch():
        for batch in loader:
            conv(batch["image"]).sum().backward()
        torch.cuda.synchronize()

    epoch()  # warm-up: pinned-memory pool, kernels
    trace = Path(table).with_name("overlap_trace.json")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        epoch()
    prof.export_chrome_trace(str(trace))
    events = json.loads(trace.read_text(encoding="utf-8"))["traceEvents"]
    copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "")]
    pageable = [e for e in copies if "Pageable" in e["name"]]
    kernel_streams = {e["args"].get("stream") for e in events if e.get("cat") == "kernel"}
    big = [e for e in copies if e.get("args", {}).get("bytes", 0) >= crops.volumes[0].nbytes]
    big_streams = {e["args"].get("stream") for e in big}
    ok = copies and not pageable and big and not (big_streams & kernel_streams)
    row(table, 7, f"{len(copies)} host-to-device copies, {len(pageable)} pageable; crop copies on stream(s) "
                  f"{sorted(big_streams)}, kernels on {sorted(kernel_streams)}", "verified on GPU" if ok else "FAILED")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--cpu", action="store_true")
    args = parser.parse_args()
    cuda_started_before = torch.cuda.is_available() and torch.cuda.is_initialized()
    runtime.set_deterministic(True)  # first, as the training commands do: before CUDA starts
    device = runtime.select_device("cpu" if args.cpu else "cuda")
    check_bf16(args.table, device)
    check_deterministic(args.table, device, cuda_started_before)
    check_cae_float32(args.table, device, args.config, args.dataset, args.work)
    check_overlap(args.table, device)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

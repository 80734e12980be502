#!/usr/bin/env python
"""Samples per second of training steps and of the input pipeline on CPU, side by side.

Default: one pretraining step and one fine-tuning step with networks at the paper's size
(ResNet18 widths 64/128/256/512, 64^3 crops) and at the demo's (widths 16/32/64/128, 32^3), same
batch size. A step is forward, loss, backward and optimiser update (LARS for the U-Net's BCE,
AdamW for the classifier's cross-entropy), as in training.

``--pipeline``: the input pipeline of residual pretraining (``CropLoader``: gather by index from
the float16 crop-and-residual tensor, widen, augment with the paper's policy; batch 64 at 64^3,
ONE thread) against the paper-size pretraining step (``--threads``), alternated round by round;
also the augmentation's cost per crop with every crop augmented, batched (this project) and per
sample with MONAI's dictionary transforms (what the loader used before, rebuilt here for the
comparison). Ends with
``input pipeline / model step throughput at paper size: R``.

``--options``: the paper-size pretraining step plain, with ``channels_last_3d`` weights and
inputs, and under ``torch.compile`` (first call, the compilation, not timed), alternated.

Every mode measures its alternatives in one run, so the ratios are meaningful on a noisy machine.

    python benchmarks/bench_training_steps.py [--batch 4] [--steps 3] [--threads 2] [--pipeline | --options]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from SinusAnomalyLib.models import ResidualUNet, SinusClassifier, parameter_groups
from SinusAnomalyTraining.augment import augment_batch
from SinusAnomalyTraining.config import load_config
from SinusAnomalyTraining.data import CropLoader, SinusCrops
from SinusAnomalyTraining.optim import LARS

PAPER_WIDTHS = (64, 128, 256, 512)


def time_steps(step, steps: int) -> float:
    step()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretrain_step(widths, size, batch, channels_last: bool = False, compile: bool = False):
    model = ResidualUNet(encoder_widths=widths).train()
    opt = LARS(parameter_groups(model, 1e-6), lr=0.1)
    x = torch.rand(batch, 1, size, size, size)
    target = torch.rand_like(x)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    if compile:
        model = torch.compile(model)

    def step():
        opt.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(model(x), target).backward()
        opt.step()

    return step


def finetune_step(widths, size, batch):
    model = SinusClassifier(encoder_widths=widths).train()
    opt = torch.optim.AdamW(parameter_groups(model, 0.01), lr=1e-4)
    x = torch.rand(batch, 1, size, size, size)
    y = torch.randint(0, 2, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step



def with_threads(threads: int, fn):
    """Run ``fn()`` with torch using ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return fn()
    finally:
        torch.set_num_threads(previous)


def pipeline_pass(batch: int, n_batches: int = 2):
    """One pass of residual pretraining's loader over ``n_batches`` batches at 64^3; returns (run, samples)."""
    n = batch * n_batches
    crops = SinusCrops(torch.rand(n, 2, 64, 64, 64).half(), np.zeros(n, dtype=np.int64))
    loader = CropLoader(crops, batch, True, 0, torch.device("cpu"), load_config("paper").pretrain.augment, drop_last=True)

    def run():
        for _ in loader:
            pass

    return run, n


def every_crop_augmented():
    """The paper's policy with probability 1: every crop warped and noised (flips still half the time)."""
    return dataclasses.replace(load_config("paper").pretrain.augment, prob=1.0)


def monai_per_sample(n: int = 16) -> float:
    """Seconds per crop of the MONAI dictionary transforms the loader applied before (image + residual)."""
    from monai.transforms import Compose, RandAffined, RandFlipd, RandGaussianNoised

    a = every_crop_augmented()
    keys = ["image", "residual"]
    rotate = np.radians(a.rotate_deg)
    transform = Compose([
        RandAffined(keys=keys, prob=a.prob, rotate_range=(rotate,) * 3, scale_range=(a.scale,) * 3,
                    translate_range=(a.translate_voxels,) * 3, mode="bilinear", padding_mode="border"),
        RandFlipd(keys=keys, prob=a.prob / 2.0, spatial_axis=1),
        RandFlipd(keys=keys, prob=a.prob / 2.0, spatial_axis=2),
        RandGaussianNoised(keys=["image"], prob=a.prob, mean=0.0, std=a.noise_std),
    ])
    transform.set_random_state(seed=0)
    items = [{"image": torch.rand(1, 64, 64, 64), "residual": torch.rand(1, 64, 64, 64)} for _ in range(n)]
    start = time.perf_counter()
    for item in items:
        transform(item)
    return (time.perf_counter() - start) / n


def batched_per_sample(n: int = 16) -> float:
    """Seconds per crop of :func:`augment_batch` on a batch of ``n`` crops with residuals."""
    x = torch.rand(n, 2, 64, 64, 64)
    start = time.perf_counter()
    augment_batch(x, every_crop_augmented())
    return (time.perf_counter() - start) / n


def pipeline_benchmark(args) -> None:
    """The input pipeline (1 thread) against the paper-size pretraining step (``args.threads``), alternated."""
    load_before = os.getloadavg()[0]
    run_pipeline, n = pipeline_pass(64)
    model_step = pretrain_step(PAPER_WIDTHS, 64, args.batch)
    with_threads(1, run_pipeline)  # warm-up
    with_threads(args.threads, model_step)
    pipe, model = [], []
    for round_ in range(args.rounds):
        start = time.perf_counter()
        with_threads(1, run_pipeline)
        pipe.append(n / (time.perf_counter() - start))
        model.append(args.batch / with_threads(args.threads, lambda: time_steps(model_step, args.steps)))
        print(f"round {round_ + 1}: input pipeline {pipe[-1]:7.1f} samples/s (1 thread, batch 64, 64^3, augmented)   "
              f"model step {model[-1]:6.2f} samples/s ({args.threads} threads, batch {args.batch})")
    monai, batched = [], []
    for _ in range(args.rounds + 1):  # the first round warms up
        monai.append(with_threads(1, monai_per_sample))
        batched.append(with_threads(1, batched_per_sample))
    monai, batched = statistics.median(monai[1:]), statistics.median(batched[1:])
    print()
    print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs "
          "(other processes slow the 2-thread model step more than the 1-thread pipeline)")
    print(f"augmentation per crop (image + residual, 64^3, the paper's ranges with every crop augmented, 1 thread): "
          f"MONAI per-sample transforms {monai * 1000:.1f} ms, batched {batched * 1000:.1f} ms (ratio {monai / batched:.2f})")
    print(f"input pipeline / model step throughput at paper size: {statistics.median(pipe) / statistics.median(model):.1f}")


def options_benchmark(args) -> None:
    """The paper-size pretraining step plain, with channels_last_3d, and compiled, alternated."""
    torch.set_num_threads(args.threads)
    variants = {"plain": {}, "channels_last_3d": {"channels_last": True}, "torch.compile": {"compile": True}}
    steps = {}
    for name, options in variants.items():
        start = time.perf_counter()
        steps[name] = pretrain_step(PAPER_WIDTHS, 64, args.batch, **options)
        steps[name]()  # compilation happens here
        print(f"{name}: first step (with any compilation) {time.perf_counter() - start:.1f} s")
    rates = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in steps.items():
            rates[name].append(args.batch / time_steps(step, args.steps))
    print()
    for name in variants:
        print(f"{name:18s} {statistics.median(rates[name]):6.2f} samples/s")
    for name in list(variants)[1:]:
        print(f"ratio {name} / plain throughput at paper size ({args.threads} threads): "
              f"{statistics.median(rates[name]) / statistics.median(rates['plain']):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="model step batch (default 4)")
    parser.add_argument("--steps", type=int, default=3, help="timed model steps per measurement (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="threads of the model step (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="--pipeline/--options: alternated rounds (default 3)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--pipeline", action="store_true", help="input pipeline against the model step")
    mode.add_argument("--options", action="store_true", help="channels_last_3d and torch.compile against plain")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.pipeline:
        return pipeline_benchmark(args)
    if args.options:
        return options_benchmark(args)
    torch.set_num_threads(args.threads)
    configs = {"paper (64^3, widths 64-512)": (PAPER_WIDTHS, 64), "demo (32^3, widths 16-128)": ((16, 32, 64, 128), 32)}
    results = {}
    for name, (widths, size) in configs.items():
        for kind, make in (("pretraining", pretrain_step), ("fine-tuning", finetune_step)):
            seconds = time_steps(make(widths, size, args.batch), args.steps)
            results[(name, kind)] = args.batch / seconds
            print(f"{kind:12s} {name:28s} {seconds:6.2f} s/step  {args.batch / seconds:7.2f} samples/s")
    paper, demo = list(configs)
    print()
    print(f"threads {args.threads}, batch {args.batch}")
    print(f"ratio fine-tuning / pretraining throughput at paper size: {results[(paper, 'fine-tuning')] / results[(paper, 'pretraining')]:.2f}")
    print(f"ratio demo / paper throughput, pretraining: {results[(demo, 'pretraining')] / results[(paper, 'pretraining')]:.1f}")
    print(f"ratio demo / paper throughput, fine-tuning: {results[(demo, 'fine-tuning')] / results[(paper, 'fine-tuning')]:.1f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Samples per second of one pretraining step and one fine-tuning step on CPU, side by side.

Networks at the paper's size (ResNet18 widths 64/128/256/512, 64^3 crops) and at the demo's
(widths 16/32/64/128, 32^3), same batch size, measured in one run so the ratios are meaningful
on a noisy machine. A step is forward, loss, backward and optimiser update (LARS for the U-Net's
BCE, AdamW for the classifier's cross-entropy), as in training.

    python benchmarks/bench_training_steps.py [--batch 4] [--steps 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from SinusAnomalyLib.models import ResidualUNet, SinusClassifier, parameter_groups
from SinusAnomalyTraining.optim import LARS


def time_steps(step, steps: int) -> float:
    step()  # warm-up: allocations, kernel selection
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def pretrain_step(widths, size, batch):
    model = ResidualUNet(encoder_widths=widths).train()
    opt = LARS(parameter_groups(model, 1e-6), lr=0.1)
    x = torch.rand(batch, 1, size, size, size)
    target = torch.rand_like(x)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    configs = {"paper (64^3, widths 64-512)": ((64, 128, 256, 512), 64), "demo (32^3, widths 16-128)": ((16, 32, 64, 128), 32)}
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

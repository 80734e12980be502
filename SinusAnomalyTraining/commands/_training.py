"""Arguments and set-up shared by the training commands."""
from __future__ import annotations

import argparse
from pathlib import Path

from SinusAnomalyLib.dataset import load_dataset

from .. import pipeline, runtime


def add_run_arguments(parser: argparse.ArgumentParser, fold: bool = True) -> None:
    parser.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (sinus-anomaly prepare)")
    # not "--run": torchrun would take it for an abbreviation of its own --run-path
    parser.add_argument("--run-dir", dest="run", required=True, type=Path, help="run folder (created; holds every stage's output)")
    parser.add_argument("--config", help="'paper' (default for a new run), 'demo', or a JSON file; "
                                         "default for an existing run: its saved config.json")
    if fold:
        parser.add_argument("--fold", type=int, default=0, help="cross-validation fold (default 0)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="default: the configuration's (auto: CUDA when present)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted stage from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def setup(args: argparse.Namespace):
    """(config, dataset, device) for a training command; joins torchrun's process group if any."""
    runtime.init_distributed()
    config = pipeline.load_run_config(args.run, args.config)
    if args.device:
        config["device"] = args.device
    device = runtime.select_device(config["device"])
    dataset = load_dataset(args.dataset)
    pipeline.save_run_config(config, args.run, dataset)
    return config, dataset, device


def fold_context(args: argparse.Namespace):
    config, dataset, device = setup(args)
    return pipeline.fold_context(config, dataset, args.run, args.fold, device, resume=args.resume, progress=not args.no_progress)

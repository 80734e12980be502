"""Arguments and set-up shared by the training commands."""
from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Iterator

from SinusAnomalyLib.dataset import load_dataset
from SinusAnomalyLib.errors import ConfigError
from SinusAnomalyLib.fileio import locked_output_folder

from .. import pipeline, runtime


def add_run_arguments(parser: argparse.ArgumentParser, fold: bool = True) -> None:
    """The arguments of every training command; ``fold`` for the one-stage commands (also ``--restart``)."""
    parser.add_argument("--dataset", required=True, type=Path, help="prepared dataset folder (sinus-anomaly prepare)")
    # not "--run": torchrun would take it for an abbreviation of its own --run-path
    parser.add_argument("--run-dir", dest="run", required=True, type=Path, help="run folder (created; holds every stage's output)")
    parser.add_argument("--config", help="'paper' (default for a new run), 'demo', 'grid-cpu', 'grid-cpu5', 'grid-paper', "
                                         "'grid-residual', 'grid-residual-cohort', "
                                         "or a JSON file; "
                                         "default for an existing run: its saved config.json (never rewritten: "
                                         "a training command refuses other settings, evaluate uses them without saving)")
    if fold:
        parser.add_argument("--fold", type=int, default=0, help="cross-validation fold (default 0)")
    parser.add_argument("--device", choices=("auto", "cuda", "cpu"), help="default: the configuration's (auto: CUDA when present)")
    if fold:
        parser.add_argument("--restart", action="store_true",
                            help="start the stage over, discarding its checkpoints and outputs (default: a finished "
                                 "stage is skipped, an interrupted one continues from its last checkpoint)")
    # resuming is the default; the old flag is still accepted, says so and does nothing else
    parser.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def setup(args: argparse.Namespace, writes_run: bool = True):
    """(config, dataset, device) for a training command; joins torchrun's process group if any.

    ``writes_run``: record a new run's configuration (:func:`pipeline.save_run_config`, which refuses
    a ``--config`` other than an existing run's own); False for a command that only reads the run
    (``evaluate``: its ``--config`` is used, never written).
    """
    if args.resume and getattr(args, "restart", False):
        raise ConfigError("--resume and --restart contradict each other: resuming is the default, --restart starts over")
    config = pipeline.load_run_config(args.run, args.config)
    if args.device:
        config = config.replace(device=args.device)
    runtime.set_deterministic(config.deterministic)  # before CUDA starts: it sets CUBLAS_WORKSPACE_CONFIG
    device = runtime.select_device(config.device)
    info = runtime.init_distributed(device)  # the backend follows the run's device
    if args.resume and runtime.is_main_process():
        print("note: --resume is not needed: re-running a command resumes it by default (--restart starts a stage over)")
    if info.world_size > 1 and runtime.is_main_process():
        print(f"{info.world_size} processes ({info.backend}): each configured batch_size is the global batch, "
              "split evenly over the processes; learning rates are those of the global batch")
    dataset = load_dataset(args.dataset)
    if writes_run:
        pipeline.save_run_config(config, args.run, dataset)
    return config, dataset, device


def fold_context(args: argparse.Namespace):
    config, dataset, device = setup(args)
    return pipeline.fold_context(config, dataset, args.run, args.fold, device, restart=args.restart, progress=not args.no_progress)


RUN_FILES = ("config.json", "dataset.json")  # what setup() writes into a run folder


@contextlib.contextmanager
def new_run_guard(run_dir: Path) -> Iterator[None]:
    """On failure, leave a run folder this command started as it was.

    ``setup`` writes ``config.json`` and ``dataset.json`` before the first stage checks its
    inputs; a stage refused on a new run folder (e.g. ``pretrain`` before ``residuals``) would
    otherwise leave a config behind that a later command silently reuses. They are removed only
    when nothing else was written (a stage that produced anything keeps everything, to resume).
    """
    run_dir = Path(run_dir)
    if (run_dir / RUN_FILES[0]).exists():  # an existing run: nothing to undo
        yield
        return
    before = set(run_dir.rglob("*")) if run_dir.is_dir() else None
    try:
        yield
    except BaseException:
        if runtime.is_main_process() and run_dir.is_dir():
            added = set(run_dir.rglob("*")) - (before or set())
            files = [p for p in added if not p.is_dir()]
            if all(p.parent == run_dir and p.name in RUN_FILES for p in files):
                for p in files:
                    p.unlink()
                for folder in sorted((p for p in added if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                    folder.rmdir()
                if before is None:
                    run_dir.rmdir()
        raise


@contextlib.contextmanager
def locked_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (``RUN/.sinus-anomaly.lock``) while a command writes into it: a
    second command writing the same run is refused at once (exit 2) instead of mixing checkpoints.

    Under torchrun only the first process (``RANK`` 0) takes it: the processes of one run write it
    together (rank 0 writes the files). Read from the environment: it is taken before the process
    group is joined.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with locked_output_folder(run_dir, "run folder"):
        yield


@contextlib.contextmanager
def stage_context(args: argparse.Namespace) -> Iterator:
    """:func:`fold_context` for one stage command, in its locked run folder, under :func:`new_run_guard`."""
    with locked_run_folder(args.run), new_run_guard(args.run):
        yield fold_context(args)

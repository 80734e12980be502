"""Run the whole method: for each configured fold, CAE, residuals, residual pretraining and
fine-tuning (each method x label fraction), then the evaluation. Finished stages are skipped, an
interrupted one continues from its last checkpoint, so re-running the same command resumes.

Configurations: 'paper' (the paper's settings, for a GPU), 'demo' (CPU-sized), or a JSON file
overriding any of the paper's settings. Several GPUs: torchrun --nproc_per_node N -m SinusAnomalyTraining run ...
"""
from __future__ import annotations

from .. import pipeline, runtime
from ._training import add_run_arguments, locked_run_folder, new_run_guard, setup


def add_arguments(parser) -> None:
    add_run_arguments(parser, fold=False)


def run(args) -> int:
    with locked_run_folder(args.run), new_run_guard(args.run):
        config, _, device = setup(args)
        pipeline.run_pipeline(config, args.dataset, args.run, device, progress=not args.no_progress)
    if runtime.is_main_process():
        print((args.run / "evaluation" / "report.md").read_text(encoding="utf-8"))
    return 0

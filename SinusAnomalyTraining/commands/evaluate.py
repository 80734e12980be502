"""Evaluate a run: AUROC, AUPRC and F1 on the held-out test set per fold and label fraction.

F1 at the threshold maximising F1 on the fold's validation set and at 0.5; means over folds
with 95 % Student-t intervals (from 3 folds on); the fold ensemble (each test sinus's mean
probability over the folds) with a 95 % bootstrap interval over test patients; with residual
pretraining and other methods, the paired patient-bootstrap difference residual - other of the
fold ensembles' AUROC and AUPRC per fraction; ROC and PR curves as PNG;
RUN/evaluation/{report.md,results.csv,comparisons.csv,<method>_frac<p>/metrics.{json,csv}}.
"""
from __future__ import annotations

from .. import report
from ._training import add_run_arguments, locked_run_folder, setup


def add_arguments(parser) -> None:
    add_run_arguments(parser, fold=False)


def run(args) -> int:
    with locked_run_folder(args.run):  # it writes RUN/evaluation
        config, dataset, _ = setup(args, writes_run=False)
        report.evaluate_run(config, dataset, args.run)
    print((args.run / "evaluation" / "report.md").read_text(encoding="utf-8"))
    return 0

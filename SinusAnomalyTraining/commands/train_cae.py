"""Train the fold's convolutional autoencoder (the paper's Figure 1c) on its normal training sinuses.

L1 reconstruction loss, Adam, no augmentation; one CAE per fold (a shared one would have seen
other folds' validation sinuses). Writes RUN/fold<k>/cae/{last.pt,best.pt,history.*,train.log}.
"""
from __future__ import annotations

from .. import stages
from ._training import add_run_arguments, stage_context


def add_arguments(parser) -> None:
    add_run_arguments(parser)


def run(args) -> int:
    with stage_context(args) as ctx:
        path = stages.train_cae(ctx)
    print(f"CAE checkpoint: {path}")
    return 0

"""Compute the residual targets |x - CAE(x)| of every crop, labelled and unlabelled, with the fold's CAE.

Each map is rescaled by its 1st/99th percentiles to [0, 1] (the paper's; with "residuals": {"scaling":
"cohort"}, every map by those percentiles of the raw residuals of the CAE's training normals, recorded
in residuals.json) and median filtered; the cache
RUN/fold<k>/residuals/ records the CAE checkpoint's checksum and the sample id of every map, so
pretraining refuses residuals of another CAE and pairs images and residuals by identity.
"""
from __future__ import annotations

from .. import stages
from ._training import add_run_arguments, stage_context


def add_arguments(parser) -> None:
    add_run_arguments(parser)


def run(args) -> int:
    with stage_context(args) as ctx:
        path = stages.compute_residuals(ctx)
    print(f"residuals: {path}")
    return 0

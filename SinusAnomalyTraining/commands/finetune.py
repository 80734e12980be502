"""Fine-tune the classifier (ResNet18 encoder + MLP 512-256-2) with a fraction of the labels.

--method none starts from random weights; --method residual from the pretrained U-Net's encoder
(every parameter name must match); a baseline (ae, dae, simclr, byol, simsiam, spark) from its
'pretrain --method' checkpoint; medicalnet from the configured MedicalNet weights file. Weighted cross-entropy, AdamW, augmentations; the checkpoint
of lowest validation loss predicts the validation and test sinuses (predictions.csv).
"""
from __future__ import annotations

from .. import stages
from ..config import METHODS
from ._training import add_run_arguments, stage_context


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--method", choices=METHODS, default="residual", help="pretraining to start from (default residual)")
    parser.add_argument("--fraction", type=float, default=100, help="percentage of the fold's training labels (default 100)")


def run(args) -> int:
    with stage_context(args) as ctx:
        path = stages.finetune(ctx, args.method, args.fraction)
    print(f"predictions: {path}")
    return 0

"""Residual-reconstruction pretraining: the 3D ResNet18 U-Net learns to predict the CAE residual.

BCE with logits; LARS (learning rate scaled linearly with the batch), warm-up then cosine to zero;
geometric augmentations applied to image and target alike, noise to the image only. Several GPUs:
torchrun --nproc_per_node N -m SinusAnomalyTraining pretrain ...
"""
from __future__ import annotations

from .. import stages
from ._training import add_run_arguments, stage_context


def add_arguments(parser) -> None:
    add_run_arguments(parser)


def run(args) -> int:
    with stage_context(args) as ctx:
        path = stages.pretrain(ctx)
    print(f"pretrained U-Net: {path}")
    return 0

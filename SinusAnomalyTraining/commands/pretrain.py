"""Self-supervised pretraining of the fold's encoder: residual reconstruction or a baseline.

--method residual (default): the 3D ResNet18 U-Net learns to predict the CAE residual (run
'train-cae' and 'residuals' for the fold first); BCE with logits, LARS (learning rate scaled
linearly with the batch), warm-up then cosine to zero; geometric augmentations applied to image
and target alike, noise to the image only. --method ae|dae|simclr|byol|simsiam|spark: the
baselines of the paper's Table 2, same encoder, data, optimiser and schedule. Pretraining uses the
dataset's unlabelled scans when it has any (prepare --unlabelled; config pretrain.data), else the
fold's training sinuses, never labels. Writes RUN/fold<k>/pretrain/ (residual) or
RUN/fold<k>/pretrain_<method>/, where 'finetune --method' finds it. Several GPUs:
torchrun --nproc_per_node N -m SinusAnomalyTraining pretrain ...
"""
from __future__ import annotations

from .. import stages
from ..config import PRETRAINING
from ._training import add_run_arguments, stage_context


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--method", choices=PRETRAINING, default="residual", help="pretraining method (default residual)")


def run(args) -> int:
    with stage_context(args) as ctx:
        path = stages.pretrain_method(ctx, args.method)
    print(f"pretrained ({args.method}): {path}")
    return 0

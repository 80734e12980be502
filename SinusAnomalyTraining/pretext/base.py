"""The common interface of the baseline pretext models, and the blocks they share."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from SinusAnomalyLib.errors import PretextError
from SinusAnomalyLib.models import RESNET18_WIDTHS, ModelError, ResNet18Encoder


def mlp(in_dim: int, hidden_dim: int, out_dim: int, bias_hidden: bool = True) -> nn.Sequential:
    """Linear - BatchNorm - ReLU - Linear (the projector / predictor of SimCLR and BYOL)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=bias_hidden),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def upsample_block(c_in: int, c_out: int, scale: int = 2) -> UpSample:
    """Trilinear upsampling by ``scale`` followed by a 3x3x3 conv + BatchNorm + ReLU."""
    return UpSample(
        3,
        in_channels=c_in,
        out_channels=c_in,
        scale_factor=scale,
        mode="nontrainable",
        pre_conv=None,
        interp_mode="trilinear",
        align_corners=False,
        post_conv=Convolution(3, c_in, c_out, kernel_size=3, act=("relu", {"inplace": True}), norm="batch", bias=False),
    )


class PretextModel(nn.Module):
    """Base class: owns :attr:`encoder` and the common interface (see the module docstring).

    Args:
        encoder_widths: the four stage widths of the ResNet18 encoder (64-128-256-512 in the paper).
        in_channels: input channels.
        shortcut_type: the encoder's shortcut, ``"B"`` (as :class:`SinusClassifier`'s default) or ``"A"``.
    """

    size_multiple = 1
    """Spatial edges of the input must be multiples of this."""

    def __init__(self, encoder_widths: Sequence[int] = RESNET18_WIDTHS, in_channels: int = 1, shortcut_type: str = "B") -> None:
        super().__init__()
        try:
            self.encoder = ResNet18Encoder(in_channels, shortcut_type, tuple(encoder_widths))
        except ModelError as error:
            raise PretextError(str(error)) from error

    def check_batch(self, x: torch.Tensor) -> None:
        """Raise :class:`PretextError` unless ``x`` is ``(B, C, D, H, W)`` with usable edges."""
        if x.dim() != 5 or x.shape[1] != self.encoder.in_channels:
            raise PretextError(
                f"{type(self).__name__} expects a batch (B, {self.encoder.in_channels}, D, H, W), got {tuple(x.shape)}"
            )
        if any(size % self.size_multiple for size in x.shape[2:]):
            raise PretextError(
                f"{type(self).__name__} needs spatial edges that are multiples of {self.size_multiple}, got {tuple(x.shape)}"
            )

    def loss(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The loss of the batch (so that a DDP wrapper sees the whole computation)."""
        return self.loss(x)

    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool of the deepest encoder map: ``(B, encoder.out_channels)``."""
        return self.encoder(x)[-1].mean(dim=(2, 3, 4))

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """``{"encoder.<name>": tensor}`` for ``SinusClassifier.load_encoder(state, prefix="encoder.")``."""
        return {f"encoder.{key}": value for key, value in self.encoder.state_dict().items()}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimiser updates (those with ``requires_grad``)."""
        return [p for p in self.parameters() if p.requires_grad]

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Hook to call after every optimiser step (``step`` counts from 1); nothing by default."""

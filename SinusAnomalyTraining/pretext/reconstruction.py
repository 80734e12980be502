"""Reconstruction pretext tasks: autoencoder (AE) and denoising autoencoder (DAE)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from SinusAnomalyLib.errors import PretextError
from SinusAnomalyLib.models import RESNET18_WIDTHS

from .base import PretextModel, upsample_block


class ReconstructionDecoder(nn.Module):
    """Decoder WITHOUT skip connections: deepest encoder map ``(B, C4, S/32)`` -> ``(B, out, S)``.

    Five stages of trilinear x2 upsampling + 3x3x3 conv + BatchNorm + ReLU (widths default to the
    ResidualUNet decoder's: the encoder widths reversed, then on to full resolution), and a 1x1x1
    conv head with ``out_activation`` (sigmoid by default: crops are in [0, 1]).
    """

    def __init__(
        self,
        feature_channels: Sequence[int],
        out_channels: int = 1,
        widths: Sequence[int] | None = None,
        out_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__()
        w = tuple(int(c) for c in feature_channels)  # stem, layer1..layer4
        if widths is None:
            widths = (w[3], w[2], w[1], max(w[1] // 2, 1), max(w[1] // 4, 1))
        if len(widths) != 5:
            raise PretextError(f"the decoder needs 5 stage widths (the encoder halves the input 5 times), got {tuple(widths)}")
        chain = [w[-1], *(int(c) for c in widths)]
        self.stages = nn.Sequential(*(upsample_block(a, b) for a, b in zip(chain[:-1], chain[1:])))
        self.head = nn.Conv3d(chain[-1], out_channels, kernel_size=1)
        if out_activation not in (None, "sigmoid"):
            raise PretextError(f"out_activation must be 'sigmoid' or None, got {out_activation!r}")
        self.out_activation = nn.Sigmoid() if out_activation == "sigmoid" else nn.Identity()

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.out_activation(self.head(self.stages(deepest)))


class AutoencoderPretext(PretextModel):
    """AE: ``decoder(encoder(x)[-1])`` reconstructs the input; L1 loss.

    The batch is both input and target: the pretraining stage serves it already augmented with
    the training policy's geometry only (affine and flips; noise would also touch the target,
    which the policy never does). Input edges must be multiples of 32 (the decoder inverts the
    encoder's five halvings).

    Args:
        decoder_widths: widths of the five decoder stages (default: see :class:`ReconstructionDecoder`).
    """

    size_multiple = 32

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        decoder_widths: Sequence[int] | None = None,
        out_activation: str | None = "sigmoid",
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        self.decoder = ReconstructionDecoder(self.encoder.feature_channels, in_channels, decoder_widths, out_activation)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> reconstruction of the same shape."""
        self.check_batch(x)
        return self.decoder(self.encoder(x)[-1])

    def make_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(network input, reconstruction target)`` for the batch: the batch, twice."""
        return x, x

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        inputs, target = self.make_pair(x)
        return F.l1_loss(self.reconstruct(inputs).float(), target.float())


class DenoisingPretext(AutoencoderPretext):
    """DAE: the AE's network fed ``x + N(0, noise_std^2)`` (ALWAYS, std 0.6 by default, as in the
    paper: the method's one extra) and trained with L1 to reconstruct the CLEAN batch (the target
    never gets noise)."""

    def __init__(self, *args: Any, noise_std: float = 0.6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if float(noise_std) <= 0.0:
            raise PretextError(f"noise_std must be positive, got {noise_std}")
        self.noise_std = float(noise_std)

    def make_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x + self.noise_std * torch.randn_like(x), x

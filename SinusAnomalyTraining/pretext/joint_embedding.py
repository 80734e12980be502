"""Joint-embedding pretext tasks: SimCLR, BYOL and SimSiam (two random views of each crop)."""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from SinusAnomalyLib.errors import PretextError
from SinusAnomalyLib.models import RESNET18_WIDTHS

from ..augment import DEFAULT_AUGMENT, augment_batch, random_intensity_scale
from ..config import AugmentSettings
from .base import PretextModel, mlp
from .losses import byol_momentum, byol_regression_loss, negative_cosine_similarity, nt_xent_loss


class TwoViewPretext(PretextModel):
    """Two independent random views of each image, made inside the model from the raw batch.

    A view is the training policy (:func:`SinusAnomalyTraining.augment.augment_batch` with
    ``augment``: affine, flips, noise) followed by this family's one view-making extra, an
    intensity scaling by up to ``intensity`` (probability ``augment.prob``;
    :func:`~SinusAnomalyTraining.augment.random_intensity_scale`). ``augment`` defaults to the
    paper configuration's policy; the pretraining stage passes the run's ``pretrain.augment``.
    """

    def __init__(self, encoder_widths, in_channels, shortcut_type, augment: AugmentSettings | None, intensity: float) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        if augment is not None and not isinstance(augment, AugmentSettings):
            raise PretextError("augment must be AugmentSettings (set the views' augmentation in the configuration's pretrain.augment)")
        if not 0.0 <= float(intensity) < 1.0:
            raise PretextError(f"intensity must be in [0, 1), got {intensity}")
        self.augment = augment or DEFAULT_AUGMENT
        self.intensity = float(intensity)

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """One random view of the batch ``(B, C, D, H, W)`` (same shape; ``x`` is not modified)."""
        return random_intensity_scale(augment_batch(x, self.augment), self.augment.prob, self.intensity)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.view(x), self.view(x)


class SimCLRPretext(TwoViewPretext):
    """SimCLR: pooled encoder features -> projector Linear-BN-ReLU-Linear to ``projection_dim``
    (512, the paper) -> NT-Xent over the two views' projections (:func:`nt_xent_loss`).

    Args:
        projection_dim: output of the projector (512).
        hidden_dim: hidden width of the projector (default: the encoder's output width).
        temperature: NT-Xent temperature (0.1).
        augment: the views' augmentation policy (default: the paper configuration's).
        intensity: the views' intensity scaling, up to this fraction (0.1).
    """

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        projection_dim: int = 512,
        hidden_dim: int | None = None,
        temperature: float = 0.1,
        augment: AugmentSettings | None = None,
        intensity: float = 0.1,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type, augment, intensity)
        if float(temperature) <= 0.0:
            raise PretextError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        c = self.encoder.out_channels
        self.projector = mlp(c, int(hidden_dim or c), int(projection_dim))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pooled_features(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        v1, v2 = self.views(x)
        # one encoder pass over both views: BatchNorm sees both (as SimCLR's per-device batches)
        z = self.project(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        return nt_xent_loss(z1, z2, self.temperature)


class BYOLPretext(TwoViewPretext):
    """BYOL: online encoder + projector + predictor; target encoder + projector updated only by EMA.

    Projector and predictor are Linear-BN-ReLU-Linear MLPs, hidden ``hidden_dim`` (BYOL used 4096;
    1024 by default here), output ``projection_dim`` (512: the paper projects to 512 for BYOL,
    SimSiam and SimCLR; BYOL's own paper used 256). The target (``target_encoder``,
    ``target_projector``) starts as a copy of the online network, has ``requires_grad=False``, is
    evaluated under ``no_grad``, and changes only in :meth:`update_target`. Loss: ``2 - 2 cos``
    between the online prediction of one view and the target projection of the other, summed
    over both view orders.

    Call :meth:`update_target` (or :meth:`after_optimizer_step`) after every optimiser step.

    Args:
        tau_base: the momentum at step 0 (0.996), rising to 1 by a cosine schedule.
    """

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        projection_dim: int = 512,
        hidden_dim: int = 1024,
        tau_base: float = 0.996,
        augment: AugmentSettings | None = None,
        intensity: float = 0.1,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type, augment, intensity)
        if not 0.0 <= float(tau_base) <= 1.0:
            raise PretextError(f"tau_base must be in [0, 1], got {tau_base}")
        self.tau_base = float(tau_base)
        c = self.encoder.out_channels
        self.projector = mlp(c, int(hidden_dim), int(projection_dim))
        self.predictor = mlp(int(projection_dim), int(hidden_dim), int(projection_dim))
        self.target_encoder = copy.deepcopy(self.encoder)
        self.target_projector = copy.deepcopy(self.projector)
        for p in self._target_parameters():
            p.requires_grad_(False)

    def _online_pairs(self):
        return ((self.encoder, self.target_encoder), (self.projector, self.target_projector))

    def _target_parameters(self):
        return [*self.target_encoder.parameters(), *self.target_projector.parameters()]

    def online_parameters(self) -> list[nn.Parameter]:
        """Encoder, projector and predictor parameters (what the optimiser updates)."""
        return [*self.encoder.parameters(), *self.projector.parameters(), *self.predictor.parameters()]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.online_parameters()

    def momentum(self, step: int, total_steps: int) -> float:
        return byol_momentum(step, total_steps, self.tau_base)

    @torch.no_grad()
    def update_target(self, step: int, total_steps: int) -> float:
        """``target <- tau * target + (1 - tau) * online`` for every parameter, with
        ``tau = momentum(step, total_steps)``; BatchNorm buffers are copied from the online
        network. Returns tau."""
        tau = self.momentum(step, total_steps)
        for online, target in self._online_pairs():
            for p_target, p_online in zip(target.parameters(), online.parameters()):
                p_target.mul_(tau).add_(p_online.detach(), alpha=1.0 - tau)
            for b_target, b_online in zip(target.buffers(), online.buffers()):
                b_target.copy_(b_online)
        return tau

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.update_target(step, total_steps)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        v1, v2 = self.views(x)
        both = torch.cat([v1, v2])
        p1, p2 = self.predictor(self.projector(self.pooled_features(both))).chunk(2)
        with torch.no_grad():
            z1, z2 = self.target_projector(self.target_encoder(both)[-1].mean(dim=(2, 3, 4))).chunk(2)
        return byol_regression_loss(p1, z2) + byol_regression_loss(p2, z1)


class SimSiamPretext(TwoViewPretext):
    """SimSiam: encoder + 3-layer projector (BN on every layer) + 2-layer bottleneck predictor;
    symmetric negative cosine similarity with a stop-gradient on the projection branch
    (:func:`negative_cosine_similarity` detaches it), ``D(p1, z2) / 2 + D(p2, z1) / 2``.

    Args:
        projection_dim: projector output and hidden width (512, the paper).
        predictor_hidden_dim: predictor bottleneck (default ``projection_dim // 4``, as SimSiam).
    """

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        projection_dim: int = 512,
        predictor_hidden_dim: int | None = None,
        augment: AugmentSettings | None = None,
        intensity: float = 0.1,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type, augment, intensity)
        c, d = self.encoder.out_channels, int(projection_dim)
        h = int(predictor_hidden_dim or max(d // 4, 1))
        self.projector = nn.Sequential(
            nn.Linear(c, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
            nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
            nn.Linear(d, d, bias=False), nn.BatchNorm1d(d, affine=False),
        )
        self.predictor = mlp(d, h, d, bias_hidden=False)

    def branches(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, p)``: projection and prediction of a batch of views."""
        z = self.projector(self.pooled_features(x))
        return z, self.predictor(z)

    @staticmethod
    def symmetric_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return 0.5 * negative_cosine_similarity(p1, z2) + 0.5 * negative_cosine_similarity(p2, z1)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        v1, v2 = self.views(x)
        z, p = self.branches(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        return self.symmetric_loss(p1, p2, z1, z2)

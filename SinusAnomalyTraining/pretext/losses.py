"""Losses of the baseline pretext tasks (SimCLR, BYOL, SimSiam, SparK) and BYOL's momentum schedule."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from SinusAnomalyLib.errors import PretextError


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's NT-Xent loss of two ``(N, d)`` batches of projections (row i of each: one image).

    Cosine similarities of all 2N projections divided by ``temperature``; for each projection the
    positive is its other view and the 2N - 2 projections of the other images are negatives (its
    similarity with itself is excluded). Cross-entropy averaged over all 2N anchors. Equal to
    ``monai.losses.ContrastiveLoss(temperature)(z1, z2)``, computed stably via log-sum-exp.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise PretextError(f"NT-Xent needs two (N, d) batches of the same shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    if n < 2:
        raise PretextError("NT-Xent needs at least 2 images per batch (the other images are the negatives)")
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.t() / float(temperature)
    self_pairs = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def byol_regression_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL's ``2 - 2 cos(p, z)`` averaged over the batch; ``z`` (the target) is detached."""
    return (2.0 - 2.0 * F.cosine_similarity(p.float(), z.detach().float(), dim=-1)).mean()


def negative_cosine_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam's ``D(p, z) = -cos(p, stopgrad(z))`` averaged over the batch: no gradient reaches ``z``."""
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=-1).mean()


def byol_momentum(step: int, total_steps: int, tau_base: float = 0.996) -> float:
    """BYOL's target momentum ``1 - (1 - tau_base) (cos(pi k / K) + 1) / 2``: ``tau_base`` at step 0,
    1 at step ``K`` (``step`` is clamped to ``[0, K]``)."""
    total = max(int(total_steps), 1)
    k = min(max(int(step), 0), total)
    return 1.0 - (1.0 - float(tau_base)) * (math.cos(math.pi * k / total) + 1.0) / 2.0


def masked_reconstruction_loss(
    prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, kind: str = "mse"
) -> torch.Tensor:
    """Mean (squared or absolute) error over the MASKED voxels only; visible voxels contribute nothing.

    ``masked``: ``(B, 1, D, H, W)`` bool, True on voxels of masked patches.
    """
    if kind not in ("mse", "l1"):
        raise PretextError(f"loss must be 'mse' or 'l1', got {kind!r}")
    diff = prediction.float() - target.float()
    error = diff.square() if kind == "mse" else diff.abs()
    weight = masked.to(error.dtype).expand_as(error)
    return (error * weight).sum() / weight.sum().clamp_min(1.0)

"""Losses of the baseline pretext tasks (SimCLR, BYOL, SimSiam, SparK), BYOL's momentum schedule, and the
entropy floor of residual pretraining's soft-target binary cross-entropy (:func:`target_entropy`).

Which pretraining losses have a floor: only residual pretraining's BCE against soft targets in [0, 1]
(cross-entropy H(t, p) = H(t) + KL(t || p) >= H(t)). AE and DAE (L1) and SparK (MSE) reach 0 at a
perfect reconstruction; SimCLR's NT-Xent, BYOL's and SimSiam's losses are not cross-entropies against
soft targets: none of them gets a floor.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.utils import pixelunshuffle

from SinusAnomalyLib.errors import PretextError


def target_entropy(target: torch.Tensor) -> torch.Tensor:
    """The floor of ``binary_cross_entropy[_with_logits](prediction, target)`` (mean reduction) over soft
    targets in [0, 1]: the targets' mean binary entropy ``-(t ln t + (1 - t) ln(1 - t))`` over the same
    voxels, with the same reduction (the mean over every element), in float32 whatever the autocast.

    Computed as ``binary_cross_entropy(t, t)``: a prediction equal to the target gives exactly this
    value, any other prediction more (Gibbs' inequality); ``0 ln 0`` counts as 0, so hard targets
    give 0, and a constant 0.5 target gives ln 2. No gradient flows through it.
    """
    t = target.detach().float().clamp(0.0, 1.0)  # in [0, 1] already (residual maps; trilinear warps keep them there)
    with torch.autocast(t.device.type, enabled=False):
        return F.binary_cross_entropy(t, t)


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


def patches(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, L, C * p^3)``: the ``L`` patches of edge ``p`` in the order of the
    patch grid flattened row-major (as a ``(B, 1, *grid)`` mask flattens), each patch's voxels of all
    channels in one row."""
    return pixelunshuffle(x, 3, int(patch_size)).flatten(2).transpose(1, 2)


def normalised_patches(x: torch.Tensor, patch_size: int, eps: float = 1e-6) -> torch.Tensor:
    """SparK's (and MAE's) normalised-pixel targets: :func:`patches` of ``x``, each standardised by
    its own mean and ``sqrt(var + eps)`` (unbiased variance): ``(B, L, C * p^3)``. A uniform patch
    becomes all zeros."""
    rows = patches(x.float(), patch_size)
    mean = rows.mean(dim=-1, keepdim=True)
    var = rows.var(dim=-1, keepdim=True)
    return (rows - mean) / (var + eps).sqrt()


def masked_patch_loss(prediction: torch.Tensor, target: torch.Tensor, masked: torch.Tensor, patch_size: int) -> torch.Tensor:
    """SparK's loss: mean squared error between ``prediction`` and the per-patch normalised
    ``target`` (:func:`normalised_patches`), averaged within each patch, then over the MASKED
    patches only; visible patches contribute nothing.

    ``prediction``, ``target``: ``(B, C, D, H, W)``; ``masked``: ``(B, 1, *grid)`` bool, True on
    masked patches, ``grid`` = the edges divided by ``patch_size``.
    """
    per_patch = (patches(prediction.float(), patch_size) - normalised_patches(target, patch_size)).square().mean(dim=-1)
    weight = masked.flatten(1).to(per_patch.dtype)  # (B, L), the patch order of patches()
    if weight.shape != per_patch.shape:
        raise PretextError(f"mask of shape {tuple(masked.shape)} does not fit {per_patch.shape[1]} patches per sample")
    return (per_patch * weight).sum() / weight.sum().clamp_min(1.0)

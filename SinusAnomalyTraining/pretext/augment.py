"""Random views for the baseline pretext tasks: pure functions of a ``(B, C, D, H, W)`` batch.

They never modify their input and draw every random number from torch's global RNG, per sample.
Residual pretraining and fine-tuning use the MONAI dictionary transforms of
:func:`SinusAnomalyTraining.data.augmentation` instead; the two policies differ (issue 13 makes the
baselines use the residual one), so both live on until then.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from SinusAnomalyLib.errors import PretextError


def _chosen(x: torch.Tensor, prob: float) -> torch.Tensor:
    """``(B,)`` bool: which samples an augmentation with probability ``prob`` touches."""
    return torch.rand(x.shape[0], device=x.device) < float(prob)


def _per_sample(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mask -> broadcastable to ``x``."""
    return mask.view(-1, *([1] * (x.dim() - 1)))


def random_flip(x: torch.Tensor, prob: float = 0.5, axes: Sequence[int] = (0, 1, 2)) -> torch.Tensor:
    """Flip each sample along each spatial axis in ``axes`` (0 = D, 1 = H, 2 = W), independently,
    with probability ``prob`` per sample and axis."""
    out = x
    for axis in axes:
        chosen = _chosen(x, prob)
        out = torch.where(_per_sample(chosen, out), out.flip(2 + int(axis)), out)
    return out


def _rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """``(B, 3)`` angles (radians) about the three axes -> ``(B, 3, 3)`` rotations Rz Ry Rx."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def matrix(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = matrix([(one, zero, zero), (zero, cos[:, 0], -sin[:, 0]), (zero, sin[:, 0], cos[:, 0])])
    ry = matrix([(cos[:, 1], zero, sin[:, 1]), (zero, one, zero), (-sin[:, 1], zero, cos[:, 1])])
    rz = matrix([(cos[:, 2], -sin[:, 2], zero), (sin[:, 2], cos[:, 2], zero), (zero, zero, one)])
    return rz @ ry @ rx


def random_affine(
    x: torch.Tensor,
    prob: float = 0.5,
    rotate_deg: float = 10.0,
    scale: float = 0.2,
    translate: float = 10.0 / 64.0,
) -> torch.Tensor:
    """Random small affine warp of each chosen sample (probability ``prob``), trilinear, border padding.

    Per sample: rotations uniform in ``[-rotate_deg, rotate_deg]`` about each axis, a zoom factor
    uniform in ``[1 - scale, 1 + scale]`` per axis, and a shift uniform in
    ``[-translate, translate]`` times the edge length per axis (10/64: 10 voxels of a 64^3 crop).
    Samples not chosen are returned unchanged, exactly.
    """
    b = x.shape[0]
    chosen = _chosen(x, prob)
    if not bool(chosen.any()):
        return x
    work = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    angles = (torch.rand(b, 3, device=x.device, dtype=work) * 2 - 1) * math.radians(float(rotate_deg))
    zoom = 1.0 + (torch.rand(b, 3, device=x.device, dtype=work) * 2 - 1) * float(scale)
    shift = (torch.rand(b, 3, device=x.device, dtype=work) * 2 - 1) * 2.0 * float(translate)  # [-1, 1] spans the edge
    linear = _rotation_matrices(angles) @ torch.diag_embed(1.0 / zoom)  # output -> input coordinates
    theta = torch.cat([linear, shift[:, :, None]], dim=2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x.to(work), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)
    return torch.where(_per_sample(chosen, x), warped, x)


def random_gaussian_noise(x: torch.Tensor, prob: float = 0.5, std: float = 0.25, fixed_std: bool = False) -> torch.Tensor:
    """Add zero-mean Gaussian noise to each chosen sample (probability ``prob``).

    The standard deviation is ``std`` when ``fixed_std``, else drawn per sample uniformly in
    ``[0, std]`` (as MONAI's ``RandGaussianNoise``). The result is not clipped.
    """
    chosen = _chosen(x, prob)
    sigma = torch.full((x.shape[0],), float(std), device=x.device, dtype=x.dtype)
    if not fixed_std:
        sigma = sigma * torch.rand(x.shape[0], device=x.device, dtype=x.dtype)
    sigma = torch.where(chosen, sigma, torch.zeros_like(sigma))
    return x + _per_sample(sigma, x) * torch.randn_like(x)


def random_intensity_scale(x: torch.Tensor, prob: float = 0.5, amount: float = 0.1) -> torch.Tensor:
    """Multiply each chosen sample (probability ``prob``) by a factor uniform in ``[1 - amount, 1 + amount]``."""
    chosen = _chosen(x, prob)
    factor = 1.0 + (torch.rand(x.shape[0], device=x.device, dtype=x.dtype) * 2 - 1) * float(amount)
    factor = torch.where(chosen, factor, torch.ones_like(factor))
    return x * _per_sample(factor, x)


@dataclass(frozen=True)
class AugmentOptions:
    """Settings of :func:`augment_view`.

    The defaults follow the paper and the authors' ranges: each augmentation with probability 0.5;
    affine up to 10 degrees, zoom 0.8-1.2, shift up to 10/64 of the edge; flips of the H and W axes
    (as the fine-tuning augmentation of :mod:`SinusAnomalyTraining.data`); Gaussian noise with a
    standard deviation up to 0.25; intensity scaling by up to 10 %.
    """

    prob: float = 0.5
    rotate_deg: float = 10.0
    scale: float = 0.2
    translate: float = 10.0 / 64.0
    flip_axes: tuple[int, ...] = (1, 2)
    noise_std: float = 0.25
    intensity: float = 0.1
    geometric_only: bool = False

    @classmethod
    def from_options(cls, options: AugmentOptions | Mapping[str, Any] | None) -> AugmentOptions:
        if options is None:
            return cls()
        if isinstance(options, cls):
            return options
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise PretextError(f"unknown augmentation options {unknown}; known: {sorted(known)}")
        values = dict(options)
        if "flip_axes" in values:
            values["flip_axes"] = tuple(int(a) for a in values["flip_axes"])
        return cls(**values)


def augment_view(x: torch.Tensor, options: AugmentOptions | None = None) -> torch.Tensor:
    """One random view of the batch: affine, flips, then (unless ``geometric_only``) intensity
    scaling and Gaussian noise, each with probability ``options.prob`` per sample."""
    o = options or AugmentOptions()
    if o.prob <= 0.0:
        return x
    out = random_affine(x, o.prob, o.rotate_deg, o.scale, o.translate)
    out = random_flip(out, o.prob / 2.0 if len(o.flip_axes) > 1 else o.prob, o.flip_axes)
    if not o.geometric_only:
        out = random_intensity_scale(out, o.prob, o.intensity)
        out = random_gaussian_noise(out, o.prob, o.noise_std)
    return out

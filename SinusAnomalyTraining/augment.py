"""Training augmentation of every method: one policy, batched on the training device.

:func:`augment_batch` takes a batch ``(B, C, D, H, W)`` whose first channel is the image and whose
other channels are targets that must move with it (the residual target of residual pretraining).
Per sample, independently, with the ranges of :class:`~SinusAnomalyTraining.config.AugmentSettings`
(the same draws as the per-sample MONAI transforms it replaces: ``RandAffined``, two
``RandFlipd``, ``RandGaussianNoised``):

1. with probability ``prob`` a random affine warp: rotation uniform in ``[-rotate_deg, rotate_deg]``
   about each axis, a scale factor uniform in ``[1 - scale, 1 + scale]`` per axis, a shift uniform in
   ``[-translate_voxels, translate_voxels]`` voxels per axis (MONAI's convention: the matrix maps an
   output voxel to where it is sampled in the input, so a factor above 1 shrinks the content and a
   shift ``t`` moves it by ``-t``); trilinear, border padding. Every channel of the warped samples
   goes through ONE ``affine_grid`` / ``grid_sample`` call per batch, so image and target stay
   aligned; samples not drawn are not resampled at all (returned exactly);
2. flips, each with probability ``prob / 2`` (exact: no resampling), of the axes ``flips`` names
   (:data:`FLIP_DIMS`): "left-right" (default) mirrors D, the crop's left-right axis, the only
   flip that gives an anatomically possible sinus; "authors" flips H and W as the paper's code does,
   though they are the anterior-posterior and superior-inferior axes (upside-down sinuses, fluid
   levels with the fluid on top); "none" flips nothing;
3. when ``blur_sigma_max`` is above 0, with probability ``prob`` a Gaussian blur of the image
   channel(s), its standard deviation uniform in ``[0, blur_sigma_max]`` voxels of the served crop
   (MONAI's separable Gaussian, edges replicated). Not in the paper; it makes sharpness an
   unreliable cue, as it is across scanners and resolutions (an average of many heads, such as the
   ROBEX atlas, is smoother than any single scan; a 1 mm crop shows texture a 2 mm one averages);
4. when ``gamma_max`` is above 1, with probability ``prob`` a gamma change of the image
   channel(s): ``x ** gamma`` (``x`` clamped to ``[0, 1]``, the crops' range), ``gamma``
   log-uniform in ``[1 / gamma_max, gamma_max]``. Not in the paper; it makes tissue brightness an
   unreliable cue, as it is across MRI contrasts (a normal sinus in T2-like tissue is brighter
   than in T1-like tissue, a lesion is brighter than air in every contrast);
5. with probability ``prob`` Gaussian noise of a standard deviation uniform in ``[0, noise_std]``,
   on the image channel(s) only (the authors also noised the target).

Which methods get which (``docs/training.md``, *Comparing pretraining methods*): residual pretraining and
fine-tuning get all of it from their loader; AE, DAE and SparK, whose target is their own input,
get the geometry only (noise would touch their target); SimCLR, BYOL and SimSiam call
:func:`augment_batch` twice per batch for their two views, then :func:`random_intensity_scale`,
their one view-making extra.

Random numbers: the per-sample parameters are drawn in one call from torch's global CPU
generator (:func:`draw_params`), so they are the same whatever the device, and reach a GPU
through pinned memory without blocking (:func:`runtime.to_device`); the noise comes from the
device's default generator. :func:`SinusAnomalyTraining.engine.fit` reseeds both at every
epoch from ``(seed, epoch, rank)`` and checkpoints them, so augmentation is reproducible and a
resumed run repeats the uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers import gaussian_1d, separable_filtering

from . import runtime
from .config import AugmentSettings

__all__ = ["DEFAULT_AUGMENT", "AugmentParams", "draw_params", "augment_batch", "random_intensity_scale"]

DEFAULT_AUGMENT = AugmentSettings(prob=0.5, rotate_deg=10.0, scale=0.2, translate_voxels=10.0, noise_std=0.1)
"""The paper configuration's policy (``configs/paper.json``), for pretext models built without settings."""

# Dimensions of (B, C, D, H, W) flipped by each ``AugmentSettings.flips``: D is the crop's
# left-right axis, H anterior-posterior, W superior-inferior (extraction.py).
FLIP_DIMS = {"left-right": (2,), "authors": (3, 4), "none": ()}


@dataclass(frozen=True)
class AugmentParams:
    """Per-sample random parameters of one batch (CPU tensors, first dimension ``B``)."""

    affine: torch.Tensor  # (B,) bool: warped
    angles: torch.Tensor  # (B, 3) radians about the D, H and W axes
    scale: torch.Tensor  # (B, 3) sampling-grid scale factors along D, H, W
    shift: torch.Tensor  # (B, 3) voxels along D, H, W
    flip: torch.Tensor  # (B, 2) bool: flipped along the first, the second of FLIP_DIMS[settings.flips] (unused columns ignored)
    noise: torch.Tensor  # (B,) bool: noised
    noise_std: torch.Tensor  # (B,) standard deviation of the noise (0 where not noised)
    gamma: torch.Tensor | None = None  # (B,) exponent of the image (1 where unchanged); None: off
    blur_sigma: torch.Tensor | None = None  # (B,) Gaussian blur's standard deviation in voxels (0 where unchanged); None: off


def draw_params(batch: int, settings: AugmentSettings) -> AugmentParams:
    """Draw the parameters of ``batch`` samples with ``settings``' probabilities and ranges."""
    p = float(settings.prob)
    u = torch.rand(batch, 14, dtype=torch.float64)
    symmetric = u[:, 1:10] * 2.0 - 1.0  # uniform in [-1, 1]
    noise = u[:, 12] < p
    gamma = None
    if float(settings.gamma_max) > 1.0:  # drawn after the rest, so the other draws stay those of a policy without it
        g = torch.rand(batch, 2, dtype=torch.float64)
        log_gamma = (g[:, 1] * 2.0 - 1.0) * math.log(float(settings.gamma_max))
        gamma = torch.where(g[:, 0] < p, log_gamma.exp(), torch.ones(batch, dtype=torch.float64))
    blur_sigma = None
    if float(settings.blur_sigma_max) > 0.0:  # drawn last, for the same reason
        b = torch.rand(batch, 2, dtype=torch.float64)
        blur_sigma = torch.where(b[:, 0] < p, b[:, 1] * float(settings.blur_sigma_max), torch.zeros(batch, dtype=torch.float64))
    return AugmentParams(
        affine=u[:, 0] < p,
        angles=symmetric[:, 0:3] * math.radians(float(settings.rotate_deg)),
        scale=1.0 + symmetric[:, 3:6] * float(settings.scale),
        shift=symmetric[:, 6:9] * float(settings.translate_voxels),
        flip=u[:, 10:12] < p / 2.0,
        noise=noise & (float(settings.noise_std) > 0.0),
        noise_std=torch.where(noise, u[:, 13] * float(settings.noise_std), torch.zeros(batch, dtype=torch.float64)),
        gamma=gamma,
        blur_sigma=blur_sigma,
    )


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """``(N, 3)`` angles about the D, H, W axes -> ``(N, 3, 3)`` rotations acting on (D, H, W) vectors."""
    c, s = angles.cos(), angles.sin()
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def matrix(rows):
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    about_d = matrix([(one, zero, zero), (zero, c[:, 0], -s[:, 0]), (zero, s[:, 0], c[:, 0])])
    about_h = matrix([(c[:, 1], zero, s[:, 1]), (zero, one, zero), (-s[:, 1], zero, c[:, 1])])
    about_w = matrix([(c[:, 2], -s[:, 2], zero), (s[:, 2], c[:, 2], zero), (zero, zero, one)])
    return about_w @ about_h @ about_d


def _theta(params: AugmentParams, rows: torch.Tensor, spatial: tuple[int, int, int]) -> torch.Tensor:
    """``affine_grid``'s ``(N, 3, 4)`` matrices of the samples ``rows``, in its normalised (x, y, z) = (W, H, D) order.

    Built in voxel units about the crop centre (rotation times scale, then the shift) and
    converted to ``[-1, 1]`` coordinates, so an anisotropic array still rotates in voxel space.
    """
    linear = _rotation(params.angles[rows]) @ torch.diag_embed(params.scale[rows])  # (D, H, W) voxel units
    half = torch.tensor(spatial, dtype=torch.float64) / 2.0  # voxels per normalised unit, per axis
    normalised = linear * half[None, None, :] / half[None, :, None]
    shift = params.shift[rows] / half
    theta = torch.cat([normalised, shift[:, :, None]], dim=2)
    order = [2, 1, 0]  # (D, H, W) -> (x, y, z)
    return torch.cat([theta[:, order][:, :, order], theta[:, order][:, :, 3:]], dim=2)


def augment_batch(x: torch.Tensor, settings: AugmentSettings, image_channels: int = 1,
                  params: AugmentParams | None = None) -> torch.Tensor:
    """The augmented batch: ``(B, C, D, H, W)`` floating point -> a tensor of the same shape and device.

    Geometry moves all ``C`` channels together; noise touches the first ``image_channels`` only.
    ``x`` is never modified (it is returned as it is when nothing was drawn). ``params``
    (default: :func:`draw_params`) fixes the random draws.
    """
    if x.dim() != 5 or not x.is_floating_point():
        raise ValueError(f"augment_batch expects a floating-point batch (B, C, D, H, W), got {tuple(x.shape)} {x.dtype}")
    if params is None:
        if settings.prob <= 0.0:
            return x
        params = draw_params(x.shape[0], settings)
    out = None  # the result, once something changed (x itself is never written)
    warped = params.affine.nonzero().flatten()
    if len(warped):
        theta = runtime.to_device(_theta(params, warped, tuple(x.shape[2:])).float(), x.device)
        rows = runtime.to_device(warped, x.device)
        chosen = x if len(warped) == len(x) else x.index_select(0, rows)
        grid = F.affine_grid(theta, list(chosen.shape), align_corners=False)
        moved = F.grid_sample(chosen.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)
        out = moved if len(warped) == len(x) else x.clone().index_copy_(0, rows, moved)
    for axis, dim in enumerate(FLIP_DIMS[settings.flips]):
        flipped = params.flip[:, axis].nonzero().flatten()
        if len(flipped):
            out = x.clone() if out is None else out
            rows = runtime.to_device(flipped, x.device)
            out.index_copy_(0, rows, out.index_select(0, rows).flip(dim))
    blurred = [] if params.blur_sigma is None else (params.blur_sigma > 0.0).nonzero().flatten()
    if len(blurred):
        out = x.clone() if out is None else out
        for row in blurred.tolist():  # one sigma per sample; a batch holds a few
            kernel = runtime.to_device(gaussian_1d(params.blur_sigma[row].float(), truncated=4.0, approx="erf", normalize=True).to(x.dtype), x.device)
            image = out[row:row + 1, :image_channels]
            out[row:row + 1, :image_channels] = separable_filtering(image, [kernel] * (x.dim() - 2), mode="replicate")
    changed = [] if params.gamma is None else (params.gamma != 1.0).nonzero().flatten()
    if len(changed):
        out = x.clone() if out is None else out
        rows = runtime.to_device(changed, x.device)
        image = out[:, :image_channels]
        exponent = runtime.to_device(params.gamma[changed].to(x.dtype), x.device).view(-1, 1, 1, 1, 1)
        image.index_copy_(0, rows, image.index_select(0, rows).clamp(0.0, 1.0) ** exponent)
    noised = params.noise.nonzero().flatten()
    if len(noised):
        out = x.clone() if out is None else out
        rows = runtime.to_device(noised, x.device)
        image = out[:, :image_channels]
        std = runtime.to_device(params.noise_std[noised].to(x.dtype), x.device).view(-1, 1, 1, 1, 1)
        noise = torch.randn((len(noised), *image.shape[1:]), device=x.device, dtype=x.dtype)
        image.index_copy_(0, rows, image.index_select(0, rows) + std * noise)
    return x if out is None else out


def random_intensity_scale(x: torch.Tensor, prob: float, amount: float) -> torch.Tensor:
    """Multiply each sample, with probability ``prob``, by a factor uniform in ``[1 - amount, 1 + amount]``.

    SimCLR's, BYOL's and SimSiam's view-making extra (the grey-value analogue of their colour
    jitter); drawn on the CPU generator as :func:`draw_params`. ``x`` is not modified.
    """
    u = torch.rand(x.shape[0], 2, dtype=torch.float64)
    factor = torch.where(u[:, 0] < float(prob), 1.0 + (u[:, 1] * 2.0 - 1.0) * float(amount), torch.ones(x.shape[0], dtype=torch.float64))
    return x * runtime.to_device(factor.to(x.dtype), x.device).view(-1, *([1] * (x.dim() - 1)))

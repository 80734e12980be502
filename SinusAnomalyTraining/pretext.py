"""Baseline self-supervised pretraining methods, each around the method's :class:`ResNet18Encoder`.

The paper compares its residual pretraining with generic self-supervised methods. Each of them is
a small ``nn.Module`` here, built around the SAME encoder class the classifier uses, so the encoder
it trains loads into :class:`SinusClassifier` through the one checked path
(``SinusClassifier.load_encoder(state, prefix="encoder.")``):

=========== ====================================================================================
``ae``      :class:`AutoencoderPretext`: encoder + decoder without skip connections, L1 to the input.
``dae``     :class:`DenoisingPretext`: the same network fed ``x + N(0, 0.6)`` (always), L1 to clean x.
``simclr``  :class:`SimCLRPretext`: two views, pooled features, MLP projector to 512, NT-Xent.
``byol``    :class:`BYOLPretext`: online encoder/projector/predictor, EMA target, 2 - 2 cos.
``simsiam`` :class:`SimSiamPretext`: projector + predictor, negative cosine with stop-gradient.
``spark``   :class:`SparKPretext`: 3D SparK-style masked modelling (sparse encoding emulated).
=========== ====================================================================================

Common interface (:class:`PretextModel`):

* ``model.encoder``: a :class:`ResNet18Encoder` (widths, shortcut and input channels configurable);
* ``model.loss(images)`` -> scalar loss for a batch ``(B, C, S, S, S)`` of crops in [0, 1]; the
  method draws its own random views / noise / masks with torch's global RNG (seed it with
  ``torch.manual_seed`` to reproduce). Calling the model, ``model(images)``, returns the same loss,
  so a ``DistributedDataParallel`` wrapper sees the whole computation;
* ``model.encoder_state()`` -> ``{"encoder.<name>": tensor}``; the model's full ``state_dict()``
  also works, since no other submodule's name starts with ``encoder.``;
* ``model.trainable_parameters()``: what the optimiser should update (BYOL's target is excluded);
* ``model.after_optimizer_step(step, total_steps)``: call after every optimiser step (BYOL's
  momentum update of the target; a no-op for the others).

Augmentations (:func:`random_affine`, :func:`random_flip`, :func:`random_gaussian_noise`,
:func:`random_intensity_scale`, :func:`augment_view`) are pure functions of a batch tensor: they
never modify their input and draw every random number from torch's global RNG, per sample.

:func:`load_medicalnet_encoder` loads the transfer-learning baseline's weights (MedicalNet's 3D
ResNet18) from a local file into a :class:`ResNet18Encoder`, checked key by key. Nothing in this
module downloads anything.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, UpSample
from torch import nn

from SinusAnomalyLib.errors import SinusAnomalyError
from SinusAnomalyLib.models import RESNET18_WIDTHS, ModelError, ResNet18Encoder

__all__ = [
    "PretextError",
    "PretrainedWeightsError",
    "AugmentOptions",
    "random_flip",
    "random_affine",
    "random_gaussian_noise",
    "random_intensity_scale",
    "augment_view",
    "nt_xent_loss",
    "byol_regression_loss",
    "negative_cosine_similarity",
    "byol_momentum",
    "random_patch_mask",
    "resample_mask",
    "masked_reconstruction_loss",
    "PretextModel",
    "ReconstructionDecoder",
    "AutoencoderPretext",
    "DenoisingPretext",
    "SimCLRPretext",
    "BYOLPretext",
    "SimSiamPretext",
    "SparKPretext",
    "PRETEXT_METHODS",
    "build_pretext",
    "load_medicalnet_encoder",
]


class PretextError(SinusAnomalyError, ValueError):
    """A pretext model that cannot be built as asked, or a batch it cannot take."""


class PretrainedWeightsError(SinusAnomalyError):
    """A pretrained-weights file that cannot be loaded into the encoder; the message names the file."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# --------------------------------------------------------------------------------------------
# Augmentations: pure functions of a (B, C, D, H, W) batch, random per sample
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Shared building blocks
# --------------------------------------------------------------------------------------------


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, bias_hidden: bool = True) -> nn.Sequential:
    """Linear - BatchNorm - ReLU - Linear (the projector / predictor of SimCLR and BYOL)."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim, bias=bias_hidden),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim),
    )


def _upsample_block(c_in: int, c_out: int, scale: int = 2) -> UpSample:
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


# --------------------------------------------------------------------------------------------
# 1-2. Autoencoder and denoising autoencoder
# --------------------------------------------------------------------------------------------


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
        self.stages = nn.Sequential(*(_upsample_block(a, b) for a, b in zip(chain[:-1], chain[1:])))
        self.head = nn.Conv3d(chain[-1], out_channels, kernel_size=1)
        if out_activation not in (None, "sigmoid"):
            raise PretextError(f"out_activation must be 'sigmoid' or None, got {out_activation!r}")
        self.out_activation = nn.Sigmoid() if out_activation == "sigmoid" else nn.Identity()

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.out_activation(self.head(self.stages(deepest)))


class AutoencoderPretext(PretextModel):
    """AE: ``decoder(encoder(x)[-1])`` reconstructs the input; L1 loss.

    With ``augment`` the batch first gets a random geometric view (affine and flips, probability
    0.5 each, as the other methods' views), and the view is both input and target. Input edges must
    be multiples of 32 (the decoder inverts the encoder's five halvings).

    Args:
        decoder_widths: widths of the five decoder stages (default: see :class:`ReconstructionDecoder`).
        augment: geometric augmentation of the batch (AugmentOptions or a dict of its fields to
            change the defaults, or ``False``/``None`` for none).
    """

    size_multiple = 32

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        decoder_widths: Sequence[int] | None = None,
        out_activation: str | None = "sigmoid",
        augment: AugmentOptions | Mapping[str, Any] | bool | None = True,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        self.decoder = ReconstructionDecoder(self.encoder.feature_channels, in_channels, decoder_widths, out_activation)
        if augment is True:
            augment = {}
        self.augment = None if augment in (False, None) else AugmentOptions.from_options(
            {"geometric_only": True, **dict(augment)} if isinstance(augment, Mapping) else augment
        )

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> reconstruction of the same shape."""
        self.check_batch(x)
        return self.decoder(self.encoder(x)[-1])

    def make_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(network input, reconstruction target)`` for the batch: the same view, twice."""
        view = augment_view(x, self.augment) if self.augment is not None else x
        return view, view

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        inputs, target = self.make_pair(x)
        return F.l1_loss(self.reconstruct(inputs).float(), target.float())


class DenoisingPretext(AutoencoderPretext):
    """DAE: the AE's network fed ``view + N(0, noise_std^2)`` (ALWAYS, std 0.6 by default, as in the
    paper) and trained with L1 to reconstruct the CLEAN view (the target never gets noise)."""

    def __init__(self, *args: Any, noise_std: float = 0.6, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if float(noise_std) <= 0.0:
            raise PretextError(f"noise_std must be positive, got {noise_std}")
        self.noise_std = float(noise_std)

    def make_pair(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clean = augment_view(x, self.augment) if self.augment is not None else x
        noisy = random_gaussian_noise(clean, prob=1.0, std=self.noise_std, fixed_std=True)
        return noisy, clean


# --------------------------------------------------------------------------------------------
# 3-5. Joint-embedding methods
# --------------------------------------------------------------------------------------------


class _TwoViewPretext(PretextModel):
    """Two independent random views of each image (:func:`augment_view`)."""

    def __init__(self, encoder_widths, in_channels, shortcut_type, augment) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        self.augment = AugmentOptions.from_options(augment)

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return augment_view(x, self.augment), augment_view(x, self.augment)


class SimCLRPretext(_TwoViewPretext):
    """SimCLR: pooled encoder features -> projector Linear-BN-ReLU-Linear to ``projection_dim``
    (512, the paper) -> NT-Xent over the two views' projections (:func:`nt_xent_loss`).

    Args:
        projection_dim: output of the projector (512).
        hidden_dim: hidden width of the projector (default: the encoder's output width).
        temperature: NT-Xent temperature (0.1).
        augment: view augmentation settings (AugmentOptions or a dict of its fields).
    """

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        projection_dim: int = 512,
        hidden_dim: int | None = None,
        temperature: float = 0.1,
        augment: AugmentOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type, augment)
        if float(temperature) <= 0.0:
            raise PretextError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        c = self.encoder.out_channels
        self.projector = _mlp(c, int(hidden_dim or c), int(projection_dim))

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.pooled_features(x))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        self.check_batch(x)
        v1, v2 = self.views(x)
        # one encoder pass over both views: BatchNorm sees both (as SimCLR's per-device batches)
        z = self.project(torch.cat([v1, v2]))
        z1, z2 = z.chunk(2)
        return nt_xent_loss(z1, z2, self.temperature)


class BYOLPretext(_TwoViewPretext):
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
        augment: AugmentOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type, augment)
        if not 0.0 <= float(tau_base) <= 1.0:
            raise PretextError(f"tau_base must be in [0, 1], got {tau_base}")
        self.tau_base = float(tau_base)
        c = self.encoder.out_channels
        self.projector = _mlp(c, int(hidden_dim), int(projection_dim))
        self.predictor = _mlp(int(projection_dim), int(hidden_dim), int(projection_dim))
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


class SimSiamPretext(_TwoViewPretext):
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
        augment: AugmentOptions | Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type, augment)
        c, d = self.encoder.out_channels, int(projection_dim)
        h = int(predictor_hidden_dim or max(d // 4, 1))
        self.projector = nn.Sequential(
            nn.Linear(c, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
            nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(inplace=True),
            nn.Linear(d, d, bias=False), nn.BatchNorm1d(d, affine=False),
        )
        self.predictor = _mlp(d, h, d, bias_hidden=False)

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


# --------------------------------------------------------------------------------------------
# 6. SparK-style masked modelling in 3D
# --------------------------------------------------------------------------------------------


def random_patch_mask(batch: int, grid: Sequence[int], ratio: float = 0.6, device=None) -> torch.Tensor:
    """Random patch mask per sample: ``(B, 1, *grid)`` bool, True where the patch is VISIBLE.

    Exactly ``round(ratio * n_patches)`` patches of each sample are masked (at least one stays
    visible), chosen uniformly with torch's global RNG.
    """
    if not 0.0 < float(ratio) < 1.0:
        raise PretextError(f"the mask ratio must be in (0, 1), got {ratio}")
    n = math.prod(int(g) for g in grid)
    n_masked = min(int(round(float(ratio) * n)), n - 1)
    order = torch.rand(batch, n, device=device).argsort(dim=1)
    visible = order >= n_masked  # the n_masked patches of lowest random rank are masked
    return visible.view(batch, 1, *(int(g) for g in grid))


def resample_mask(visible: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Patch-grid mask ``(B, 1, *grid)`` -> mask at a feature map's resolution ``(B, 1, *size)``.

    Along each axis the size must be a multiple of the grid (each patch covers whole voxels:
    nearest-neighbour repetition) or divide it (each voxel covers whole patches: the voxel is
    visible if ANY of its patches is, a max-pool; its value is computed only from the visible
    voxels below it, which sparse encoding keeps masked content out of).
    """
    grid = visible.shape[2:]
    out = visible
    kernel = []
    for axis, (g, s) in enumerate(zip(grid, size)):
        g, s = int(g), int(s)
        if s % g == 0:
            if s > g:
                out = out.repeat_interleave(s // g, dim=2 + axis)
            kernel.append(1)
        elif g % s == 0:
            kernel.append(g // s)
        else:
            raise PretextError(f"a feature map of size {tuple(size)} does not align with the patch grid {tuple(grid)}")
    if any(k > 1 for k in kernel):
        out = F.max_pool3d(out.float(), kernel_size=kernel, stride=kernel) > 0.5
    return out


class _SparseEncoding:
    """Context manager emulating SparK's sparse convolution on a dense encoder.

    While active: the output of every leaf module of the encoder (conv, max-pool, activation) is
    multiplied by the visible mask at its resolution, and every BatchNorm normalises with the
    statistics of the VISIBLE positions only (also for its running statistics; masked positions
    come out as zeros). So masked positions stay zero at every layer, and neither the features
    nor the BatchNorm statistics depend on masked content. Hooks and overrides are removed on exit.
    """

    def __init__(self, encoder: nn.Module, visible: torch.Tensor) -> None:
        self.encoder = encoder
        self.visible = visible
        self._cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._handles: list = []
        self._patched: list[nn.Module] = []

    def mask(self, size: Sequence[int]) -> torch.Tensor:
        key = tuple(int(s) for s in size)
        if key not in self._cache:
            self._cache[key] = resample_mask(self.visible, key)
        return self._cache[key]

    def _mask_output(self, module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 5:
            return output * self.mask(output.shape[2:]).to(output.dtype)
        return output

    def _sparse_batch_norm(self, bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
        visible = self.mask(x.shape[2:])[:, 0]  # (B, D, H, W)
        channels_last = x.movedim(1, -1)  # (B, D, H, W, C)
        rows = channels_last[visible]  # (n_visible, C)
        use_batch_stats = bn.training or bn.running_mean is None
        factor = 0.0 if bn.momentum is None else bn.momentum
        if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
            bn.num_batches_tracked.add_(1)
            factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        normed = F.batch_norm(
            rows,
            bn.running_mean if not bn.training or bn.track_running_stats else None,
            bn.running_var if not bn.training or bn.track_running_stats else None,
            bn.weight,
            bn.bias,
            use_batch_stats,
            factor,
            bn.eps,
        )
        out = normed.new_zeros(channels_last.shape)
        out[visible] = normed
        return out.movedim(-1, 1)

    def __enter__(self) -> _SparseEncoding:
        try:
            for module in self.encoder.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.forward = lambda x, _bn=module: self._sparse_batch_norm(_bn, x)
                    self._patched.append(module)
                elif not any(True for _ in module.children()):
                    self._handles.append(module.register_forward_hook(self._mask_output))
        except Exception:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        for module in self._patched:
            del module.forward  # back to the class's forward
        self._handles.clear()
        self._patched.clear()


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


class SparKPretext(PretextModel):
    """SparK-style masked image modelling in 3D (Tian et al. 2023, adapted as in the paper).

    * Masking: the crop is cut into ``patch_size``^3 patches (8^3, the paper); per sample a random
      ``mask_ratio`` (60 %) of them is masked (:func:`random_patch_mask`); masked patches of the
      input are set to 0.
    * Sparse encoding, emulated on the dense encoder (:class:`_SparseEncoding`): after every conv,
      pooling and activation the mask (resampled to that resolution) zeroes the masked positions
      again, and BatchNorm uses the statistics of the visible positions only. Where a feature map
      is coarser than the patch grid, a voxel is visible if any patch under it is.
    * Light decoder (3 upsampling + 3 conv blocks, the paper): the four stage outputs
      (layer1..layer4, 1/4 .. 1/32 resolution) are "densified": masked positions are filled with a
      learnable mask token of that level, then BatchNorm + a conv (1x1x1 for the deepest, 3x3x3
      otherwise) projects them to the decoder width; from the deepest level, each block upsamples
      x2 (trilinear + 3x3x3 conv + BN + ReLU) and adds the densified map of the next level; a head
      upsamples x4 to full resolution and convolves to the image's channels (linear output).
    * Loss: MSE (or L1) between reconstruction and input over the MASKED voxels only.

    Input edges must be multiples of 32 and of ``patch_size``.

    Args:
        patch_size: patch edge in voxels (8).
        mask_ratio: fraction of patches masked (0.6).
        decoder_widths: widths of the decoder at 1/32, 1/16, 1/8, 1/4 (default: the encoder's).
        loss: ``"mse"`` or ``"l1"``.
    """

    size_multiple = 32

    def __init__(
        self,
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
        in_channels: int = 1,
        shortcut_type: str = "B",
        patch_size: int = 8,
        mask_ratio: float = 0.6,
        decoder_widths: Sequence[int] | None = None,
        loss: str = "mse",
    ) -> None:
        super().__init__(encoder_widths, in_channels, shortcut_type)
        if int(patch_size) < 1:
            raise PretextError(f"patch_size must be positive, got {patch_size}")
        if not 0.0 < float(mask_ratio) < 1.0:
            raise PretextError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if loss not in ("mse", "l1"):
            raise PretextError(f"loss must be 'mse' or 'l1', got {loss!r}")
        self.patch_size = int(patch_size)
        self.mask_ratio = float(mask_ratio)
        self.loss_kind = loss
        levels = self.encoder.feature_channels[1:][::-1]  # layer4, layer3, layer2, layer1
        widths = tuple(int(w) for w in (decoder_widths or levels))
        if len(widths) != 4:
            raise PretextError(f"decoder_widths needs 4 widths (1/32 to 1/4 resolution), got {widths}")
        self.mask_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, c, 1, 1, 1)) for c in levels)
        for token in self.mask_tokens:
            nn.init.trunc_normal_(token, std=0.02, a=-0.02, b=0.02)
        self.densify = nn.ModuleList(
            nn.Sequential(nn.BatchNorm3d(c), nn.Conv3d(c, w, kernel_size=1 if i == 0 else 3, padding=0 if i == 0 else 1))
            for i, (c, w) in enumerate(zip(levels, widths))
        )
        self.up_blocks = nn.ModuleList(_upsample_block(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.head = nn.Sequential(
            nn.Upsample(scale_factor=4, mode="trilinear", align_corners=False),
            nn.Conv3d(widths[-1], in_channels, kernel_size=3, padding=1),
        )

    def check_batch(self, x: torch.Tensor) -> None:
        super().check_batch(x)
        if any(size % self.patch_size for size in x.shape[2:]):
            raise PretextError(f"spatial edges must be multiples of the patch size {self.patch_size}, got {tuple(x.shape)}")

    def patch_grid(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(int(s) // self.patch_size for s in x.shape[2:])

    def random_mask(self, x: torch.Tensor) -> torch.Tensor:
        """A fresh random visible-patch mask ``(B, 1, *grid)`` for the batch."""
        return random_patch_mask(x.shape[0], self.patch_grid(x), self.mask_ratio, device=x.device)

    def voxel_mask(self, visible: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Visible mask at full resolution, ``(B, 1, D, H, W)`` bool."""
        return resample_mask(visible, x.shape[2:])

    def sparse_features(self, x: torch.Tensor, visible: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of the masked batch (masked input patches zeroed, sparse encoding);
        masked positions are exactly 0 in every map."""
        masked_input = x * self.voxel_mask(visible, x).to(x.dtype)
        with _SparseEncoding(self.encoder, visible):
            return self.encoder(masked_input)

    def reconstruct(self, x: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, C, D, H, W)`` of the whole crop from its visible patches."""
        features = self.sparse_features(x, visible)[1:][::-1]  # layer4 .. layer1
        dense = []
        for feature, token, densify in zip(features, self.mask_tokens, self.densify):
            keep = resample_mask(visible, feature.shape[2:])
            dense.append(densify(torch.where(keep, feature, token.to(feature.dtype))))
        out = dense[0]
        for block, skip in zip(self.up_blocks, dense[1:]):
            out = block(out) + skip
        return self.head(out)

    def loss(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Masked-voxel reconstruction loss; ``visible`` (``(B, 1, *grid)`` bool) fixes the mask."""
        self.check_batch(x)
        if visible is None:
            visible = self.random_mask(x)
        elif tuple(visible.shape) != (x.shape[0], 1, *self.patch_grid(x)):
            raise PretextError(f"mask of shape {tuple(visible.shape)} does not fit the batch's patch grid {self.patch_grid(x)}")
        visible = visible.bool()
        prediction = self.reconstruct(x, visible)
        return masked_reconstruction_loss(prediction, x, ~self.voxel_mask(visible, x), self.loss_kind)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

PRETEXT_METHODS: dict[str, type[PretextModel]] = {
    "ae": AutoencoderPretext,
    "dae": DenoisingPretext,
    "simclr": SimCLRPretext,
    "byol": BYOLPretext,
    "simsiam": SimSiamPretext,
    "spark": SparKPretext,
}
"""Names accepted by :func:`build_pretext`."""


def build_pretext(name: str, encoder_widths: Sequence[int] = RESNET18_WIDTHS, **options: Any) -> PretextModel:
    """Build the pretext model ``name`` around a ResNet18 encoder of ``encoder_widths``.

    ``options`` are keyword arguments of its class (e.g. ``temperature`` for SimCLR,
    ``mask_ratio`` for SparK, ``shortcut_type``). Raises :class:`PretextError` for an unknown name
    or option.
    """
    key = str(name).lower()
    if key not in PRETEXT_METHODS:
        raise PretextError(f"unknown pretraining method {name!r}; choose one of {', '.join(PRETEXT_METHODS)}")
    try:
        return PRETEXT_METHODS[key](encoder_widths=tuple(encoder_widths), **options)
    except TypeError as error:
        raise PretextError(f"cannot build {key!r} with options {sorted(options)}: {error}") from error


# --------------------------------------------------------------------------------------------
# 7. MedicalNet weights (transfer-learning baseline)
# --------------------------------------------------------------------------------------------

MEDICALNET_HEAD_PREFIXES = ("conv_seg.", "fc.")
"""Parameters of MedicalNet's heads (segmentation, classification), not part of the encoder."""

_OPTIONAL_BUFFER_SUFFIX = ".num_batches_tracked"  # older checkpoints lack it; not needed for inference


def _listing(items: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise PretrainedWeightsError(path, "no such file (MedicalNet weights are never downloaded: give a local file)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling / zip errors: not a torch checkpoint
        raise PretrainedWeightsError(path, f"not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from error
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping) or not state or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PretrainedWeightsError(
            path, "not a MedicalNet checkpoint: expected {'state_dict': {name: tensor}} (or a plain state dict)"
        )
    return dict(state)


def load_medicalnet_encoder(path: str | Path, encoder: ResNet18Encoder, strict: bool = True) -> dict[str, Any]:
    """Load MedicalNet ResNet18 weights from the local file ``path`` into ``encoder``, checked key by key.

    MedicalNet checkpoints are ``torch.save({"state_dict": {...}})`` of a DataParallel model: keys
    ``module.conv1.weight``, ``module.bn1.*``, ``module.layer1.0.conv1.weight``, ... whose names
    after ``module.`` are exactly :class:`ResNet18Encoder`'s (both follow the same 3D ResNet).
    ``conv_seg.*`` / ``fc.*`` head parameters are ignored (listed in the report). MedicalNet's
    resnet18 uses shortcut type "A" (no ``downsample`` parameters), so the encoder should be
    ``ResNet18Encoder(shortcut_type="A")`` at the default widths; a file with ``downsample`` keys
    needs shortcut "B". Its conv1 takes one channel, like the crops.

    Raises :class:`PretrainedWeightsError` naming the file (and the encoder is left unchanged) if
    the file is missing or not a checkpoint, if any encoder tensor is missing (BatchNorm
    ``num_batches_tracked`` counters excepted: they keep the encoder's values and are listed as
    missing) or has another shape, or (with ``strict``) if the file holds unexpected non-head
    tensors. With ``strict=False`` unexpected tensors are skipped and listed.

    Returns ``{"loaded": n, "ignored": [...], "missing": [...], "unexpected": [...]}``.
    """
    path = Path(path)
    raw = _read_checkpoint(path)
    state: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        name = key[len("module."):] if key.startswith("module.") else key
        if name.startswith(MEDICALNET_HEAD_PREFIXES):
            ignored.append(key)
        else:
            state[name] = value
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    fatal_missing = [k for k in missing if not k.endswith(_OPTIONAL_BUFFER_SUFFIX)]
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (encoder {tuple(expected[k].shape)}, file {tuple(state[k].shape)})"
        for k in set(expected) & set(state)
        if tuple(expected[k].shape) != tuple(state[k].shape)
    )
    if fatal_missing or mismatched or (strict and unexpected):
        problems = []
        if fatal_missing:
            problems.append(f"missing encoder tensors: {_listing(fatal_missing)}")
        if mismatched:
            problems.append(f"shape mismatches: {_listing(mismatched)}")
        if strict and unexpected:
            problems.append(f"unexpected tensors: {_listing(unexpected)}")
        hints = []
        shortcut = getattr(encoder, "shortcut_type", None)
        if shortcut == "A" and any(".downsample." in k for k in unexpected):
            hints.append("the file has projection shortcuts (downsample.*): build the encoder with shortcut_type='B'")
        if shortcut == "B" and any(".downsample." in k for k in fatal_missing):
            hints.append("the file has no projection shortcuts (MedicalNet resnet18 uses shortcut 'A'): "
                         "build the encoder with shortcut_type='A'")
        if mismatched:
            hints.append("MedicalNet ResNet18 has widths 64-128-256-512")
        raise PretrainedWeightsError(
            path, "does not fit the ResNet18 encoder: " + "; ".join(problems) + ("" if not hints else " (" + "; ".join(hints) + ")")
        )
    merged = dict(expected)
    loaded = 0
    for key in expected:
        if key in state:
            merged[key] = state[key].to(dtype=expected[key].dtype)
            loaded += 1
    encoder.load_state_dict(merged, strict=True)
    return {"loaded": loaded, "ignored": sorted(ignored), "missing": missing, "unexpected": unexpected}

"""The three networks of the method, built from MONAI blocks, and helpers to wire them together.

* :class:`ConvAutoencoder` (CAE, the paper's Figure 1c): trained with L1 on normal sinuses; its
  residual ``|x - CAE(x)|`` marks anomalies coarsely and is the self-supervision target.
* :class:`ResidualUNet`: a U-Net with a 3D ResNet18 encoder, pretrained to reconstruct those
  residuals (one channel of logits, trained with BCE-with-logits against the soft target).
* :class:`SinusClassifier`: the same ResNet18 encoder, global average pooling and an MLP
  512-256-2; its encoder is initialised from a pretrained :class:`ResidualUNet` with
  :func:`load_pretrained_encoder` (or left at random initialisation: "no pretraining").

Both ResNet18 networks share one encoder class, :class:`ResNet18Encoder`, so the encoder's
parameter names and shapes are identical in both and a transplant is a 1:1 copy, checked key by
key (:func:`load_pretrained_encoder` never skips a tensor silently).

:func:`parameter_groups` splits a model's parameters into a weight-decay group (conv and linear
weights) and a no-decay group (every bias and every normalisation weight/bias), as LARS and
AdamW want them.

Tensor layout everywhere: ``(B, C, D, H, W)``; crops are single-channel, intensities in [0, 1].
This module imports only torch and MONAI (never slicer, qt, ctk or vtk).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.utils import get_act_layer
from monai.networks.nets.flexible_unet import SegmentationHead, UNetDecoder
from monai.networks.nets.resnet import ResNet, ResNetFeatures
from torch import nn

from .errors import ModelError

__all__ = [
    "ModelError",
    "ConvAutoencoder",
    "CAEEncoder",
    "CAEDecoder",
    "ResNet18Encoder",
    "ResidualUNet",
    "SinusClassifier",
    "encoder_state_from",
    "load_pretrained_encoder",
    "parameter_groups",
    "count_parameters",
    "NetworkSpec",
]

LEAKY_RELU = ("leakyrelu", {"negative_slope": 0.01})
"""The CAE's activation: LeakyReLU with slope 0.01, as in the authors' code."""


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------------------------
# Convolutional autoencoder
# --------------------------------------------------------------------------------------------


def _check_cae_geometry(in_size: int, channels: Sequence[int]) -> int:
    """Edge length of the deepest CAE feature map; raises :class:`ModelError` if it is not whole."""
    if len(channels) < 1:
        raise ModelError("the autoencoder needs at least one encoder stage (channels is empty)")
    if any(int(c) < 1 for c in channels):
        raise ModelError(f"channel widths must be positive, got {tuple(channels)}")
    factor = 2 ** len(channels)
    if in_size < factor or in_size % factor:
        raise ModelError(
            f"in_size={in_size} must be a positive multiple of {factor} "
            f"(the autoencoder halves the crop {len(channels)} times)"
        )
    return in_size // factor


class CAEEncoder(nn.Module):
    """CAE encoder: ``(B, in_channels, S, S, S)`` -> latent ``(B, latent_dim)``.

    Stages of Conv3d (kernel 5, stride 2, padding 2) + BatchNorm + LeakyReLU(0.01) with widths
    ``channels`` (default 16-32-64: a 64^3 crop becomes 64 x 8^3), then a 1x1x1 conv + BatchNorm
    + LeakyReLU down to ``bottleneck_channels`` (4 x 8^3 = 2048 values), flattened and mapped
    linearly to the latent vector. The latent itself has no activation.

    Args:
        in_size: crop edge ``S`` in voxels; a multiple of ``2 ** len(channels)``.
        in_channels: input channels.
        channels: widths of the strided stages.
        bottleneck_channels: channels of the 1x1x1 reduction before flattening.
        latent_dim: size of the latent vector.
    """

    def __init__(
        self,
        in_size: int = 64,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        bottleneck_channels: int = 4,
        latent_dim: int = 512,
    ) -> None:
        super().__init__()
        deep = _check_cae_geometry(in_size, channels)
        widths = [in_channels, *channels]
        # bias=False: the BatchNorm that follows each conv has its own shift
        self.stages = nn.Sequential(
            *(
                Convolution(3, c_in, c_out, strides=2, kernel_size=5, act=LEAKY_RELU, norm="batch", bias=False)
                for c_in, c_out in zip(widths[:-1], widths[1:])
            )
        )
        self.reduce = Convolution(
            3, widths[-1], bottleneck_channels, kernel_size=1, act=LEAKY_RELU, norm="batch", bias=False
        )
        self.flatten = nn.Flatten(1)
        self.to_latent = nn.Linear(bottleneck_channels * deep**3, latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> ``(B, latent_dim)``."""
        return self.to_latent(self.flatten(self.reduce(self.stages(x))))


class CAEDecoder(nn.Module):
    """CAE decoder: latent ``(B, latent_dim)`` -> reconstruction ``(B, out_channels, S, S, S)``.

    The mirror of :class:`CAEEncoder`: Linear to ``bottleneck_channels x s^3`` (s = S / 2^n),
    reshape, 1x1x1 conv + BatchNorm + LeakyReLU up to ``channels[-1]``; then ``n`` stages of
    trilinear x2 upsampling followed by a Conv3d (kernel 5, stride 1, padding 2). All but the last
    stage have BatchNorm + LeakyReLU and walk the widths back down (default 64-32-16); the last
    stage's conv maps to ``out_channels`` and is followed only by ``out_activation``.

    Output range: with the default ``out_activation="sigmoid"`` the reconstruction lies in (0, 1),
    the range of the inputs, so the L1 loss and the residual ``|x - x'|`` stay in [0, 1] and the
    network cannot overshoot bright or dark voxels. ``out_activation=None`` gives a plain linear
    output (unbounded). BatchNorm + LeakyReLU on the output would be wrong for an image (BatchNorm
    re-centres it), so the last conv has neither.

    Args:
        in_size: crop edge ``S``; a multiple of ``2 ** len(channels)``.
        out_channels: channels of the reconstruction.
        channels: the encoder's stage widths (in encoder order; the decoder reverses them).
        bottleneck_channels: channels of the reshaped linear output.
        latent_dim: size of the latent vector.
        out_activation: MONAI activation name applied to the output (``"sigmoid"``) or None.
    """

    def __init__(
        self,
        in_size: int = 64,
        out_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        bottleneck_channels: int = 4,
        latent_dim: int = 512,
        out_activation: str | tuple | None = "sigmoid",
    ) -> None:
        super().__init__()
        deep = _check_cae_geometry(in_size, channels)
        widths = list(channels)[::-1]
        self.from_latent = nn.Linear(latent_dim, bottleneck_channels * deep**3)
        self.unflatten = nn.Unflatten(1, (bottleneck_channels, deep, deep, deep))
        self.expand = Convolution(
            3, bottleneck_channels, widths[0], kernel_size=1, act=LEAKY_RELU, norm="batch", bias=False
        )
        stages = []
        for i, c_in in enumerate(widths):
            last = i == len(widths) - 1
            conv = (
                Convolution(3, c_in, out_channels, kernel_size=5, conv_only=True, bias=True)
                if last
                else Convolution(3, c_in, widths[i + 1], kernel_size=5, act=LEAKY_RELU, norm="batch", bias=False)
            )
            stages.append(
                UpSample(
                    3,
                    in_channels=c_in,
                    out_channels=c_in,
                    scale_factor=2,
                    mode="nontrainable",
                    pre_conv=None,
                    interp_mode="trilinear",
                    align_corners=False,
                    post_conv=conv,
                )
            )
        self.stages = nn.Sequential(*stages)
        self.out_activation = get_act_layer(out_activation) if out_activation is not None else nn.Identity()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, latent_dim)`` -> ``(B, out_channels, S, S, S)``."""
        x = self.expand(self.unflatten(self.from_latent(z)))
        return self.out_activation(self.stages(x))


class ConvAutoencoder(nn.Module):
    """The CAE of the paper (Figure 1c): ``(B, 1, S, S, S)`` -> reconstruction of the same shape.

    At the defaults (64^3 crops, widths 16-32-64, 4 bottleneck channels, a 512-d latent) it has
    2,744,681 parameters (the authors' model: 2.74 M). ``in_size``, ``channels`` and
    ``latent_dim`` can be reduced for quick demos (e.g. 32^3 crops, widths 8-16-32); ``in_size``
    must be a multiple of ``2 ** len(channels)`` (8 for three stages), and inputs must have exactly
    that size, since the latent is a linear map of the flattened feature map.

    See :class:`CAEEncoder` and :class:`CAEDecoder` for the layers and the output range.
    """

    def __init__(
        self,
        in_size: int = 64,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32, 64),
        bottleneck_channels: int = 4,
        latent_dim: int = 512,
        out_activation: str | tuple | None = "sigmoid",
    ) -> None:
        super().__init__()
        self.in_size = int(in_size)
        self.in_channels = int(in_channels)
        self.latent_dim = int(latent_dim)
        self.encoder = CAEEncoder(in_size, in_channels, channels, bottleneck_channels, latent_dim)
        self.decoder = CAEDecoder(in_size, in_channels, channels, bottleneck_channels, latent_dim, out_activation)

    def _check_input(self, x: torch.Tensor) -> None:
        expected = (self.in_channels, self.in_size, self.in_size, self.in_size)
        if x.dim() != 5 or tuple(x.shape[1:]) != expected:
            raise ModelError(
                f"the autoencoder expects input of shape (B, {', '.join(map(str, expected))}), "
                f"got {tuple(x.shape)}"
            )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> latent ``(B, latent_dim)``."""
        self._check_input(x)
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent ``(B, latent_dim)`` -> reconstruction ``(B, C, S, S, S)``."""
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> reconstruction ``(B, C, S, S, S)``."""
        return self.decode(self.encode(x))


# --------------------------------------------------------------------------------------------
# ResNet18 encoder, U-Net and classifier
# --------------------------------------------------------------------------------------------

SHORTCUT_TYPES = ("A", "B")
RESNET18_WIDTHS = (64, 128, 256, 512)  # the paper's encoder; narrower widths serve CPU demos


class ResNet18Encoder(ResNetFeatures):
    """3D ResNet18 feature extractor: ``(B, C, S, S, S)`` -> five feature maps.

    MONAI's ``ResNetFeatures`` (the encoder of ``FlexibleUNet(backbone="resnet18")``) with a
    choice of shortcut. Stem: Conv3d 7x7x7, stride 2, padding 3, no bias, BatchNorm, ReLU, then
    a 3x3x3 max-pool with stride 2; four stages of two basic blocks with widths 64/128/256/512,
    the last three starting with stride 2. :meth:`forward` (MONAI's) returns, for a 64^3 input::

        [(B, 64, 32^3)  stem, before the max-pool,
         (B, 64, 16^3)  layer1,
         (B, 128, 8^3)  layer2,
         (B, 256, 4^3)  layer3,
         (B, 512, 2^3)  layer4]

    ``shortcut_type`` (how a block that changes width/resolution adds its input):

    * ``"B"`` (default): a 1x1x1 strided conv + BatchNorm projection, as in the standard ResNet18
      (He et al.; Tran et al.'s R3D-18, the paper's reference [28]). 33.2 M parameters.
    * ``"A"``: MONAI's stock ``resnet18`` layout (MedicalNet's): parameter-free average pooling and
      zero-padded channels. Needed only to load MedicalNet weights (the transfer-learning
      baseline). Caveat: MONAI builds this shortcut from ``tensor.data``, so no gradient flows
      through the shortcut of those three blocks, only through their convolutions. 33.0 M
      parameters.

    Nothing is ever downloaded: MONAI's pretrained-weight loading (in ``ResNetFeatures.__init__``)
    is bypassed, and weights come only from :func:`load_pretrained_encoder`.

    Args:
        in_channels: input channels.
        shortcut_type: ``"B"`` or ``"A"``, see above.
    """

    def __init__(self, in_channels: int = 1, shortcut_type: str = "B", widths: Sequence[int] = RESNET18_WIDTHS) -> None:
        if shortcut_type not in SHORTCUT_TYPES:
            raise ModelError(f"shortcut_type must be one of {SHORTCUT_TYPES}, got {shortcut_type!r}")
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ModelError(f"widths needs 4 positive stage widths, got {tuple(widths)}")
        # ResNetFeatures.__init__ would only look up MONAI's preset (shortcut "A") and optionally
        # download weights; the preset is spelled out here with the shortcut as a choice.
        ResNet.__init__(
            self,
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=[int(w) for w in widths],
            spatial_dims=3,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type=shortcut_type,
            feed_forward=False,
            bias_downsample=False,  # the projection is followed by BatchNorm
        )
        self.in_channels = int(in_channels)
        self.shortcut_type = shortcut_type
        # channels of the five feature maps returned by forward: stem, then the four stages
        self.feature_channels = (int(widths[0]), *(int(w) for w in widths))

    @property
    def out_channels(self) -> int:
        """Channels of the deepest feature map (512 at the paper's widths)."""
        return self.feature_channels[-1]


class ResidualUNet(nn.Module):
    """The self-supervised network: ``(B, 1, S, S, S)`` -> logits ``(B, 1, S, S, S)``.

    MONAI's ``FlexibleUNet`` layout (``encoder``, ``decoder``, ``segmentation_head``) around a
    :class:`ResNet18Encoder`: the decoder is MONAI's ``UNetDecoder``, five ``UpCat`` stages, each a
    1x1x1 conv halving the channels, trilinear x2 upsampling, concatenation with the encoder
    feature map of that resolution (skip connection; none at the last stage) and two 3x3x3 conv +
    BatchNorm + ReLU. Widths ``decoder_channels`` (default 256-128-64-32-16, the encoder's widths
    reversed and then on to full resolution); the head is a 3x3x3 conv to ``out_channels``
    logits (no activation: train with ``BCEWithLogitsLoss``). The encoder halves the input five
    times, so every spatial edge must be a multiple of 32 (32, 64, 96, ...); the output then has
    the input's size. Other sizes raise :class:`ModelError` (MONAI can pad an upsampled map by one
    voxel but not crop it, so they would fail inside the decoder).

    The encoder is :attr:`encoder`; its state-dict keys are ``encoder.*``, which is what
    :func:`load_pretrained_encoder` reads.

    Args:
        in_channels: input channels.
        out_channels: output channels (logits).
        decoder_channels: widths of the five decoder stages.
        shortcut_type: the encoder's shortcut, see :class:`ResNet18Encoder`.
    """

    size_multiple = 32
    """Spatial edges of the input must be multiples of this (2 ** number of halvings)."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        decoder_channels: Sequence[int] | None = None,
        shortcut_type: str = "B",
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
    ) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels, shortcut_type, encoder_widths)
        if decoder_channels is None:  # the encoder's widths reversed, then on to full resolution
            w = self.encoder.feature_channels
            decoder_channels = (w[3], w[2], w[1], max(w[1] // 2, 1), max(w[1] // 4, 1))
        n_features = len(self.encoder.feature_channels)
        if len(decoder_channels) != n_features:
            raise ModelError(f"decoder_channels needs {n_features} widths, got {tuple(decoder_channels)}")
        self.decoder = UNetDecoder(
            spatial_dims=3,
            encoder_channels=(in_channels, *self.encoder.feature_channels),
            decoder_channels=tuple(decoder_channels),
            act=("relu", {"inplace": True}),
            norm="batch",
            dropout=0.0,
            bias=False,
            upsample="nontrainable",
            pre_conv="default",
            interp_mode="trilinear",
            align_corners=False,
            is_pad=True,
        )
        self.segmentation_head = SegmentationHead(
            spatial_dims=3, in_channels=decoder_channels[-1], out_channels=out_channels, kernel_size=3, act=None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, D, H, W)`` -> logits ``(B, out_channels, D, H, W)``; edges multiples of 32."""
        if x.dim() != 5 or any(size % self.size_multiple for size in x.shape[2:]):
            raise ModelError(
                f"the U-Net expects input (B, C, D, H, W) with edges that are multiples of "
                f"{self.size_multiple}, got {tuple(x.shape)}"
            )
        features = self.encoder(x)
        return self.segmentation_head(self.decoder(features, len(features) - 1))


class SinusClassifier(nn.Module):
    """The downstream classifier: ``(B, 1, S, S, S)`` -> class logits ``(B, num_classes)``.

    A :class:`ResNet18Encoder` (the same class, parameter names and shapes as
    :attr:`ResidualUNet.encoder`), global average pooling of its last 512-channel feature map,
    and an MLP Linear(512, 256) - ReLU - Linear(256, num_classes). Constructed, it is randomly
    initialised ("no pretraining"); :meth:`load_encoder` transplants pretrained encoder weights.

    Args:
        in_channels: input channels.
        num_classes: number of classes (2: normal, anomalous).
        hidden_dim: width of the MLP's hidden layer.
        shortcut_type: the encoder's shortcut, see :class:`ResNet18Encoder`; must match the
            pretrained network's.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        hidden_dim: int = 256,
        shortcut_type: str = "B",
        encoder_widths: Sequence[int] = RESNET18_WIDTHS,
    ) -> None:
        super().__init__()
        self.encoder = ResNet18Encoder(in_channels, shortcut_type, encoder_widths)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(1))
        self.head = nn.Sequential(
            nn.Linear(self.encoder.out_channels, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_classes),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> pooled encoder features ``(B, 512)``."""
        return self.pool(self.encoder(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S, S)`` -> logits ``(B, num_classes)``."""
        return self.head(self.embed(x))

    def load_encoder(self, state_dict: Mapping[str, torch.Tensor], prefix: str = "encoder.") -> None:
        """Copy pretrained encoder weights in; see :func:`load_pretrained_encoder`."""
        load_pretrained_encoder(self, state_dict, prefix)


# --------------------------------------------------------------------------------------------
# Encoder transplant
# --------------------------------------------------------------------------------------------

_MAX_LISTED = 20


def _listing(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def encoder_state_from(state_dict: Mapping[str, torch.Tensor], prefix: str = "encoder.") -> dict[str, torch.Tensor]:
    """The entries of ``state_dict`` whose key starts with ``prefix``, with the prefix removed.

    For a :class:`ResidualUNet` state dict the prefix is ``"encoder."``; for a checkpoint that
    wraps the network (e.g. a Lightning module holding it as ``model``) it is ``"model.encoder."``;
    for a bare encoder state dict it is ``""``. Raises :class:`ModelError` if no key has the prefix.
    """
    found = {key[len(prefix) :]: value for key, value in state_dict.items() if key.startswith(prefix)}
    if not found:
        sample = _listing(sorted(state_dict)[:5]) if state_dict else "none"
        raise ModelError(f"no weights with the prefix {prefix!r} in the state dict (its first keys: {sample})")
    return found


def load_pretrained_encoder(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], prefix: str = "encoder."
) -> None:
    """Load the encoder part of a pretrained state dict into ``model.encoder``, exactly.

    ``state_dict`` is typically ``ResidualUNet.state_dict()``; its ``prefix`` entries (weights
    and BatchNorm statistics) must match ``model.encoder.state_dict()`` one to one: the same
    keys and the same shapes. Anything else raises :class:`ModelError` naming every missing key,
    unexpected key and shape mismatch, and ``model`` is left unchanged. Entries outside the
    prefix (the U-Net's decoder and head) are ignored on purpose. Nothing is skipped silently.
    """
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ModelError(f"{type(model).__name__} has no 'encoder' to load weights into")
    given = encoder_state_from(state_dict, prefix)
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    mismatched = sorted(
        f"{key} (model {tuple(expected[key].shape)}, given {tuple(given[key].shape)})"
        for key in set(expected) & set(given)
        if tuple(expected[key].shape) != tuple(given[key].shape)
    )
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_listing(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {_listing(mismatched)}")
        raise ModelError(
            f"the pretrained encoder weights (prefix {prefix!r}) do not fit {type(model).__name__}.encoder: "
            + "; ".join(problems)
        )
    encoder.load_state_dict(given, strict=True)


# --------------------------------------------------------------------------------------------
# Optimiser parameter groups
# --------------------------------------------------------------------------------------------

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Optimiser parameter groups: weight decay on conv/linear weights only.

    Returns ``[{"params": [...], "weight_decay": weight_decay, "lars_exclude": False},
    {"params": [...], "weight_decay": 0.0, "lars_exclude": True}]``: the second group holds every
    bias and every weight/bias of a normalisation layer (BatchNorm, InstanceNorm, GroupNorm,
    LayerNorm), which should neither decay nor get LARS's layer-wise adaptation (decaying them,
    as the authors' code did, pulls BatchNorm scales towards 0). ``lars_exclude`` is an extra key
    a LARS implementation can read; other optimisers ignore it. Each trainable parameter appears
    exactly once (shared parameters too); frozen ones (``requires_grad=False``) are left out; an
    empty group is dropped.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            if isinstance(module, _NORM_TYPES) or name == "bias" or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay), "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [group for group in groups if group["params"]]


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NetworkSpec:
    """The shapes of the method's three networks, and the one place that builds them.

    Training stages, bundle loading and export all build networks through it, so no copy can
    forget a setting (the MedicalNet classifier's shortcut type was forgotten in one).

    Attributes:
        cae_crop_size: edge of the cubic crops the CAE sees, in voxels (32 or 64); the U-Net and
            the classifier take any multiple of 32 (global pooling), so only the CAE is built for one.
        encoder_widths: the four ResNet18 stage widths (64-128-256-512 in the paper).
        cae_channels: the CAE encoder's channels per stage.
        cae_latent_dim: the CAE's latent vector length.
        shortcut_type: the classifier encoder's width-changing shortcuts: ``"B"`` 1x1x1
            projections (ours), ``"A"`` parameter-free (MedicalNet's layout).
    """

    cae_crop_size: int
    encoder_widths: tuple[int, ...]
    cae_channels: tuple[int, ...]
    cae_latent_dim: int
    shortcut_type: str = "B"

    def cae(self) -> ConvAutoencoder:
        """The CAE: ``(B, 1, S, S, S)`` -> reconstruction of the same shape."""
        return ConvAutoencoder(in_size=int(self.cae_crop_size), channels=tuple(self.cae_channels), latent_dim=int(self.cae_latent_dim))

    def unet(self) -> ResidualUNet:
        """The residual-reconstruction U-Net: ``(B, 1, S, S, S)`` -> logits of the same shape."""
        return ResidualUNet(encoder_widths=tuple(self.encoder_widths))

    def classifier(self) -> SinusClassifier:
        """The classifier: ``(B, 1, S, S, S)`` -> ``(B, 2)`` logits (normal, anomalous)."""
        return SinusClassifier(encoder_widths=tuple(self.encoder_widths), shortcut_type=self.shortcut_type)

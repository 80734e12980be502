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
``spark``   :class:`SparKPretext`: 3D SparK: sparse masked encoding, per-patch normalised targets.
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

Augmentation is the training policy of every method (:mod:`SinusAnomalyTraining.augment`): AE, DAE
and SparK get batches already augmented (geometry only: their target is their input) from the
pretraining stage's loader; SimCLR, BYOL and SimSiam (:class:`TwoViewPretext`) make two views of
the raw batch with it, plus an intensity scaling.

:func:`load_medicalnet_encoder` (:mod:`.medicalnet`) loads the transfer-learning baseline's weights (MedicalNet's 3D
ResNet18) from a local file into a :class:`ResNet18Encoder`, checked key by key. Nothing in this
module downloads anything.

Modules: :mod:`.base` (the interface, shared blocks, errors),
:mod:`.losses`, :mod:`.reconstruction` (AE, DAE), :mod:`.joint_embedding` (SimCLR, BYOL,
SimSiam), :mod:`.spark`, :mod:`.medicalnet`; the registry :data:`PRETEXT_METHODS` is here.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from SinusAnomalyLib.errors import PretextError, PretrainedWeightsError
from SinusAnomalyLib.models import RESNET18_WIDTHS

from .base import PretextModel
from .joint_embedding import BYOLPretext, SimCLRPretext, SimSiamPretext, TwoViewPretext
from .losses import (byol_momentum, byol_regression_loss, masked_patch_loss, negative_cosine_similarity,
                     normalised_patches, nt_xent_loss)
from .medicalnet import MEDICALNET_HEAD_PREFIXES, load_medicalnet_encoder
from .reconstruction import AutoencoderPretext, DenoisingPretext, ReconstructionDecoder
from .spark import SparKPretext, random_patch_mask, resample_mask

__all__ = [
    "PretextError",
    "PretrainedWeightsError",
    "nt_xent_loss",
    "byol_regression_loss",
    "negative_cosine_similarity",
    "byol_momentum",
    "random_patch_mask",
    "resample_mask",
    "masked_patch_loss",
    "normalised_patches",
    "PretextModel",
    "ReconstructionDecoder",
    "AutoencoderPretext",
    "DenoisingPretext",
    "TwoViewPretext",
    "SimCLRPretext",
    "BYOLPretext",
    "SimSiamPretext",
    "SparKPretext",
    "PRETEXT_METHODS",
    "build_pretext",
    "MEDICALNET_HEAD_PREFIXES",
    "load_medicalnet_encoder",
]

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

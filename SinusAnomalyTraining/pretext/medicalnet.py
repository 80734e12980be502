"""MedicalNet weights for the transfer-learning baseline: a local file, checked key by key (nothing is downloaded)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from SinusAnomalyLib.errors import PretrainedWeightsError
from SinusAnomalyLib.models import ResNet18Encoder


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

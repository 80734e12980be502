"""Model bundles: one self-describing file holding everything ``classify`` needs.

A bundle (``*.sabundle``) is a zip archive of

* ``bundle.json`` — format marker and version, crop geometry and intensity normalisation, the
  reference head's checksum, the decision threshold chosen on validation, the evaluation
  metrics, a training data summary, library versions, and the SHA-256 of every other member;
* ``cae.npz`` — the state dict of the CAE that draws the residual heat map, and
  ``classifier_fold<k>.npz`` — each fold's fine-tuned classifier (the prediction is their
  ensemble), as plain numpy arrays.

One CAE, not one per fold: it only draws the heat map, and a CAE pass at 64^3 costs about as
much as a classifier pass, which an ensemble of heat maps would pay on every scan.

Loading reads arrays with ``numpy.load(allow_pickle=False)``: nothing is ever unpickled, so a
bundle cannot run code. A file that is not a bundle, is truncated or corrupt (zip CRC or member
checksum), needs a newer version of this library, or was made with another reference head is
refused with a message naming the file. Bundles live in a per-user models folder
(``$SINUS_ANOMALY_MODELS``, default ``~/.sinus-anomaly/models``) or anywhere, given by path.
"""
from __future__ import annotations

import copy
import hashlib
import io
import json
import platform
import zipfile
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .errors import BundleError
from .fileio import atomic_path
from .models import ConvAutoencoder, SinusClassifier
from .modelstore import resolve_bundle

BUNDLE_FORMAT = "sinus-anomaly-bundle"
BUNDLE_VERSION = 2  # 1: one CAE per fold (development versions before 0.2)
MANIFEST = "bundle.json"
CAE_MEMBER = "cae.npz"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _state_to_npz(state: dict) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{key: value.detach().cpu().numpy() for key, value in state.items()})
    return buf.getvalue()


def _npz_to_state(data: bytes) -> dict:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:  # each array is read into fresh memory
        return {key: torch.from_numpy(arrays[key]) for key in arrays.files}


def library_versions() -> dict:
    import monai  # noqa: PLC0415
    import SimpleITK  # noqa: PLC0415

    return {"sinus_anomaly": __version__, "torch": str(torch.__version__), "monai": str(monai.__version__),
            "simpleitk": str(SimpleITK.Version_VersionString()), "python": platform.python_version()}


def write_bundle(path: str | Path, meta: dict, cae_state: dict, classifier_states: list[dict]) -> Path:
    """Write a bundle atomically. ``meta`` holds everything but the format fields and checksums."""
    if not classifier_states:
        raise ValueError("a bundle needs one classifier per fold, at least one")
    members = {CAE_MEMBER: _state_to_npz(cae_state)}
    for k, classifier in enumerate(classifier_states):
        members[f"classifier_fold{k}.npz"] = _state_to_npz(classifier)
    manifest = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "n_folds": len(classifier_states),
        "versions": library_versions(),
        "members": {name: _sha256(data) for name, data in members.items()},
    }
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w") as archive:
            archive.writestr(MANIFEST, json.dumps(manifest, indent=2), compress_type=zipfile.ZIP_DEFLATED)
            for name, data in members.items():  # float weights barely compress; stored, they load faster
                archive.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return path


@dataclass
class ModelBundle:
    """A loaded bundle: its metadata, the heat-map CAE and every fold's classifier (eval mode)."""

    path: Path
    meta: dict
    cae: torch.nn.Module
    classifiers: list

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def model_crop_size(self) -> int:
        return int(self.meta["crop"]["model_crop_size"])

    def to(self, device: torch.device) -> "ModelBundle":
        for model in (self.cae, *self.classifiers):
            model.to(device)
        return self


def _build(kind: str, meta: dict) -> torch.nn.Module:
    models = meta["models"]
    if kind == "cae":
        cfg = models["cae"]
        return ConvAutoencoder(in_size=int(meta["crop"]["model_crop_size"]), channels=tuple(cfg["channels"]),
                               latent_dim=int(cfg["latent_dim"]))
    return SinusClassifier(encoder_widths=tuple(models["encoder_widths"]))


def load_bundle(path: str | Path, expected_reference_sha256: str | None = None) -> ModelBundle:
    """Read and check a bundle; see the module docstring for what is refused."""
    path = resolve_bundle(path)
    if path.is_dir():
        raise BundleError(path, "is a folder; a model bundle is a single .sabundle file")
    if not zipfile.is_zipfile(path):
        raise BundleError(path, "is not a SinusAnomaly model bundle (not a zip archive, or truncated)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if MANIFEST not in names:
                raise BundleError(path, f"is not a SinusAnomaly model bundle (no {MANIFEST} inside)")
            try:
                meta = json.loads(archive.read(MANIFEST))
            except json.JSONDecodeError as exc:
                raise BundleError(path, f"has an unreadable {MANIFEST} ({exc})") from exc
            if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
                raise BundleError(path, f"is not a SinusAnomaly model bundle ({MANIFEST} has no '{BUNDLE_FORMAT}' marker)")
            version = meta.get("format_version")
            if not isinstance(version, int) or version > BUNDLE_VERSION:
                raise BundleError(path, f"needs a newer SinusAnomaly: bundle format {version}, this version "
                                        f"({__version__}) reads up to {BUNDLE_VERSION}")
            if version < BUNDLE_VERSION:
                raise BundleError(path, f"has the old bundle format {version} of a development version; "
                                        "export it again from its run folder with 'sinus-anomaly export'")
            members = meta.get("members") or {}
            data = {}
            for name, digest in members.items():
                if name not in names:
                    raise BundleError(path, f"is incomplete: member {name} is missing")
                blob = archive.read(name)
                if _sha256(blob) != digest:
                    raise BundleError(path, f"is corrupt: checksum of {name} does not match")
                data[name] = blob
    except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
        raise BundleError(path, f"is corrupt or truncated ({exc})") from exc
    reference = meta.get("reference_sha256")
    if expected_reference_sha256 is not None and reference != expected_reference_sha256:
        raise BundleError(path, "was made with a different reference head than this installation's; "
                                "its crops would not match (retrain or update SinusAnomaly)")
    # Random initialisation of a full-width 3D ResNet takes about 0.4 s on two cores; build each
    # network once and give further folds a copy whose tensors the loaded ones then replace.
    templates = {}

    def load_member(name: str, kind: str) -> torch.nn.Module:
        if name not in data:
            raise BundleError(path, f"is incomplete: member {name} is missing")
        try:
            state = _npz_to_state(data.pop(name))
        except (ValueError, OSError, zipfile.BadZipFile) as exc:  # object arrays need pickle: refused
            raise BundleError(path, f"{name} is not a plain array archive ({exc})") from exc
        try:
            model = copy.deepcopy(templates[kind]) if kind in templates else templates.setdefault(kind, _build(kind, meta))
            model.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(path, f"{name} does not fit the network described in {MANIFEST}: {exc}") from exc
        return model.eval()

    cae = load_member(CAE_MEMBER, "cae")
    classifiers = [load_member(f"classifier_fold{k}.npz", "classifier") for k in range(int(meta.get("n_folds", 0)))]
    if not classifiers:
        raise BundleError(path, "holds no classifier")
    return ModelBundle(path=path, meta=meta, cae=cae, classifiers=classifiers)



def build_untrained_bundle(path: str | Path, model_crop_size: int = 32, encoder_widths=(8, 16, 32, 64),
                           cae_channels=(8, 16, 32), latent_dim: int = 64, folds: int = 1) -> Path:
    """A bundle of RANDOMLY initialised networks: for tests, self-tests and timing, never for use.

    Speed does not depend on the weights, and every file format, check and overlay can be
    exercised without training. Its name and ``intended_use`` say what it is.
    """
    from .reference import load_reference  # noqa: PLC0415

    cae = {"channels": list(cae_channels), "latent_dim": int(latent_dim)}
    meta = {"name": f"untrained-{Path(path).stem}", "method": "untrained", "fraction": 0, "threshold": 0.5,
            "residual_threshold": 0.5,
            "crop": {"size_voxels": 64, "spacing_mm": 1.0, "model_crop_size": int(model_crop_size)},
            "residuals": {"median_kernel": 3, "percentiles": [1, 99]},
            "models": {"cae": cae, "encoder_widths": list(encoder_widths)},
            "reference_sha256": load_reference().sha256,
            "intended_use": "RANDOM WEIGHTS: tests and timing only; its predictions mean nothing"}
    cae_state = ConvAutoencoder(in_size=int(model_crop_size), channels=tuple(cae_channels), latent_dim=int(latent_dim)).state_dict()
    classifiers = [SinusClassifier(encoder_widths=tuple(encoder_widths)).state_dict() for _ in range(folds)]
    return write_bundle(path, meta, cae_state, classifiers)

"""Model bundles as networks: exporting trained state dicts, and loading a bundle's networks.

The file format, and every check made when reading one, is in :mod:`SinusAnomalyLib.bundlefile`
(no torch needed there).
"""
from __future__ import annotations

import copy
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bundlefile import BundleFile, read_bundle_file, write_bundle_file
from .errors import BundleError
from .heatmap import normal_scale_of, ood_range_of
from .models import NetworkSpec

__all__ = ["BundleError", "ModelBundle", "build_untrained_bundle", "load_bundle", "write_bundle"]


def library_versions() -> dict:
    import monai  # noqa: PLC0415
    import SimpleITK  # noqa: PLC0415

    return {"sinus_anomaly": __version__, "torch": str(torch.__version__), "monai": str(monai.__version__),
            "simpleitk": str(SimpleITK.Version_VersionString()), "python": platform.python_version()}


def _arrays(state: dict) -> dict:
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def write_bundle(path: str | Path, meta: dict, cae_state: dict, classifier_states: list[dict], half_weights: bool) -> Path:
    """Write a bundle atomically from state dicts; see :func:`bundlefile.write_bundle_file`."""
    return write_bundle_file(path, {**meta, "versions": library_versions()}, _arrays(cae_state),
                             [_arrays(state) for state in classifier_states], half_weights)


@dataclass
class ModelBundle:
    """A loaded bundle: its metadata, the heat-map CAE and every fold's classifier (eval mode)."""

    path: Path
    meta: dict
    cae: torch.nn.Module
    classifiers: list
    fingerprint: str = ""  # SHA-256 of bundle.json, covering every member (see bundlefile)

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])

    @property
    def model_crop_size(self) -> int:
        """Voxels per edge of the classifiers' input."""
        return int(self.meta["crop"]["model_crop_size"])

    @property
    def cae_crop_size(self) -> int:
        """Voxels per edge of the CAE's input (the heat map's grid): :func:`cae_crop_size`."""
        return cae_crop_size(self.meta)

    def to(self, device: torch.device) -> "ModelBundle":
        for model in (self.cae, *self.classifiers):
            model.to(device)
        return self


def cae_crop_size(meta: dict) -> int:
    """The CAE's input size a ``bundle.json`` gives (``models.cae.crop_size``); a bundle without it (exported
    before the CAE could see coarser crops than the classifiers) has one size for both: ``crop.model_crop_size``."""
    return int(meta["models"]["cae"].get("crop_size", meta["crop"]["model_crop_size"]))


def network_spec(meta: dict) -> NetworkSpec:
    """The networks a ``bundle.json`` describes. A bundle without ``models.shortcut_type`` (exported
    before it was recorded) has projection shortcuts ("B"): export could not bundle any other then."""
    models = meta["models"]
    return NetworkSpec(cae_crop_size=cae_crop_size(meta), encoder_widths=tuple(models["encoder_widths"]),
                       cae_channels=tuple(models["cae"]["channels"]), cae_latent_dim=int(models["cae"]["latent_dim"]),
                       shortcut_type=str(models.get("shortcut_type", "B")))


def _build(kind: str, meta: dict) -> torch.nn.Module:
    spec = network_spec(meta)
    return spec.cae() if kind == "cae" else spec.classifier()


def load_bundle(bundle: str | Path | BundleFile, expected_reference_sha256: str | None = None) -> ModelBundle:
    """The networks of a bundle (a path, or a :class:`BundleFile` already read and checked)."""
    if not isinstance(bundle, BundleFile):
        bundle = read_bundle_file(bundle, expected_reference_sha256)
    meta = bundle.meta
    # Random initialisation of a full-width 3D ResNet takes about 0.4 s on two cores; build each
    # network once and give further folds a copy whose tensors the loaded ones then replace.
    templates = {}

    def networks(kind: str, name: str, arrays: dict) -> torch.nn.Module:
        state = {key: torch.from_numpy(value).float() if value.dtype == np.float16 else torch.from_numpy(value)
                 for key, value in arrays.items()}
        try:
            model = copy.deepcopy(templates[kind]) if kind in templates else templates.setdefault(kind, _build(kind, meta))
            model.load_state_dict(state, strict=True, assign=True)
        except (RuntimeError, ValueError, KeyError, TypeError) as exc:
            raise BundleError(bundle.path, f"{name} does not fit the network described in its bundle.json: {exc}") from exc
        return model.eval()

    normal_scale_of(meta, bundle.path), ood_range_of(meta, bundle.path)  # a malformed block fails here, not per scan
    cae = networks("cae", "cae.npz", bundle.cae)
    classifiers = [networks("classifier", f"classifier_fold{k}.npz", arrays) for k, arrays in enumerate(bundle.classifiers)]
    return ModelBundle(path=bundle.path, meta=meta, cae=cae, classifiers=classifiers, fingerprint=bundle.fingerprint)


def build_untrained_bundle(path: str | Path, model_crop_size: int = 32, encoder_widths=(8, 16, 32, 64),
                           cae_channels=(8, 16, 32), latent_dim: int = 64, folds: int = 1,
                           cae_crop_size: int | None = None) -> Path:
    """A bundle of RANDOMLY initialised networks: for tests, self-tests and timing, never for use.

    Speed does not depend on the weights, and every file format, check and overlay can be
    exercised without training. Its name and ``intended_use`` say what it is.
    """
    from .reference import load_reference  # noqa: PLC0415

    cae = {"channels": list(cae_channels), "latent_dim": int(latent_dim)}
    if cae_crop_size is not None:
        cae["crop_size"] = int(cae_crop_size)
    meta = {"name": f"untrained-{Path(path).stem}", "method": "untrained", "fraction": 0, "threshold": 0.5,
            "residual_threshold": 0.5,
            "crop": {"size_voxels": 64, "spacing_mm": 1.0, "model_crop_size": int(model_crop_size)},
            "residuals": {"median_kernel": 3, "percentiles": [1, 99]},
            "models": {"cae": cae, "encoder_widths": list(encoder_widths)},
            "reference_sha256": load_reference().sha256,
            "intended_use": "RANDOM WEIGHTS: tests and timing only; its predictions mean nothing"}
    spec = network_spec(meta)
    cae_state = spec.cae().state_dict()
    classifiers = [spec.classifier().state_dict() for _ in range(folds)]
    meta["weights_storage"] = {"half_weights": True, "max_probability_change": None}
    return write_bundle(path, meta, cae_state, classifiers, half_weights=True)

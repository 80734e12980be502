"""Cohort writing: the heads of a cohort written as images, lesion masks, labels.csv, truth.json,
previews and the unlabelled heads' lists, resumable, in a folder claimed for one seed and settings."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import DatasetError, SinusAnomalyError
from ..fileio import write_csv_atomic, write_json_atomic
from ..imageio import write_image
from ..reference import SIDES, load_reference
from .case import make_case
from .common import SynthParams
from .preview import save_preview


def _suffix(index: int) -> str:
    """Mostly NIfTI; some NRRD and MetaImage so every reader gets exercised."""
    if index % 7 == 3:
        return ".nrrd"
    if index % 11 == 5:
        return ".mha"
    return ".nii.gz"


def _claim_folder(settings_path: Path, seed: int, params: SynthParams) -> None:
    """Record the cohort's seed and parameters, or refuse a folder made with other ones."""
    wanted = json.loads(json.dumps({"seed": seed, "params": asdict(params)}))  # tuples as JSON lists
    if settings_path.is_file():
        made = json.loads(settings_path.read_text(encoding="utf-8"))
        # a knob the folder's record lacks was added since: that folder was made with its default
        made_params = json.loads(json.dumps(asdict(SynthParams()))) | (made.get("params") or {})
        differing = [f"seed {made.get('seed')}"] if made.get("seed") != seed else []
        differing += [f"{name} {value}" for name, value in made_params.items() if wanted["params"].get(name) != value]
        if differing:
            raise DatasetError(
                f"{settings_path.parent} holds a synthetic cohort made with other settings ({', '.join(differing)}); "
                "use a new output folder, or the same seed and options to resume it")
        return
    write_json_atomic(settings_path, wanted)


UNLABELLED_PREFIX = "synth-u"  # unlabelled heads: synth-u0000, ...; labelled ones are synth-0000, ...
UNLABELLED_STREAM = 1  # an unlabelled head's seed is [seed, index, 1]: a random stream apart from the labelled heads'


def generate_cohort(out_dir: str | Path, n_cases: int, seed: int, params: SynthParams = SynthParams(), progress: bool = True,
                    previews: int = 4, n_unlabelled: int = 0) -> Path:
    """Write a cohort of ``n_cases`` heads (see docs/synthetic-cohort.md: images/, masks/, labels.csv, truth.json, previews/).

    With ``n_unlabelled``, also that many heads of the same kind (same lesion mix) whose labels are
    withheld: ``synth-u0000``, ... in images/ and masks/, listed in ``unlabelled.csv``
    (``patient,image``), never in ``labels.csv``; their truth goes to ``unlabelled_truth.json``
    (for checking only). They draw from random streams of their own, so the labelled heads are the
    same with or without them.

    Resumable: a case whose image, mask and truth entry exist is not made again (``truth.json`` is
    rewritten atomically after every case, ``labels.csv`` at the end); resuming with another seed
    or other settings is refused rather than mixing two cohorts. ``synth.json`` records the seed
    and parameters before the first case, so resuming with other settings (which would mix heads
    of two cohorts) raises :class:`DatasetError`.
    """
    if n_cases < 1:
        raise SinusAnomalyError(f"--cases must be at least 1 (got {n_cases})")
    if n_unlabelled < 0:
        raise SinusAnomalyError(f"--unlabelled must be at least 0 (got {n_unlabelled})")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    _claim_folder(out_dir / "synth.json", seed, params)
    truth = _write_heads(out_dir, out_dir / "truth.json", "synth-", n_cases, lambda index: [seed, index], params,
                         "synthetic heads", progress, previews)
    unlabelled = _write_heads(out_dir, out_dir / "unlabelled_truth.json", UNLABELLED_PREFIX, n_unlabelled,
                              lambda index: [seed, index, UNLABELLED_STREAM], params, "unlabelled heads", progress) if n_unlabelled else {}
    write_json_atomic(out_dir / "synth.json", {"seed": seed, "cases": n_cases, "params": asdict(params),
                                               **({"unlabelled": n_unlabelled} if n_unlabelled else {})})
    rows = [[patient, side, int(entry[side]["anomaly"] is not None), entry[side]["anomaly"] or "normal", Path(entry["image"]).name]
            for patient, entry in truth.items() for side in SIDES]
    write_csv_atomic(out_dir / "labels.csv", ["patient", "side", "label", "anomaly_type", "image"], rows)
    if n_unlabelled:
        write_csv_atomic(out_dir / "unlabelled.csv", ["patient", "image"],
                         [[patient, Path(entry["image"]).name] for patient, entry in unlabelled.items()])
    return out_dir


def stored_as_integers(image: sitk.Image) -> sitk.Image:
    """``image`` rounded to int16, as scanners store MRI: a third of float32's file, written three
    times as fast (a float's noisy low bits do not compress)."""
    array = sitk.GetArrayViewFromImage(image)
    if array.max() > np.iinfo(np.int16).max or array.min() < np.iinfo(np.int16).min:
        raise SinusAnomalyError(f"intensities {array.min():.0f}..{array.max():.0f} do not fit in int16")
    return sitk.Cast(sitk.Round(image), sitk.sitkInt16)


def _write_heads(out_dir: Path, truth_path: Path, prefix: str, n: int, seed_of, params: SynthParams, desc: str,
                 progress: bool, previews: int = 0) -> dict:
    """Make the heads ``<prefix>0000`` ... of ``n`` (those already made are kept), recording each in
    ``truth_path`` as it is written; ``seed_of(index)`` seeds head ``index``. Returns the truth of
    the ``n`` heads, sorted by patient. Previews of up to ``previews`` anomalous heads in total."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    truth = json.loads(truth_path.read_text(encoding="utf-8")) if truth_path.is_file() else {}
    reference = load_reference()
    shown = sum(1 for p in (out_dir / "previews").glob("*.png")) if (out_dir / "previews").is_dir() else 0
    for index in tqdm(range(n), desc=desc, unit="head", disable=not progress):
        patient = f"{prefix}{index:04d}"
        image_name = f"{patient}{_suffix(index)}"
        mask_name = f"{patient}_lesions.nii.gz"
        if patient in truth and (out_dir / "images" / image_name).is_file() and (out_dir / "masks" / mask_name).is_file():
            continue
        case = make_case(patient, np.random.default_rng(seed_of(index)), params, reference=reference)
        write_image(stored_as_integers(case.image), out_dir / "images" / image_name)
        write_image(case.lesion_labels, out_dir / "masks" / mask_name)
        truth[patient] = {
            "image": f"images/{image_name}",
            "lesion_mask": f"masks/{mask_name}",
            **{side: {"center_ras_mm": [round(float(v), 3) for v in case.centers_ras[side]], "anomaly": case.anomalies[side],
                      **({"lesion": case.lesion_sizes[side]} if side in case.lesion_sizes else {})}
               for side in SIDES},
            "pose": case.pose,
        }
        write_json_atomic(truth_path, {k: truth[k] for k in sorted(truth)})
        if shown < previews and any(case.anomalies.values()):
            save_preview(case, out_dir / "previews" / f"{patient}.png")
            shown += 1
    truth = {k: v for k, v in sorted(truth.items()) if int(k[len(prefix):]) < n}
    write_json_atomic(truth_path, truth)
    return truth

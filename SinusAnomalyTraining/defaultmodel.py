"""The shipped default model: its synthetic training heads and its recipe (issue 24).

The recipe, in order (``sinus-anomaly train-default``; docs/default-model.md):

1. **Pools**: per real anatomy of ``Resources/Anatomies`` a synthetic cohort of its own seed
   (:data:`POOL_VARIETY`: T1/T2/FLAIR-like contrasts, sinus size and shape, bony walls, septa,
   every lesion kind at the literature's sizes), labelled heads plus an unlabelled set; and a focal
   pool of the same variety whose anomalous sinuses are all polyps or retention cysts.
2. **One images folder**: the pools' heads linked into ``images/`` as ``<anatomy>-<patient>`` (a
   focal pool's as ``<anatomy>-focal-<patient>``), with one labels table and one unlabelled list,
   so one ``prepare`` extracts them all once.
3. **prepare** (patient-level folds, a small in-distribution test set), **run** with
   ``configs/default.json``, **export** of the chosen method at 100 % labels with its provenance.

The leave-one-anatomy-out check (``benchmarks/loao.py``) builds the same pools and trains the same
recipe on all anatomies but one, so what it measures is what ships.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from concurrent.futures import FIRST_EXCEPTION, wait
from dataclasses import dataclass, replace
from pathlib import Path

from SinusAnomalyLib.errors import DatasetError
from SinusAnomalyLib.fileio import write_csv_atomic
from SinusAnomalyLib.reference import ANATOMIES, SIDES
from SinusAnomalyLib.synth import ANOMALY_TYPES, SynthParams, generate_cohort
from SinusAnomalyLib.workers import check_workers, process_pool

CONFIG = Path(__file__).resolve().parent / "configs" / "default.json"
# The recipe's patient-level split of its training heads: folds (the config's "folds" picks which are
# trained; the bundle averages them) and a small in-distribution test set for bundle.json's metrics.
RECIPE_FOLDS = 2
RECIPE_TEST_FRACTION = 0.15
# The exported classifiers' pretraining, chosen on the leave-one-anatomy-out check (docs/default-model.md):
# without pretraining they ranked held-out anatomies as well or better than with residual pretraining
# (AUROC 0.81 vs 0.78 over 4 anatomies x 3 seeds), so the shipped bundle has none.
METHOD = "none"
# sinus scale from 0.6 (not 0.7): smaller sinuses among the normals, so that less air in view is not read as
# anomalous (leave-one-anatomy-out specificity 0.76 against 0.67 at 240 heads; docs/default-model.md)
POOL_VARIETY = dict(contrasts=("t1", "t2", "flair"), sinus_scale_range=(0.6, 1.3), sinus_shape_mm=3.0,
                    wall_thickness_mm=(0.0, 2.5), septum_rate=0.2, floor_first_thickening=True,
                    anomaly_types=ANOMALY_TYPES)
POOL_SEED = 101  # anatomy k of ANATOMIES: seed POOL_SEED + k (heads of different anatomies never share draws)
FOCAL_KINDS = ("polyp", "retention_cyst")
FOCAL_TRAIN_POOL_SEED = 301  # anatomy k's focal pool: seed FOCAL_TRAIN_POOL_SEED + k
FOCAL_POOL_TAG = "focal"  # make_pools names anatomy k's focal pool "<anatomy>-focal"
INTENDED_USE = ("research and trying the workflow; trained on synthetic heads only; NOT a medical device, "
                "not for diagnosis or any clinical decision")


@dataclass(frozen=True)
class PoolSizes:
    # heads per anatomy with labels: each doubling ranked held-out anatomies better (48 -> 120 -> 240: AUROC +0.04,
    # +0.03; polyps +0.07, +0.07; cysts +0.04, +0.07, paired over 4 anatomies x 3 seeds; docs/default-model.md);
    # pools and extraction in worker processes keep 240 within the recipe's 60 minutes on 2 cores
    labelled: int = 240
    unlabelled: int = 16  # heads per anatomy for pretraining
    focal: int = 0  # labelled heads per anatomy from its focal pool (anomalous sinuses: polyps and retention cysts)


def pool_params(anatomy: str) -> SynthParams:
    return SynthParams(anatomies=(anatomy,), **POOL_VARIETY)


def focal_pool_params(anatomy: str) -> SynthParams:
    """A pool's variety with every anomalous sinus a polyp or a retention cyst."""
    return replace(pool_params(anatomy), anomaly_types=FOCAL_KINDS)


def make_pools(work: Path, sizes: PoolSizes = PoolSizes(), anatomies=ANATOMIES, progress: bool = True,
               workers: int = 1) -> dict[str, Path]:
    """One synthetic cohort per anatomy under ``work/pools/<anatomy>`` (resumable), and with ``sizes.focal``
    its focal pool under ``work/focal-train-pools/<anatomy>`` (named ``<anatomy>-focal``); name -> folder.
    A pool's first N heads are the same whatever its size. ``workers``: see :func:`make_cohorts`."""
    if sizes.focal < 0:
        raise DatasetError(f"focal heads per anatomy (--focal-heads) must be at least 0 (got {sizes.focal})")
    jobs = {anatomy: dict(out_dir=work / "pools" / anatomy, n_cases=sizes.labelled, seed=POOL_SEED + ANATOMIES.index(anatomy),
                          params=pool_params(anatomy), previews=0, n_unlabelled=sizes.unlabelled) for anatomy in anatomies}
    if sizes.focal:
        jobs |= {f"{anatomy}-{FOCAL_POOL_TAG}": dict(out_dir=work / "focal-train-pools" / anatomy, n_cases=sizes.focal,
                                                     seed=FOCAL_TRAIN_POOL_SEED + ANATOMIES.index(anatomy),
                                                     params=focal_pool_params(anatomy), previews=0) for anatomy in anatomies}
    return make_cohorts(jobs, progress, workers)


def make_cohorts(jobs: dict[str, dict], progress: bool = True, workers: int = 1) -> dict[str, Path]:
    """:func:`generate_cohort` for each ``name -> keyword arguments``; name -> folder. With ``workers``
    above 1, that many processes make the cohorts side by side, one each at a time (a head is made on
    one core; the cohorts are the same whatever the number of workers)."""
    check_workers(workers)
    if workers == 1 or len(jobs) <= 1:
        return {name: generate_cohort(**job, progress=progress) for name, job in jobs.items()}
    from tqdm.auto import tqdm  # noqa: PLC0415

    total = sum(job["n_cases"] + job.get("n_unlabelled", 0) for job in jobs.values())
    with process_pool(min(workers, len(jobs))) as pool, \
            tqdm(total=total, desc="synthetic heads", unit="head", disable=not progress) as bar:
        futures = {name: pool.submit(generate_cohort, **job, progress=False) for name, job in jobs.items()}
        pending = set(futures.values())
        while pending:
            done, pending = wait(pending, timeout=5.0, return_when=FIRST_EXCEPTION)
            for future in done:
                future.result()  # a pool's error stops them all
            bar.update(min(total, sum(_heads_written(job["out_dir"]) for job in jobs.values())) - bar.n)
        return {name: future.result() for name, future in futures.items()}


def _heads_written(pool: Path) -> int:
    """Heads whose image a pool being made holds so far (for progress only)."""
    images = pool / "images"
    return sum(1 for f in images.iterdir() if ".partial" not in f.name) if images.is_dir() else 0


def patient_name(anatomy: str, patient: str) -> str:
    """``<anatomy>-<patient>``: unique across pools, and :func:`anatomy_of` reads the anatomy back."""
    if "-" in anatomy:
        raise ValueError(f"an anatomy name with '-' cannot be read back from a patient name: {anatomy}")
    return f"{anatomy}-{patient}"


def anatomy_of(name: str) -> str:
    """The anatomy of a patient named by :func:`patient_name` (anatomy names hold no '-')."""
    return name.split("-", 1)[0]


def read_table(path: Path) -> list[dict]:
    """The rows of a CSV table this module (or synth) wrote."""
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def pool_patients(labels_csv: Path, unlabelled_csv: Path) -> set[str]:
    """Every patient of a labels table and an unlabelled list (whose scan caches can be shared)."""
    return {row["patient"] for path in (labels_csv, unlabelled_csv) for row in read_table(path)}


def link_image(target: Path, link: Path) -> None:
    """A relative symbolic link, or a copy where links are not allowed (some Windows setups). A link
    that is there already is kept, also one another process (a split trained beside) made meanwhile."""
    if link.is_symlink() or link.exists():
        return
    try:
        link.symlink_to(os.path.relpath(target, link.parent))
    except FileExistsError:
        return
    except OSError:
        shutil.copyfile(target, link)


def combine_pools(pools: dict[str, Path], out: Path, anatomies=None) -> dict[str, Path]:
    """Link the heads of the pools of ``anatomies`` (default: every pool; :func:`make_pools`' names) into
    ``out/images`` and write ``out/labels.csv``, ``out/unlabelled.csv`` and ``out/sinuses.csv`` (one row per
    labelled sinus: patient, side, anatomy, contrast, anomaly type, lesion size, for per-group metrics).
    Returns the paths by name ("images", "labels", "unlabelled", "sinuses")."""
    names = [name for name in pools if anatomies is None or anatomy_of(name) in set(anatomies)]
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    labels, unlabelled, sinuses = [], [], []
    for pool_name in names:
        pool, (anatomy, _, tag) = pools[pool_name], pool_name.partition("-")
        truth = json.loads((pool / "truth.json").read_text(encoding="utf-8"))
        for patient, entry in truth.items():
            name = patient_name(anatomy, f"{tag}-{patient}" if tag else patient)
            image = images / f"{name}{Path(entry['image']).name[len(patient):]}"
            link_image(pool / entry["image"], image)
            for side in SIDES:
                kind = entry[side]["anomaly"]
                labels.append([name, side, int(kind is not None), kind or "normal", image.name])
                lesion = entry[side].get("lesion") or {}
                sinuses.append([name, side, anatomy, entry["pose"]["contrast"], kind or "normal",
                                lesion.get("size_mm", ""), lesion.get("volume_ml", "")])
        listed = pool / "unlabelled.csv"
        for row in read_table(listed) if listed.is_file() else []:
            name = patient_name(anatomy, row["patient"])
            image = images / f"{name}{row['image'][len(row['patient']):]}"
            link_image(pool / "images" / row["image"], image)
            unlabelled.append([name, image.name])
    if not labels:
        raise DatasetError(f"no labelled heads in the pools of {', '.join(anatomies or pools)}")
    paths = {"images": images, "labels": out / "labels.csv", "unlabelled": out / "unlabelled.csv", "sinuses": out / "sinuses.csv"}
    write_csv_atomic(paths["labels"], ["patient", "side", "label", "anomaly_type", "image"], labels)
    write_csv_atomic(paths["unlabelled"], ["patient", "image"], unlabelled)
    write_csv_atomic(paths["sinuses"], ["patient", "side", "anatomy", "contrast", "anomaly_type", "lesion_size_mm", "lesion_ml"],
                     sinuses)
    return paths


def link_cached_scans(source_dataset: Path, dataset: Path, patients) -> int:
    """Hard-link (or copy) the scan caches of ``patients`` from a prepared dataset into another, so
    ``prepare`` there finds them extracted (the cache checks the image, so a stale one is redone).
    ``patients`` is names, or a mapping {name in ``dataset``: name in ``source_dataset``} for renamed heads."""
    linked = 0
    names = patients if isinstance(patients, dict) else {patient: patient for patient in patients}
    for patient, source_name in names.items():
        src, dst = source_dataset / "scans" / source_name, dataset / "scans" / patient
        if not src.is_dir() or dst.exists():
            continue
        dst.mkdir(parents=True)
        for item in src.iterdir():
            try:
                os.link(item, dst / item.name)
            except OSError:
                shutil.copyfile(item, dst / item.name)
        linked += 1
    return linked


def source_commit(repo: Path = Path(__file__).resolve().parents[1]) -> str:
    """The git commit the code runs at, with "+changes" when the work tree differs; "unknown" outside git."""
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")

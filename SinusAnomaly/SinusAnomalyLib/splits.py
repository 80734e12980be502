"""Patient-level data splits: a held-out test set, K cross-validation folds, nested label fractions.

Every split is made of *patients*, never of single sinuses, so the two sinuses of one patient are
always on the same side of every split (a model must never be validated on the twin of a sinus it
was trained on).

Stratification. Each patient gets a stratum from its labels: the number of anomalous sinuses
(0, 1 or 2), refined by the sorted anomaly types of those sinuses. Patients are shuffled within
their stratum (seeded), the strata are laid one after the other, and the test set and the folds
are taken from that ordered list by systematic sampling / round-robin dealing. Any run of
consecutive patients in that list, so every stratum, is then spread over the folds with counts
differing by at most one, which keeps the anomaly ratio per fold as close as the cohort allows.
This never fails for rare strata (a stratum with fewer patients than folds simply lands in some
folds) and needs no fallback.

Label fractions. For the self-supervised experiments a classifier is fine-tuned on 10, 20, ...
100 % of each fold's *training sinuses*. Per fold and per label a seeded permutation is drawn once;
fraction ``f`` takes the first ``max(1, round(f * n))`` sinuses of each label, so a smaller
fraction is a subset of every larger one and the normal/anomalous ratio is kept.

``splits.json`` layout::

    {"seed": 0, "n_folds": 5, "test_fraction": 0.2, "fractions": [10, 20, 40, 60, 80, 100],
     "test": [patients],
     "folds": [{"train": [patients], "val": [patients],
                "labelled": {"10": [sample_ids], ..., "100": [sample_ids]}}, ...]}

Fraction keys are percentages written without trailing zeros ("10", "12.5").
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DatasetError
from .fileio import write_json_atomic
from .reference import SIDES

DEFAULT_FRACTIONS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass(frozen=True)
class Sample:
    """One labelled sinus: what the splitting needs to know about it."""

    patient: str
    side: str  # "left" or "right"
    label: int  # 0 normal, 1 anomalous
    anomaly_type: str = "normal"

    @property
    def sample_id(self) -> str:
        return sample_id(self.patient, self.side)


def sample_id(patient: str, side: str) -> str:
    """The identifier of one sinus, ``<patient>_<side>``, used in manifests and splits."""
    return f"{patient}_{side}"


def patient_of_sample(sample: str) -> str:
    """The patient part of a ``<patient>_<side>`` sample id (patients may contain underscores)."""
    patient, _, side = sample.rpartition("_")
    if not patient or side not in SIDES:
        raise DatasetError(f"sample id {sample!r} is not of the form <patient>_left or <patient>_right")
    return patient


def fraction_percent(fraction: float) -> int | float:
    """A label fraction (0.1) as the percentage stored in ``splits.json`` (10; 12.5 stays a float)."""
    percent = round(fraction * 100, 6)
    return int(percent) if float(percent).is_integer() else percent


def fraction_key(fraction: float) -> str:
    """The ``labelled`` key of a label fraction: its percentage without trailing zeros ("10")."""
    return f"{fraction_percent(fraction):g}"


@dataclass
class Fold:
    """One cross-validation fold: training and validation patients, and the labelled subsets."""

    train: list[str]
    val: list[str]
    labelled: dict[str, list[str]] = field(default_factory=dict)  # fraction key -> sample ids


@dataclass
class Splits:
    """The test patients, the folds over the remaining patients, and how they were made."""

    seed: int
    n_folds: int
    test_fraction: float
    fractions: list[float]  # as percentages, ascending (e.g. [10, 20, 40, 60, 80, 100])
    test: list[str]
    folds: list[Fold]

    def to_json(self) -> dict:
        return {
            "seed": self.seed,
            "n_folds": self.n_folds,
            "test_fraction": self.test_fraction,
            "fractions": self.fractions,
            "test": self.test,
            "folds": [{"train": f.train, "val": f.val, "labelled": f.labelled} for f in self.folds],
        }

    def patients(self) -> set[str]:
        """Every patient of the splits (test plus the non-test patients of fold 0)."""
        if not self.folds:
            return set(self.test)
        return set(self.test) | set(self.folds[0].train) | set(self.folds[0].val)


def _round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5))


def group_by_patient(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by patient (patients in sorted order); rejects a sinus listed twice."""
    by_patient: dict[str, list[Sample]] = {}
    seen: set[tuple[str, str]] = set()
    for s in samples:
        if s.side not in SIDES:
            raise DatasetError(f"sample {s.sample_id}: side must be 'left' or 'right', not {s.side!r}")
        if s.label not in (0, 1):
            raise DatasetError(f"sample {s.sample_id}: label must be 0 or 1, not {s.label!r}")
        if (s.patient, s.side) in seen:
            raise DatasetError(f"sample {s.sample_id} is listed more than once")
        seen.add((s.patient, s.side))
        by_patient.setdefault(s.patient, []).append(s)
    return {p: by_patient[p] for p in sorted(by_patient)}


def patient_stratum(samples: Sequence[Sample]) -> tuple:
    """The stratum of one patient: (number of anomalous sinuses, sorted anomaly types of those)."""
    anomalous = sorted(s.anomaly_type for s in samples if s.label == 1)
    return (len(anomalous), tuple(anomalous))


def _stratified_order(by_patient: dict[str, list[Sample]], rng: np.random.Generator) -> list[str]:
    """Patients shuffled within their stratum, strata laid one after the other (sorted)."""
    strata: dict[tuple, list[str]] = {}
    for patient, samples in by_patient.items():
        strata.setdefault(patient_stratum(samples), []).append(patient)
    order: list[str] = []
    for key in sorted(strata):
        members = strata[key]
        order.extend(members[i] for i in rng.permutation(len(members)))
    return order


def _check_parameters(n_patients: int, n_folds: int, test_fraction: float, fractions: Sequence[float]) -> int:
    """Validate the split parameters; return the number of test patients."""
    if n_folds < 2:
        raise DatasetError(f"the number of folds must be at least 2, not {n_folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"the test fraction must be in [0, 1), not {test_fraction}")
    if not fractions:
        raise DatasetError("at least one label fraction is needed")
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise DatasetError(f"label fractions must be above 0 % and at most 100 %, not {fraction_percent(f)} %")
    keys = [fraction_key(f) for f in fractions]
    if len(set(keys)) != len(keys):
        raise DatasetError(f"label fractions are repeated: {', '.join(keys)} %")
    n_test = _round_half_up(test_fraction * n_patients)
    if test_fraction > 0:
        n_test = max(1, n_test)
    if n_patients - n_test < n_folds:
        raise DatasetError(
            f"too few patients for {n_folds} folds: {n_patients} patients, {n_test} held out for testing, "
            f"{n_patients - n_test} left; at least one validation patient per fold is needed "
            "(use fewer folds or a smaller test fraction)"
        )
    return n_test


def labelled_subsets(
    train_samples: Sequence[Sample], fractions: Sequence[float], rng: np.random.Generator
) -> dict[str, list[str]]:
    """Nested, ratio-keeping subsets of the training sinuses for each label fraction.

    One permutation per label; fraction ``f`` takes its first ``max(1, round(f * n))`` sinuses,
    so subsets are nested by construction. Sample ids are returned sorted.
    """
    by_label: dict[int, list[str]] = {}
    for s in sorted(train_samples, key=lambda s: s.sample_id):
        by_label.setdefault(s.label, []).append(s.sample_id)
    permuted = {label: [ids[i] for i in rng.permutation(len(ids))] for label, ids in sorted(by_label.items())}
    subsets = {}
    for f in sorted(fractions):
        chosen: list[str] = []
        for ids in permuted.values():
            chosen.extend(ids[: max(1, _round_half_up(f * len(ids)))])
        subsets[fraction_key(f)] = sorted(chosen)
    return subsets


def make_splits(
    samples: Iterable[Sample],
    n_folds: int = 5,
    test_fraction: float = 0.2,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> Splits:
    """Stratified patient-level test set, folds and nested label fractions (see the module doc).

    Deterministic for a given seed and sample table. Raises :class:`DatasetError` for bad
    parameters or too few patients for the folds.
    """
    by_patient = group_by_patient(samples)
    n_test = _check_parameters(len(by_patient), n_folds, test_fraction, fractions)
    rng = np.random.default_rng(seed)
    order = _stratified_order(by_patient, rng)

    # Systematic sampling over the stratum-ordered list: one test patient per stretch of
    # len(order)/n_test patients, at a random offset inside the stretch.
    n = len(order)
    offset = rng.random()
    test_positions = {min(n - 1, int((j + offset) * n / n_test)) for j in range(n_test)} if n_test else set()
    test = sorted(order[i] for i in test_positions)
    remaining = [p for i, p in enumerate(order) if i not in test_positions]

    # Round-robin dealing from a random first fold, so no fold always gets the extra patients.
    first_fold = int(rng.integers(n_folds))
    val_sets: list[list[str]] = [[] for _ in range(n_folds)]
    for i, patient in enumerate(remaining):
        val_sets[(first_fold + i) % n_folds].append(patient)

    folds = []
    for k, val in enumerate(val_sets):
        val_set = set(val)
        train = sorted(p for p in remaining if p not in val_set)
        train_samples = [s for p in train for s in by_patient[p]]
        fold_rng = np.random.default_rng([seed, k])
        folds.append(Fold(train=train, val=sorted(val), labelled=labelled_subsets(train_samples, fractions, fold_rng)))
    return Splits(
        seed=seed,
        n_folds=n_folds,
        test_fraction=test_fraction,
        fractions=[fraction_percent(f) for f in sorted(fractions)],
        test=test,
        folds=folds,
    )


def save_splits(splits: Splits, path: str | Path) -> None:
    """Write ``splits.json`` atomically."""
    write_json_atomic(path, splits.to_json())


def _string_list(value, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DatasetError(f"{where} must be a list of strings")
    if len(set(value)) != len(value):
        raise DatasetError(f"{where} lists an entry twice")
    return value


def validate_splits(splits: Splits, where: str = "splits") -> None:
    """Raise :class:`DatasetError` unless the splits keep every patient in one place.

    Checked: no patient in two of test/train/val of any fold; validation sets disjoint and, with
    the test set, covering every patient; the same non-test patients in every fold; labelled
    subsets made of training sinuses and nested. (Whether 100 % holds every training sinus needs
    the sample table; :func:`SinusAnomalyLib.dataset.load_dataset` checks that.)
    """
    if len(splits.folds) != splits.n_folds:
        raise DatasetError(f"{where}: n_folds is {splits.n_folds} but {len(splits.folds)} folds are listed")
    test = set(splits.test)
    non_test: set[str] | None = None
    seen_val: dict[str, int] = {}
    fraction_keys = [fraction_key(f / 100) for f in splits.fractions]
    for k, fold in enumerate(splits.folds):
        train, val = set(fold.train), set(fold.val)
        for name, part in (("train", train), ("val", val)):
            overlap = sorted(part & test)
            if overlap:
                raise DatasetError(f"{where}: fold {k} {name} shares patients with the test set: {', '.join(overlap[:5])}")
        overlap = sorted(train & val)
        if overlap:
            raise DatasetError(f"{where}: fold {k} has patients in both train and val: {', '.join(overlap[:5])}")
        if not val:
            raise DatasetError(f"{where}: fold {k} has no validation patients")
        for p in val:
            if p in seen_val:
                raise DatasetError(f"{where}: patient {p} is a validation patient in folds {seen_val[p]} and {k}")
            seen_val[p] = k
        if non_test is None:
            non_test = train | val
        elif train | val != non_test:
            raise DatasetError(f"{where}: fold {k} does not hold the same non-test patients as fold 0")
        if list(fold.labelled) != fraction_keys:
            raise DatasetError(f"{where}: fold {k} labelled fractions {list(fold.labelled)} differ from {fraction_keys}")
        previous: set[str] = set()
        for key, ids in fold.labelled.items():
            chosen = set(ids)
            outside = sorted(i for i in chosen if patient_of_sample(i) not in train)
            if outside:
                raise DatasetError(f"{where}: fold {k} labelled {key} % holds non-training sinuses: {', '.join(outside[:5])}")
            if not previous <= chosen:
                raise DatasetError(f"{where}: fold {k} labelled {key} % is not a superset of the smaller fraction")
            previous = chosen
    if non_test is not None and set(seen_val) != non_test:
        missing = sorted(non_test - set(seen_val))
        raise DatasetError(f"{where}: patients never used for validation: {', '.join(missing[:5])}")


def load_splits(path: str | Path) -> Splits:
    """Read and validate ``splits.json``; raise :class:`DatasetError` naming the file and problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(f"{path}: splits file does not exist (run 'sinus-anomaly prepare')") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path}: splits file cannot be read: {exc}") from exc
    try:
        folds = [
            Fold(
                train=_string_list(f["train"], f"{path}: fold {k} train"),
                val=_string_list(f["val"], f"{path}: fold {k} val"),
                labelled={str(key): _string_list(ids, f"{path}: fold {k} labelled {key}") for key, ids in f["labelled"].items()},
            )
            for k, f in enumerate(data["folds"])
        ]
        splits = Splits(
            seed=int(data["seed"]),
            n_folds=int(data["n_folds"]),
            test_fraction=float(data.get("test_fraction", 0.0)),
            fractions=[fraction_percent(float(f) / 100) for f in data["fractions"]],
            test=_string_list(data["test"], f"{path}: test"),
            folds=folds,
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{path}: not a valid splits file ({type(exc).__name__}: {exc})") from exc
    validate_splits(splits, str(path))
    return splits

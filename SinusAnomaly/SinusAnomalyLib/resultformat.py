"""What a ``classify`` result folder holds: one definition for the writer and every reader.

``SinusAnomalyLib.inference`` writes it; the Slicer module (and any script) reads it. Plain
constants only: importing this needs neither torch nor SimpleITK.

``result.json`` (format :data:`RESULT_FORMAT`, version :data:`RESULT_VERSION`)::

    {"format": "sinus-anomaly-result", "version": 2, "input": "...",
     "model": {"path", "name", "method", "fraction", "created", "fingerprint"},
     "sides": {"left": {...}, "right": {...}},
     "files": {"heatmap": "heatmap.nii.gz", "labelmap": "labelmap.nii.gz"}, "label_map": {...},
     "labels": {"1": "...", "2": "..."}, "registration": {...}, "warnings": [...], "seconds": s}

Per side: ``coverage`` (0-1, the share of the side's sinus cavity that the scan shows, see
``SinusAnomalyLib.extraction``), ``assessable`` (coverage at or above the documented minimum),
``probability``/``spread``/``anomalous_volume_ml`` (``null`` when not assessable), ``verdict``
(one of :data:`VERDICTS`), ``threshold``, ``fold_probabilities``, ``center_ras_mm``,
``crop_affine_ras``, ``crop_file`` (:data:`CROP_FILES`), ``reconstruction_error`` and
``out_of_distribution`` (``null`` when not assessable or the bundle has no training range; see
``SinusAnomalyLib.heatmap``). ``anomalous_volume_ml`` is ``null`` also where the bundle did not
validate the label's volume: ``label_map`` (heat-map scale, label level, ``volume`` "mL" or
"coarse region", a ``note`` saying why, the bundle's test Dice and volume error) says which.
Version 1 (no coverage, no fingerprint, no warnings) is still read; results written before
``label_map`` lack it and always gave a volume.

The folder holds exactly :data:`RESULT_FILES`; it is written whole into a temporary folder and
renamed into place, so a reader never sees a mix of two results.
"""
from __future__ import annotations

RESULT_FORMAT = "sinus-anomaly-result"
RESULT_VERSION = 2
RESULT_FILE = "result.json"
HEATMAP_FILE = "heatmap.nii.gz"
LABELMAP_FILE = "labelmap.nii.gz"

SIDES = ("left", "right")
CROP_FILES = {side: f"{side}_crop.nii.gz" for side in SIDES}
RESULT_FILES = (RESULT_FILE, HEATMAP_FILE, LABELMAP_FILE, *CROP_FILES.values())
LABEL_VALUES = {"left": 1, "right": 2}
LABEL_NAMES = {1: "left maxillary sinus anomaly", 2: "right maxillary sinus anomaly"}

VERDICT_NORMAL = "normal"
VERDICT_ANOMALOUS = "anomalous"
VERDICT_NOT_ASSESSABLE = "not assessable"
VERDICTS = (VERDICT_NORMAL, VERDICT_ANOMALOUS, VERDICT_NOT_ASSESSABLE)

CROP_SIZE = 64  # crops are CROP_SIZE^3 voxels of 1 mm

"""What a ``classify`` result folder holds: one definition for the writer and every reader.

``SinusAnomalyLib.inference`` writes it; the Slicer module (and any script) reads it. Plain
constants only: importing this needs neither torch nor SimpleITK.

``result.json`` (format :data:`RESULT_FORMAT`, version :data:`RESULT_VERSION`)::

    {"format": "sinus-anomaly-result", "version": 2, "input": "...",
     "model": {"path", "name", "method", "fraction", "created", "fingerprint"},
     "sides": {"left": {...}, "right": {...}},
     "files": {"heatmap": "heatmap.nii.gz", "labelmap": "labelmap.nii.gz"},
     "labels": {"1": "...", "2": "..."}, "registration": {...}, "warnings": [...], "seconds": s}

Per side: ``coverage`` (0-1, the share of the side's sinus cavity that the scan shows, see
``SinusAnomalyLib.extraction``), ``assessable`` (coverage at or above the documented minimum),
``probability``/``spread``/``anomalous_volume_ml`` (``null`` when not assessable), ``verdict``
(one of :data:`VERDICTS`), ``threshold``, ``fold_probabilities``, ``center_ras_mm``,
``crop_affine_ras``, ``crop_file``. Version 1 (no coverage, no fingerprint, no warnings) is still
read.
"""
from __future__ import annotations

RESULT_FORMAT = "sinus-anomaly-result"
RESULT_VERSION = 2
RESULT_FILE = "result.json"
HEATMAP_FILE = "heatmap.nii.gz"
LABELMAP_FILE = "labelmap.nii.gz"

SIDES = ("left", "right")
LABEL_VALUES = {"left": 1, "right": 2}
LABEL_NAMES = {1: "left maxillary sinus anomaly", 2: "right maxillary sinus anomaly"}

VERDICT_NORMAL = "normal"
VERDICT_ANOMALOUS = "anomalous"
VERDICT_NOT_ASSESSABLE = "not assessable"
VERDICTS = (VERDICT_NORMAL, VERDICT_ANOMALOUS, VERDICT_NOT_ASSESSABLE)

CROP_SIZE = 64  # crops are CROP_SIZE^3 voxels of 1 mm

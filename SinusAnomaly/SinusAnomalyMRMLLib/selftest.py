"""What the module's self-test (``SinusAnomalyTest``) classifies, and what it checks in the result.

The input is a synthetic head with a polyp in the left sinus and a bundle of random weights: the
self-test checks the workflow, not a model, and must not depend on what the user keeps in the
models folder. Making them needs torch and MONAI (imported on use); checking the loaded outputs
needs only ``slicer`` (the application or ``slicer-core``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

import slicer
from SinusAnomalyLib.modelstore import models_folder

from .process import find_training_script
from .resultinfo import TABLE_COLUMNS
from .results import create_anomaly_color_table

OUTPUT_CLASSES = {  # load_results key -> the MRML class of its node
    "heatmap": "vtkMRMLScalarVolumeNode",
    "labelmap": "vtkMRMLLabelMapVolumeNode",
    "table": "vtkMRMLTableNode",
    "roi_left": "vtkMRMLMarkupsROINode",
    "roi_right": "vtkMRMLMarkupsROINode",
}


def setup_problems(scene, module_dir: str | Path) -> list[str]:
    """What is wrong with the module's setting up, without classifying: the anomaly colour table
    (made once per scene), the models folder, the background process's script; empty when nothing is."""
    problems = []
    table = create_anomaly_color_table(scene)
    names = [table.GetColorName(value) for value in range(table.GetNumberOfColors())]
    if names[1:] != ["left maxillary sinus anomaly", "right maxillary sinus anomaly"]:
        problems.append(f"the anomaly colour table names {names}")
    if create_anomaly_color_table(scene) is not table:
        problems.append("a second anomaly colour table was made for the same scene")
    if not str(models_folder()):
        problems.append("no models folder")
    if find_training_script(module_dir) is None:
        problems.append(f"SinusAnomalyTraining/slicer_script.py found neither in {module_dir} nor next to it")
    return problems


def synthetic_head_and_bundle(folder: str | Path, seed: int = 7) -> tuple[Path, Path]:
    """Write a synthetic head (NRRD) and a random-weight bundle into ``folder``; returns both paths."""
    from SinusAnomalyLib.bundle import build_untrained_bundle  # noqa: PLC0415  (torch)
    from SinusAnomalyLib.imageio import write_image  # noqa: PLC0415
    from SinusAnomalyLib.synth import make_case  # noqa: PLC0415  (torch, MONAI)

    folder = Path(folder)
    bundle = Path(build_untrained_bundle(folder / "untrained.sabundle"))
    case = make_case("selftest", np.random.default_rng(seed), anomalies={"left": "polyp", "right": None})
    image = folder / "synthetic_head.nrrd"
    write_image(case.image, image)
    return image, bundle


def output_problems(outputs: dict, input_volume_node, scene) -> list[str]:
    """What is wrong with the outputs of a classification of ``input_volume_node`` loaded into
    ``scene`` (:func:`.results.load_results`); empty when nothing is."""
    problems = []
    for key, class_name in OUTPUT_CLASSES.items():
        node = outputs.get(key)
        if node is None or not node.IsA(class_name):
            problems.append(f"{key}: no {class_name}")
        elif scene.GetNodeByID(node.GetID()) is None:
            problems.append(f"{key}: not in the scene")
    if problems:
        return problems
    table = outputs["table"]
    if table.GetNumberOfRows() != 2:
        problems.append(f"the table has {table.GetNumberOfRows()} rows, not one per side")
    probability_column = TABLE_COLUMNS.index("Probability")
    for row in range(table.GetNumberOfRows()):
        text = table.GetCellText(row, probability_column)
        if text and not 0.0 <= float(text) <= 1.0:  # empty when a side is not assessable
            problems.append(f"table row {row}: probability {text} outside [0, 1]")
    heat = slicer.util.arrayFromVolume(outputs["heatmap"])
    if heat.shape != slicer.util.arrayFromVolume(input_volume_node).shape:
        problems.append(f"the heat map's grid {heat.shape} is not the input's")
    if not (0.0 <= float(heat.min()) and float(heat.max()) <= 1.0):
        problems.append(f"heat map values [{float(heat.min())}, {float(heat.max())}] outside [0, 1]")
    labels = set(np.unique(slicer.util.arrayFromVolume(outputs["labelmap"])).tolist())
    if not labels <= {0, 1, 2}:
        problems.append(f"label values {sorted(labels)} other than 0, 1, 2")
    return problems

"""SinusAnomalyMRMLLib against Slicer's real MRML classes (the ``slicer-core`` wheel, no application).

Covers what the Slicer module does without Qt: the anomaly colour table; loading a classify
result folder (made here with known affines, labels and values) into heat map, label map, table
and crop ROI nodes placed next to the input in the subject hierarchy; writing a volume node to a
file; the models folder; the background process (command, environment, output streaming,
cancel); the dependency lists; and one end-to-end run: a posed reference head in a volume node, written
by the module's writer, classified by ``slicer_script.py classify`` in a background process with a
random-weight bundle, and the result folder loaded back into the scene. Last, SinusAnomaly.py's
logic (blocking and timer-polled runs, output reuse, Cancel, failures) with stand-ins for the
parts only the Slicer application provides (qt.QTimer, ScriptedLoadableModule, the parameter
node wrapper) and a stand-in classify script.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML as a Python wheel) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found is not slicer-core", allow_module_level=True)

import nibabel as nib  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "SinusAnomaly"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

from SinusAnomalyMRMLLib import process as proc  # noqa: E402
from SinusAnomalyMRMLLib import resultinfo  # noqa: E402
from SinusAnomalyMRMLLib import results as sam  # noqa: E402


# --------------------------------------------------------------------------- helpers

def rotation(axis, degrees) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    a = np.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k


def write_nifti(path: Path, array_ijk: np.ndarray, affine: np.ndarray) -> None:
    image = nib.Nifti1Image(array_ijk, affine)
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    nib.save(image, str(path))


def crop_affine(center_ras, rot, mirrored=False) -> np.ndarray:
    """Affine of a 64^3 1 mm crop centred on ``center_ras`` with axes ``rot`` (axis 0 mirrored if asked)."""
    linear = rot.copy()
    if mirrored:
        linear[:, 0] *= -1
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(center_ras) - linear @ np.full(3, 31.5)
    return affine


SHAPE = (48, 40, 30)  # i, j, k of the input grid
INPUT_AFFINE = np.eye(4)
INPUT_AFFINE[:3, :3] = rotation([1, 2, 0.5], 25) @ np.diag([1.1, 0.9, 2.0])  # oblique, anisotropic
INPUT_AFFINE[:3, 3] = [-30.0, 20.0, -70.0]

RESULT = {
    "format": "sinus-anomaly-result", "version": 1, "input": "/data/subject 01.nrrd",
    "model": {"path": "/models/demo.sabundle", "name": "demo", "method": "residual", "fraction": 100},
    "sides": {
        "left": {"probability": 0.93, "verdict": "anomalous", "threshold": 0.42, "spread": 0.05,
                 "fold_probabilities": [0.88, 0.98], "anomalous_volume_ml": 3.2,
                 "center_ras_mm": [-24.2, 62.4, -56.4], "crop_file": "left_crop.nii.gz"},
        "right": {"probability": 0.11, "verdict": "normal", "threshold": 0.42, "spread": 0.02,
                  "fold_probabilities": [0.09, 0.13], "anomalous_volume_ml": 0.0,
                  "center_ras_mm": [20.1, 58.5, -57.7], "crop_file": "right_crop.nii.gz"},
    },
    "files": {"heatmap": "heatmap.nii.gz", "labelmap": "labelmap.nii.gz"},
    "labels": {"1": "left maxillary sinus anomaly", "2": "right maxillary sinus anomaly"},
    "seconds": 2.7,
}
CROP_ROTATION = rotation([0.3, -0.2, 1.0], 12)


@pytest.fixture()
def result_dir(tmp_path):
    """A classify output folder: heat map and label map on the input grid, result.json."""
    folder = tmp_path / "result"
    folder.mkdir()
    rng = np.random.default_rng(3)
    heat = rng.random(SHAPE).astype(np.float32)
    heat[:, :, :5] = 0.0
    labels = np.zeros(SHAPE, np.uint8)
    labels[5:12, 6:14, 4:9] = 1
    labels[30:38, 20:27, 10:16] = 2
    write_nifti(folder / "heatmap.nii.gz", heat, INPUT_AFFINE)
    write_nifti(folder / "labelmap.nii.gz", labels, INPUT_AFFINE)
    result = json.loads(json.dumps(RESULT))
    result["sides"]["left"]["crop_affine_ras"] = crop_affine(result["sides"]["left"]["center_ras_mm"], CROP_ROTATION).tolist()
    result["sides"]["right"]["crop_affine_ras"] = crop_affine(result["sides"]["right"]["center_ras_mm"], CROP_ROTATION,
                                                              mirrored=True).tolist()
    (folder / "result.json").write_text(json.dumps(result))
    return folder, heat, labels, result


def input_volume(scene, name="subject 01", array_ijk=None, affine=INPUT_AFFINE):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    data = array_ijk if array_ijk is not None else np.random.default_rng(0).normal(100, 20, SHAPE).astype(np.float32)
    image = vtk.vtkImageData()
    image.SetDimensions(*data.shape)
    image.AllocateScalars(vtk.VTK_FLOAT if data.dtype == np.float32 else vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    slicer.util.arrayFromVolume(node)[:] = data.transpose(2, 1, 0)  # MRML arrays are k, j, i
    node.SetIJKToRASMatrix(sam.numpy_to_matrix(affine))
    return node


def study_with(scene, node):
    sh = sam.subject_hierarchy(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient 1")
    study = sh.CreateStudyItem(patient, "MRI head")
    item = sh.GetItemByDataNode(node)
    if item:
        sh.SetItemParent(item, study)
    else:
        sh.CreateItem(study, node)
    return sh, study


def nodes_of(scene, class_name):
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


# --------------------------------------------------------------------------- colour table

def test_color_table_names_values_and_transparent_background():
    scene = slicer.vtkMRMLScene()
    table = sam.create_anomaly_color_table(scene)
    assert table.IsA("vtkMRMLColorTableNode") and table.GetScene() is scene
    assert table.GetNumberOfColors() == 3
    assert table.GetColorName(1) == "left maxillary sinus anomaly"
    assert table.GetColorName(2) == "right maxillary sinus anomaly"
    assert table.GetColorIndexByName("left maxillary sinus anomaly") == 1
    assert table.GetColorIndexByName("right maxillary sinus anomaly") == 2
    rgba = [0.0] * 4
    table.GetColor(0, rgba)
    assert rgba[3] == 0.0  # background transparent
    for value in (1, 2):
        table.GetColor(value, rgba)
        assert rgba[3] == 1.0 and np.allclose(rgba[:3], sam.LABEL_COLORS[value], atol=1 / 255)  # 8-bit lookup table
    assert sam.create_anomaly_color_table(scene) is table  # reused, not duplicated
    assert len(nodes_of(scene, "vtkMRMLColorTableNode")) == 1


# --------------------------------------------------------------------------- load_results

def test_load_results_creates_typed_named_nodes_on_the_files_grid(result_dir):
    folder, heat, labels, result = result_dir
    scene = slicer.vtkMRMLScene()
    source = input_volume(scene)
    out = sam.load_results(folder, scene, source)

    heatmap, labelmap, table = out["heatmap"], out["labelmap"], out["table"]
    assert heatmap.GetClassName() == "vtkMRMLScalarVolumeNode"
    assert labelmap.GetClassName() == "vtkMRMLLabelMapVolumeNode"
    assert table.GetClassName() == "vtkMRMLTableNode"
    assert heatmap.GetName() == "subject 01 anomaly heat map"
    assert labelmap.GetName() == "subject 01 anomaly labels"
    assert table.GetName() == "subject 01 sinus anomaly results"
    for node in (heatmap, labelmap, table, out["roi_left"], out["roi_right"]):
        assert scene.GetNodeByID(node.GetID()) is node
        assert node.GetAttribute(sam.ATTRIBUTE_INPUT) == source.GetID()

    # geometry: IJK-to-RAS equals the NIfTI affines (read independently with nibabel)
    for node, name in ((heatmap, "heatmap.nii.gz"), (labelmap, "labelmap.nii.gz")):
        np.testing.assert_allclose(sam.ijk_to_ras(node), nib.load(str(folder / name)).affine, atol=1e-4)
        np.testing.assert_allclose(sam.ijk_to_ras(node), INPUT_AFFINE, atol=1e-4)

    # values: heat map as written, label values 1 and 2 where written
    np.testing.assert_allclose(slicer.util.arrayFromVolume(heatmap), heat.transpose(2, 1, 0), atol=1e-6)
    label_array = slicer.util.arrayFromVolume(labelmap)
    np.testing.assert_array_equal(label_array, labels.transpose(2, 1, 0))
    assert set(np.unique(label_array).tolist()) == {0, 1, 2}

    # display: colour table on the label map, heat colours 0-1 with low heat transparent
    label_display = labelmap.GetDisplayNode()
    assert label_display is not None and label_display.GetColorNodeID() == out["color_table"].GetID()
    heat_display = heatmap.GetDisplayNode()
    assert heat_display.GetColorNode() is not None and heat_display.GetColorNodeID() != "vtkMRMLColorTableNodeGrey"
    assert heat_display.GetWindowLevelMin() == pytest.approx(0.0) and heat_display.GetWindowLevelMax() == pytest.approx(1.0)
    assert heat_display.GetApplyThreshold() and heat_display.GetLowerThreshold() == pytest.approx(sam.HEATMAP_SHOWN_FROM)
    assert out["result"]["model"]["name"] == "demo"


def test_result_table_rows_match_result_json(result_dir):
    folder, _, _, result = result_dir
    scene = slicer.vtkMRMLScene()
    table = sam.load_results(folder, scene, input_volume(scene))["table"]
    assert table.GetNumberOfRows() == 2
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns == ["Side", "Verdict", "Probability", "Spread", "Coverage (%)", "Volume (mL)"]
    assert table.GetColumnUnitLabel("Volume (mL)") == "mL"
    column = {name: index for index, name in enumerate(columns)}
    for row, side in enumerate(("left", "right")):
        entry = result["sides"][side]
        assert table.GetCellText(row, column["Side"]) == side.capitalize()
        assert float(table.GetCellText(row, column["Probability"])) == pytest.approx(entry["probability"])
        assert table.GetCellText(row, column["Verdict"]) == entry["verdict"]
        assert float(table.GetCellText(row, column["Spread"])) == pytest.approx(entry["spread"])
        assert float(table.GetCellText(row, column["Volume (mL)"])) == pytest.approx(entry["anomalous_volume_ml"])
        assert table.GetCellText(row, column["Coverage (%)"]) == ""  # format 1 has no coverage
        assert table.GetAttribute(f"SinusAnomaly.threshold.{side}") == str(entry["threshold"])
    assert table.GetAttribute(sam.ATTRIBUTE_MODEL) == "demo"
    assert table.GetAttribute(sam.ATTRIBUTE_FINGERPRINT) is None  # format 1 has none
    assert table.GetAttribute(sam.ATTRIBUTE_WARNINGS) is None


def test_crop_rois_are_centred_sized_and_oriented_like_the_crops(result_dir):
    folder, _, _, result = result_dir
    scene = slicer.vtkMRMLScene()
    out = sam.load_results(folder, scene, input_volume(scene))
    for side in ("left", "right"):
        roi = out[f"roi_{side}"]
        assert roi.GetClassName() == "vtkMRMLMarkupsROINode"
        assert roi.GetName() == f"subject 01 {side} sinus crop"
        center = [0.0] * 3
        roi.GetCenter(center)
        np.testing.assert_allclose(center, result["sides"][side]["center_ras_mm"], atol=1e-6)
        np.testing.assert_allclose(roi.GetSize(), [64.0] * 3, atol=1e-9)
        axes = []
        for getter in (roi.GetXAxis, roi.GetYAxis, roi.GetZAxis):
            axis = [0.0] * 3
            getter(axis)
            axes.append(axis)
        axes = np.array(axes).T
        np.testing.assert_allclose(np.linalg.det(axes), 1.0, atol=1e-9)
        expected = CROP_ROTATION
        np.testing.assert_allclose(axes, expected, atol=1e-9)  # right crop: mirrored axis flipped back
        # the 8 corners of the crop (voxel edges) lie on the ROI box
        affine = np.asarray(result["sides"][side]["crop_affine_ras"])
        corners = np.array([[i, j, k, 1.0] for i in (-0.5, 63.5) for j in (-0.5, 63.5) for k in (-0.5, 63.5)])
        local = (axes.T @ ((affine @ corners.T)[:3] - np.asarray(center)[:, None])).T
        np.testing.assert_allclose(np.abs(local), 32.0, atol=1e-6)


def test_crop_box_without_affine_uses_the_centre():
    center, rot, size = sam.crop_box({"center_ras_mm": [1, 2, 3]})
    np.testing.assert_allclose(center, [1, 2, 3])
    np.testing.assert_allclose(rot, np.eye(3))
    np.testing.assert_allclose(size, [64, 64, 64])


def test_results_join_the_input_study_and_its_transform(result_dir):
    folder, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    source = input_volume(scene)
    sh, study = study_with(scene, source)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "head pose")
    source.SetAndObserveTransformNodeID(transform.GetID())
    out = sam.load_results(folder, scene, source)
    for role in sam.ROLES:
        node = out[role]
        item = sh.GetItemByDataNode(node)
        assert item, role
        assert sh.GetItemParent(item) == study, role
        if role != "table":
            assert node.GetTransformNodeID() == transform.GetID(), role


def test_results_without_hierarchy_item_or_input(result_dir):
    folder, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    source = input_volume(scene)  # no subject hierarchy item (plain MRML does not add one)
    out = sam.load_results(folder, scene, source)
    assert out["heatmap"].GetName() == "subject 01 anomaly heat map"
    out = sam.load_results(folder, slicer.vtkMRMLScene())  # no input node: named after result.json's input
    assert out["heatmap"].GetName() == "subject 01 anomaly heat map"
    assert out["heatmap"].GetAttribute(sam.ATTRIBUTE_INPUT) is None


def test_reloading_into_given_outputs_refills_them(result_dir):
    folder, heat, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    source = input_volume(scene)
    first = sam.load_results(folder, scene, source)
    counts = {c: scene.GetNumberOfNodesByClass(c) for c in ("vtkMRMLScalarVolumeNode", "vtkMRMLTableNode",
                                                            "vtkMRMLMarkupsROINode", "vtkMRMLColorNode")}
    again = sam.load_results(folder, scene, source, outputs={k: first[k] for k in sam.ROLES})
    for key in sam.ROLES:
        assert again[key] is first[key]
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    assert again["table"].GetNumberOfRows() == 2 and again["table"].GetNumberOfColumns() == 6
    np.testing.assert_allclose(slicer.util.arrayFromVolume(again["heatmap"]), heat.transpose(2, 1, 0), atol=1e-6)


@pytest.mark.parametrize("problem", ["no-json", "format", "version", "side", "heatmap"])
def test_bad_result_folders_are_refused(result_dir, problem):
    folder, *_ = result_dir
    result = json.loads((folder / "result.json").read_text())
    if problem == "no-json":
        (folder / "result.json").unlink()
    elif problem == "format":
        result["format"] = "something-else"
    elif problem == "version":
        result["version"] = 99
    elif problem == "side":
        del result["sides"]["right"]
    elif problem == "heatmap":
        (folder / "heatmap.nii.gz").unlink()
    if problem != "no-json":
        (folder / "result.json").write_text(json.dumps(result))
    scene = slicer.vtkMRMLScene()
    with pytest.raises(sam.ResultError, match="result.json|heatmap"):
        sam.load_results(folder, scene, input_volume(scene))


# --------------------------------------------------------------------------- result format 2

FINGERPRINT = "3f2a9c0d5e7b41c8a6d2e9f01b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"


def write_v2_result(folder: Path) -> dict:
    """Turn the fixture's folder into format 2 by hand: the right side not assessable, warnings, fingerprint."""
    result = json.loads((folder / "result.json").read_text())
    result["version"] = 2
    result["model"]["fingerprint"] = FINGERPRINT
    result["sides"]["left"].update({"coverage": 0.97, "assessable": True})
    result["sides"]["right"].update({"coverage": 0.41, "assessable": False, "probability": None, "spread": None,
                                     "anomalous_volume_ml": None, "verdict": "not assessable"})
    result["warnings"] = ["right: the scan shows 41 % of the sinus (below 60 %): not assessable",
                          "registration quality 0.31 is low: check the crop boxes"]
    (folder / "result.json").write_text(json.dumps(result))
    return result


def test_format_2_results_show_coverage_not_assessable_sides_warnings_and_fingerprint(result_dir):
    folder, *_ = result_dir
    result = write_v2_result(folder)
    scene = slicer.vtkMRMLScene()
    out = sam.load_results(folder, scene, input_volume(scene))
    table = out["table"]
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    cell = {(row, name): table.GetCellText(row, index) for row in range(2) for index, name in enumerate(columns)}
    assert cell[0, "Verdict"] == "anomalous" and float(cell[0, "Probability"]) == pytest.approx(0.93)
    assert cell[0, "Coverage (%)"] == "97" and float(cell[0, "Volume (mL)"]) == pytest.approx(3.2)
    assert cell[1, "Verdict"] == "not assessable"
    assert cell[1, "Probability"] == cell[1, "Spread"] == cell[1, "Volume (mL)"] == ""  # no probability shown
    assert cell[1, "Coverage (%)"] == "41"
    assert table.GetColumnUnitLabel("Coverage (%)") == "%"
    assert table.GetAttribute(sam.ATTRIBUTE_FINGERPRINT) == FINGERPRINT
    assert table.GetAttribute(sam.ATTRIBUTE_WARNINGS).split("\n") == result["warnings"]
    # the label map and both boxes load as for format 1
    assert out["labelmap"].GetClassName() == "vtkMRMLLabelMapVolumeNode" and out["roi_right"] is not None

    lines = resultinfo.summary_lines(out["result"])
    assert lines[0].startswith("Left: anomalous, probability 0.930") and "97 % of the sinus" in lines[0]
    assert lines[1] == "Right: not assessable, the scan shows 41 % of the sinus; no probability"
    assert lines[2] == f"Model: demo (fingerprint {FINGERPRINT[:12]})"
    assert lines[3:] == [f"Warning: {w}" for w in result["warnings"]]
    assert resultinfo.short_fingerprint(out["result"]) == FINGERPRINT[:12]


def test_format_1_results_have_no_fingerprint_or_coverage(result_dir):
    folder, *_ = result_dir
    result = resultinfo.read_result(folder)
    assert resultinfo.short_fingerprint(result) == "" and resultinfo.warnings_of(result) == []
    assert resultinfo.model_line(result) == "demo (no fingerprint: result format 1)"
    assert [row[4] for row in resultinfo.result_rows(result)] == ["", ""]


@pytest.mark.parametrize("problem, message", [
    ("version 3", "result version 3; this module reads versions 1 to 2"),
    ("no coverage", "side 'left' has no coverage"),
    ("bad verdict", "side 'left' has verdict 'maybe'"),
    ("no probability", "side 'left' has no probability"),
    ("warnings not a list", "'warnings' is not a list"),
])
def test_bad_format_2_results_are_refused_naming_the_problem(result_dir, problem, message):
    folder, *_ = result_dir
    result = write_v2_result(folder)
    left = result["sides"]["left"]
    if problem == "version 3":
        result["version"] = 3
    elif problem == "no coverage":
        del left["coverage"]
    elif problem == "bad verdict":
        left["verdict"] = "maybe"
    elif problem == "no probability":
        left["probability"] = None  # assessable but without a probability
    elif problem == "warnings not a list":
        result["warnings"] = "oops"
    (folder / "result.json").write_text(json.dumps(result))
    with pytest.raises(sam.ResultError, match=re.escape(message)) as info:
        resultinfo.read_result(folder)
    assert str(folder / "result.json") in str(info.value)


# --------------------------------------------------------------------------- write_volume_to_file

@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_write_volume_to_file_round_trips_values_and_geometry(tmp_path, suffix):
    scene = slicer.vtkMRMLScene()
    data = np.random.default_rng(1).normal(0, 300, SHAPE).astype(np.float32)
    node = input_volume(scene, "head", data)
    path = sam.write_volume_to_file(node, tmp_path / f"input{suffix}")
    assert path.is_file()
    assert scene.GetNumberOfNodesByClass("vtkMRMLStorageNode") == 0  # the temporary storage node is gone

    # read back independently: SimpleITK (LPS) ...
    image = sitk.ReadImage(str(path))
    np.testing.assert_allclose(sitk.GetArrayFromImage(image).transpose(2, 1, 0), data)
    direction = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(lps_to_ras @ direction, INPUT_AFFINE[:3, :3], atol=1e-5)
    np.testing.assert_allclose(lps_to_ras @ np.asarray(image.GetOrigin()), INPUT_AFFINE[:3, 3], atol=1e-5)
    # ... and through MRML into a new node
    other = slicer.vtkMRMLScene()
    copy = other.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "copy")
    sam._read_volume(other, copy, path)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(copy), data.transpose(2, 1, 0))
    np.testing.assert_allclose(sam.ijk_to_ras(copy), INPUT_AFFINE, atol=1e-5)


def test_write_volume_to_file_refuses_an_empty_node(tmp_path):
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(ValueError, match="no image data"):
        sam.write_volume_to_file(node, tmp_path / "x.nrrd")


# --------------------------------------------------------------------------- models folder

def test_models_folder_honours_the_environment(tmp_path, monkeypatch):
    """The widget lists the bundles of SinusAnomalyLib.modelstore (light: no torch needed)."""
    from SinusAnomalyLib import modelstore as sam

    monkeypatch.setenv("SINUS_ANOMALY_MODELS", str(tmp_path / "models"))
    assert sam.models_folder() == tmp_path / "models"
    assert sam.list_bundles() == []  # missing folder: no bundles, no error
    (tmp_path / "models").mkdir()
    for name in ("b.sabundle", "A.sabundle", "notes.txt", "c.sabundle.part"):
        (tmp_path / "models" / name).write_bytes(b"x")
    (tmp_path / "models" / "folder.sabundle").mkdir()
    assert [p.name for p in sam.list_bundles()] == ["A.sabundle", "b.sabundle"]

    monkeypatch.delenv("SINUS_ANOMALY_MODELS")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USERPROFILE", str(tmp_path / "home"))
    assert sam.models_folder() == tmp_path / "home" / ".sinus-anomaly" / "models"


# --------------------------------------------------------------------------- background process

def test_training_script_found_in_source_and_installed_layouts(tmp_path):
    assert proc.find_training_script(MODULE_DIR) == REPO / "SinusAnomalyTraining" / "slicer_script.py"
    installed = tmp_path / "qt-scripted-modules"
    (installed / "SinusAnomalyTraining").mkdir(parents=True)
    (installed / "SinusAnomalyTraining" / "slicer_script.py").write_text("")
    assert proc.find_training_script(installed) == installed / "SinusAnomalyTraining" / "slicer_script.py"
    assert proc.find_training_script(tmp_path / "nowhere" / "module") is None


def test_command_and_environment():
    command = proc.classify_command("PythonSlicer", "/x/slicer_script.py", "/t/input.nrrd", "/m/a.sabundle", "/t/result")
    assert command == ["PythonSlicer", "/x/slicer_script.py", "-v", "classify", "/t/input.nrrd", "--model", "/m/a.sabundle",
                       "--out", "/t/result"]
    assert proc.classify_command("p", "s", "i", "m", "o", force_cpu=True)[-2:] == ["--device", "cpu"]
    env = proc.classify_environment({"PATH": "/bin", "PYTHONPATH": "/old"}, force_cpu=True, python_paths=["/mod", "/repo"])
    assert env["CUDA_VISIBLE_DEVICES"] == "-1"
    assert env["PYTHONPATH"].split(os.pathsep) == ["/mod", "/repo", "/old"]
    assert env["PYTHONUNBUFFERED"] == "1" and env["PATH"] == "/bin"
    assert "CUDA_VISIBLE_DEVICES" not in proc.classify_environment({}, force_cpu=False)


def test_background_process_streams_output_and_exit_code(tmp_path):
    script = textwrap.dedent("""
        import os, sys, time
        print("device", os.environ.get("CUDA_VISIBLE_DEVICES"))
        for i in range(3):
            print("step", i)
            time.sleep(0.05)
        print("to stderr", file=sys.stderr)
        sys.exit(3)
    """)
    env = proc.classify_environment(dict(os.environ), force_cpu=True)
    process = proc.ClassificationProcess([sys.executable, "-c", script], env=env, cwd=tmp_path).start()
    seen = []
    deadline = time.time() + 20
    while not process.finished and time.time() < deadline:  # what the module's QTimer does
        seen += process.poll()
        time.sleep(0.02)
    assert process.finished and process.returncode == 3 and not process.succeeded and not process.cancelled
    assert seen == ["device -1", "step 0", "step 1", "step 2", "to stderr"] == process.lines
    assert process.poll() == []


def test_cancel_ends_the_process_and_its_children(tmp_path):
    # like PythonSlicer: a launcher process that starts the real interpreter as a child
    child = "import time; print('child running', flush=True); time.sleep(60)"
    launcher = textwrap.dedent(f"""
        import subprocess, sys
        p = subprocess.Popen([sys.executable, "-c", {child!r}])
        print("child pid", p.pid, flush=True)
        p.wait()
    """)
    process = proc.ClassificationProcess([sys.executable, "-c", launcher], cwd=tmp_path).start()
    lines = []
    deadline = time.time() + 20
    while "child running" not in lines and time.time() < deadline:
        lines += process.poll()
        time.sleep(0.02)
    child_pid = int(next(line for line in lines if line.startswith("child pid")).split()[-1])
    process.cancel()
    assert process.wait(timeout=10) is not None
    assert process.finished and process.cancelled and not process.succeeded
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.kill(child_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the child process survived cancel()")


def test_wait_forwards_lines(tmp_path):
    process = proc.ClassificationProcess([sys.executable, "-c", "print('a'); print('b')"]).start()
    got = []
    assert process.wait(timeout=20, on_line=got.append) == 0
    assert got == ["a", "b"] and process.succeeded


def test_cancel_returns_at_once_and_kills_a_process_that_ignores_it(tmp_path):
    """Cancel must not wait on the GUI thread: it only asks; poll() kills after the grace period."""
    stubborn = textwrap.dedent("""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(60)
    """)
    process = proc.ClassificationProcess([sys.executable, "-c", stubborn], cwd=tmp_path, cancel_grace_seconds=1.0).start()
    deadline = time.time() + 20
    while "ignoring SIGTERM" not in process.lines and time.time() < deadline:
        process.poll()
        time.sleep(0.02)
    started = time.monotonic()
    process.cancel()
    assert time.monotonic() - started < 0.2  # returned at once
    assert process.cancelled and not process.finished
    time.sleep(0.3)
    process.poll()
    assert not process.finished and not process.killed  # still in its grace period
    deadline = time.time() + 20
    while not process.finished and time.time() < deadline:  # what the module's timer does
        process.poll()
        time.sleep(0.05)
    assert process.finished and process.killed and process.cancelled and not process.succeeded
    assert process.returncode == -signal.SIGKILL


def test_python_slicer_is_found_or_named_in_a_clear_error(tmp_path):
    bin_dir = tmp_path / "Slicer" / "bin"
    bin_dir.mkdir(parents=True)
    launcher = bin_dir / "PythonSlicer"
    launcher.write_text("#!/bin/sh\n")
    launcher.chmod(0o755)
    assert proc.find_python_slicer(bin_dir / "SlicerApp-real", search_path=str(tmp_path / "empty")) == str(launcher)
    other = tmp_path / "other"
    other.mkdir()
    assert proc.find_python_slicer(other / "python-real", search_path=str(bin_dir)) == str(launcher)  # on PATH
    with pytest.raises(proc.PythonSlicerNotFoundError, match=r"PythonSlicer .* neither on PATH nor in .*other"):
        proc.find_python_slicer(other / "python-real", search_path=str(tmp_path / "empty"))


def test_starting_a_missing_program_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-PythonSlicer: the program to run does not exist"):
        proc.ClassificationProcess([str(tmp_path / "no-such-PythonSlicer"), "x"]).start()


# --------------------------------------------------------------------------- bundles

def test_bundle_tooltip_describes_a_bundle_or_says_why_not(tmp_path):
    path = random_bundle(tmp_path / "tip.sabundle")
    tip = resultinfo.bundle_tooltip(path)
    assert tip.startswith(str(path)) and "untrained pretraining" in tip and "1 fold(s)" in tip
    from SinusAnomalyLib.bundlefile import read_bundle_manifest

    assert tip.splitlines()[1] == f"fingerprint {read_bundle_manifest(path)[1][:12]}"  # the selector shows it before a run
    assert "RANDOM WEIGHTS" in tip  # the bundle's intended use is shown to the user
    (tmp_path / "bad.sabundle").write_bytes(b"not a zip")
    assert resultinfo.bundle_tooltip(tmp_path / "bad.sabundle").startswith("cannot be used: ")
    assert "bad.sabundle" in resultinfo.bundle_tooltip(tmp_path / "bad.sabundle")


# --------------------------------------------------------------------------- end to end

def random_bundle(path: Path) -> Path:
    from SinusAnomalyLib.bundle import build_untrained_bundle

    return build_untrained_bundle(path)


def posed_reference_head():
    """The reference head moved by a known rigid transform (cheap; synth.make_case takes ~10 s on 2 cores):
    (image, {side: true sinus centre in RAS mm}). The average head's air is its own dark core, so that
    is the truth here (the reference sinus crops are centred on lies about 2 mm lower)."""
    from SinusAnomalyLib.reference import SIDES, load_template_cores

    reference = load_template_cores()
    image = reference.image
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    pose = sitk.Euler3DTransform(centre, np.radians(4.0), np.radians(-3.0), np.radians(8.0), (4.0, -3.0, 5.0))
    moved = sitk.Resample(image, image, pose, sitk.sitkLinear, 0.0, sitk.sitkFloat32)  # moved(x) = reference(pose(x))
    inverse = pose.GetInverse()
    lps_ras = np.diag([-1.0, -1.0, 1.0])
    centres = {side: lps_ras @ np.asarray(inverse.TransformPoint(tuple(reference.center_lps(side)))) for side in SIDES}
    return moved, centres


def test_end_to_end_background_classify_of_a_volume_node(tmp_path):
    """The module's path without Qt: node -> NRRD -> slicer_script.py classify (background) -> nodes."""
    pytest.importorskip("torch")
    head, true_centres = posed_reference_head()
    scene = slicer.vtkMRMLScene()
    array = sitk.GetArrayFromImage(head).transpose(2, 1, 0).astype(np.float32)
    direction = np.asarray(head.GetDirection()).reshape(3, 3) * np.asarray(head.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ direction
    affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(head.GetOrigin())
    source = input_volume(scene, "posed head", array, affine)
    sh, study = study_with(scene, source)

    bundle_path = random_bundle(tmp_path / "random.sabundle")
    input_file = sam.write_volume_to_file(source, tmp_path / "input.nrrd")
    script = proc.find_training_script(MODULE_DIR)
    command = proc.classify_command(sys.executable, script, input_file, bundle_path, tmp_path / "result", force_cpu=True)
    env = proc.classify_environment(dict(os.environ), force_cpu=True, python_paths=[MODULE_DIR, script.parent.parent])
    process = proc.ClassificationProcess(command, env=env, cwd=tmp_path).start()
    assert process.wait(timeout=180) == 0, "\n".join(process.lines)
    assert any(line.startswith("left") and "p(anomalous)" in line for line in process.lines), process.lines
    assert any("networks and maps in" in line for line in process.lines), process.lines  # phases logged

    out = sam.load_results(tmp_path / "result", scene, source)
    assert out["table"].GetNumberOfRows() == 2
    for row in range(2):
        assert 0.0 <= float(out["table"].GetCellText(row, resultinfo.TABLE_COLUMNS.index("Probability"))) <= 1.0
    heat = slicer.util.arrayFromVolume(out["heatmap"])
    assert heat.shape == slicer.util.arrayFromVolume(source).shape
    assert 0.0 <= heat.min() and heat.max() <= 1.0 and heat.max() > 0
    np.testing.assert_allclose(sam.ijk_to_ras(out["heatmap"]), affine, atol=1e-4)
    np.testing.assert_allclose(sam.ijk_to_ras(out["labelmap"]), affine, atol=1e-4)
    assert set(np.unique(slicer.util.arrayFromVolume(out["labelmap"])).tolist()) <= {0, 1, 2}
    for side in ("left", "right"):
        center = [0.0] * 3
        out[f"roi_{side}"].GetCenter(center)
        np.testing.assert_allclose(center, out["result"]["sides"][side]["center_ras_mm"], atol=0.01)
        # the crop box sits around the sinus centre of the posed head (placed on the average's
        # blurred air, which reaches past its core)
        assert np.linalg.norm(np.asarray(center) - true_centres[side]) < 7.0
    assert sh.GetItemParent(sh.GetItemByDataNode(out["heatmap"])) == study


# --------------------------------------------------------------------------- the module's logic

class _StandInTimer:
    """qt.QTimer stand-in: the test calls ``fire()`` where Qt's event loop would call the slot."""

    def __init__(self):
        self.slot, self.active = None, False

    def setInterval(self, ms):
        self.interval = ms

    def connect(self, signal, slot):
        assert signal == "timeout()"
        self.slot = slot

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def fire(self):
        if self.active:
            self.slot()

    @staticmethod
    def singleShot(ms, slot):
        pass


@pytest.fixture()
def module(monkeypatch, tmp_path):
    """SinusAnomaly.py imported with stand-ins for what only the Slicer application provides
    (qt, ScriptedLoadableModule, parameterNodeWrapper, slicer.app, slicer.mrmlScene)."""
    import types
    import unittest

    qt = types.ModuleType("qt")
    qt.QTimer = _StandInTimer
    base = type("Base", (), {"__init__": lambda self, *a, **k: None})
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = base
    slm.ScriptedLoadableModuleLogic = type("Logic", (base,), {"getParameterNode": lambda self: None})
    slm.ScriptedLoadableModuleTest = unittest.TestCase
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    app = types.SimpleNamespace(testingEnabled=lambda: True, processEvents=lambda: None)
    for name, value in (("qt", qt), ("slicer.ScriptedLoadableModule", slm), ("slicer.parameterNodeWrapper", pnw)):
        monkeypatch.setitem(sys.modules, name, value)
    monkeypatch.delitem(sys.modules, "SinusAnomaly", raising=False)
    monkeypatch.setattr(slicer, "mrmlScene", slicer.vtkMRMLScene(), raising=False)
    monkeypatch.setattr(slicer, "app", app, raising=False)
    temp_root = tmp_path / "slicer-temp"
    temp_root.mkdir()
    counter = iter(range(1000))

    def temp_directory(key="t", **kwargs):
        folder = temp_root / f"{key}{next(counter)}"
        folder.mkdir()
        return str(folder)

    monkeypatch.setattr(slicer.util, "tempDirectory", temp_directory, raising=False)
    monkeypatch.setattr(slicer.util, "startupEnvironment", lambda: dict(os.environ), raising=False)
    import importlib

    sa = importlib.import_module("SinusAnomaly")
    yield sa
    sys.modules.pop("SinusAnomaly", None)


FAKE_CLASSIFY = '''
import os, shutil, sys, time
from pathlib import Path
import SimpleITK as sitk
assert sys.argv[1] == "-v", sys.argv  # phases logged with their times
args = sys.argv[2:]
assert args[0] == "classify" and args[2] == "--model" and args[4] == "--out", args
image = sitk.ReadImage(args[1])
print("input size", *image.GetSize())
print("CUDA_VISIBLE_DEVICES", os.environ.get("CUDA_VISIBLE_DEVICES"), "device", args[7] if len(args) > 7 else "auto")
print("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
model = Path(args[3]).name
if "slow" in model:
    time.sleep(60)
if "bad" in model:
    print("sinus-anomaly classify: error: " + args[3] + ": is not a SinusAnomaly model bundle", file=sys.stderr)
    sys.exit(2)
shutil.copytree(os.environ["FAKE_RESULT_DIR"], args[5])
print("left : p(anomalous) 0.930")
'''


def use_fake_classify(module, folder, tmp_path, monkeypatch) -> Path:
    """The module's Logic runs :data:`FAKE_CLASSIFY` in the background, which copies ``folder`` as
    its result; returns the fake script's path."""
    fake = tmp_path / "fake" / "SinusAnomalyTraining" / "slicer_script.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(FAKE_CLASSIFY)
    monkeypatch.setattr(module.SinusAnomalyLogic, "trainingScript", staticmethod(lambda: fake))
    monkeypatch.setattr(module.SinusAnomalyLogic, "pythonExecutable", staticmethod(lambda: sys.executable))
    monkeypatch.setenv("FAKE_RESULT_DIR", str(folder))
    return fake


def test_module_logic_runs_classify_in_the_background(module, result_dir, tmp_path, monkeypatch):
    folder, heat, labels, result = result_dir
    fake = use_fake_classify(module, folder, tmp_path, monkeypatch)
    for name in ("model.sabundle", "slow.sabundle", "bad.sabundle"):
        (tmp_path / name).write_bytes(b"bundle")

    scene = slicer.mrmlScene
    source = input_volume(scene)
    sh, study = study_with(scene, source)
    logic = module.SinusAnomalyLogic()
    assert logic.inputProblem(None, "") and logic.inputProblem(source, "") and logic.inputProblem(source, tmp_path / "x")
    assert logic.inputProblem(source, tmp_path / "model.sabundle") is None

    # blocking (scripts): CPU forced, results loaded next to the input, temporary files removed
    logs = []
    task = logic.classify(source, tmp_path / "model.sabundle", forceCpu=True, wait=True, logCallback=logs.append)
    assert task.status == "completed" and not task.tempDir.exists()
    assert f"input size {SHAPE[0]} {SHAPE[1]} {SHAPE[2]}" in logs
    assert "CUDA_VISIBLE_DEVICES -1 device cpu" in logs
    pythonpath = next(line for line in logs if line.startswith("PYTHONPATH")).split(" ", 1)[1].split(os.pathsep)
    assert pythonpath[:2] == [str(MODULE_DIR), str(fake.parent.parent)]
    outputs = task.outputs
    assert outputs["table"].GetNumberOfRows() == 2 and outputs["heatmap"].GetName() == "subject 01 anomaly heat map"
    assert sh.GetItemParent(sh.GetItemByDataNode(outputs["labelmap"])) == study

    # in the background (GUI): polled by the timer; earlier outputs refilled; GPU not hidden
    done = []
    previous = {key: outputs[key] for key in module.OUTPUT_PARAMETERS}
    task = logic.classify(source, tmp_path / "model.sabundle", forceCpu=False, wait=False, logCallback=logs.append,
                          completedCallback=done.append, outputs=previous)
    assert task.running and task.timer.active
    deadline = time.time() + 30
    while not done and time.time() < deadline:
        task.timer.fire()
        time.sleep(0.02)
    assert done == [task] and task.status == "completed" and not task.timer.active
    assert all(task.outputs[key] is node for key, node in previous.items())
    assert "CUDA_VISIBLE_DEVICES None device auto" in logs

    # Cancel
    task = logic.classify(source, tmp_path / "slow.sabundle", wait=False, completedCallback=done.append)
    time.sleep(0.3)
    logic.cancel(task)
    deadline = time.time() + 30
    while task.running and time.time() < deadline:
        task.timer.fire()
        time.sleep(0.02)
    assert task.status == "cancelled" and task.process.cancelled and done[-1] is task and not task.tempDir.exists()

    # a failing process: RuntimeError with its message (blocking), status "failed" (background)
    with pytest.raises(RuntimeError, match="(?s)exit code 2.*not a SinusAnomaly model bundle"):
        logic.classify(source, tmp_path / "bad.sabundle", wait=True)
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1  # no stray results


class _FakeLog:
    """The QPlainTextEdit log: records appended lines."""

    def __init__(self):
        self.lines = []

    def document(self):
        return types.SimpleNamespace(characterCount=lambda: sum(len(line) for line in self.lines))

    def appendPlainText(self, text):
        self.lines.append(text)

    def clear(self):
        self.lines.clear()

    def ensureCursorVisible(self):
        pass


class _FakeProgressBar:
    def __init__(self):
        self.formats, self.value = [], 0

    def setRange(self, low, high):
        pass

    def setFormat(self, text):
        self.formats.append(text)

    def show(self):
        pass

    def hide(self):
        pass


def fake_ui():
    names = ("applyButton", "inputSelector", "modelComboBox", "browseModelButton", "refreshModelsButton",
             "forceCpuCheckBox", "showResultsButton", "outputsCollapsibleButton", "modelFingerprintLabel")
    ui = types.SimpleNamespace(**{name: types.SimpleNamespace(text="", enabled=True, toolTip="", collapsed=True)
                                  for name in names})
    ui.statusLabel, ui.progressBar = _FakeLog(), _FakeProgressBar()
    return ui


def test_widget_shows_format_2_results_warnings_and_fingerprint(module, result_dir):
    folder, *_ = result_dir
    result = write_v2_result(folder)
    source = input_volume(slicer.mrmlScene)
    outputs = sam.load_results(folder, slicer.mrmlScene, source)
    widget = module.SinusAnomalyWidget()
    widget.ui = fake_ui()
    task = types.SimpleNamespace(status="completed", outputs=outputs, elapsed=2.5)
    widget.onTaskCompleted(task)

    log = widget.ui.statusLabel.lines
    assert "Right: not assessable, the scan shows 41 % of the sinus; no probability" in log
    assert any(line.startswith("Left: anomalous, probability 0.930") for line in log)
    for warning in result["warnings"]:
        assert f"Warning: {warning}" in log
    assert widget.ui.modelFingerprintLabel.text == f"demo (fingerprint {FINGERPRINT[:12]})"
    assert widget.ui.progressBar.formats[-1] == "Done, 2 warning(s): see the log"
    assert widget.ui.outputsCollapsibleButton.collapsed is False
    assert widget.ui.applyButton.text == "Classify"


def test_module_on_a_slicer_older_than_5_10_says_why(module, monkeypatch):
    import importlib

    monkeypatch.setattr(slicer.app, "majorVersion", 5, raising=False)
    monkeypatch.setattr(slicer.app, "minorVersion", 8, raising=False)
    sys.modules.pop("SinusAnomaly", None)
    old = importlib.import_module("SinusAnomaly")
    assert "needs 3D Slicer 5.10 or newer" in old.SLICER_VERSION_PROBLEM and "Slicer 5.8" in old.SLICER_VERSION_PROBLEM
    instance = old.SinusAnomaly.__new__(old.SinusAnomaly)
    instance.parent = types.SimpleNamespace()
    old.SinusAnomaly.__init__(instance, instance.parent)
    assert instance.parent.helpText.startswith(f"<p><b>{old.SLICER_VERSION_PROBLEM}</b></p>")
    assert module.SLICER_VERSION_PROBLEM is None  # no application version: nothing to refuse


def test_logic_names_a_missing_python_slicer(module, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(proc.PythonSlicerNotFoundError, match="PythonSlicer .*reinstall 3D Slicer"):
        module.SinusAnomalyLogic.pythonExecutable()


def test_logic_checks_versions_before_starting_and_installs_with_the_shared_policy(module, monkeypatch, tmp_path):
    from SinusAnomalyLib import dependencies

    problem = dependencies.Problem(dependencies.Requirement("torch", "torch", ">=2.4.1,<=2.13.0"), "2.2.0")
    monkeypatch.setattr(dependencies, "problems", lambda wanted=None: [problem])
    installs = []
    monkeypatch.setattr(module.installer, "install_into_slicer", lambda **kw: installs.append(kw) or True)
    logic = module.SinusAnomalyLogic()
    assert logic.ensureDependencies(askConfirmation=True) is True
    assert installs and installs[0]["confirm"] is None  # testing mode: no question
    (tmp_path / "model.sabundle").write_bytes(b"bundle")
    source = input_volume(slicer.mrmlScene)
    with pytest.raises(RuntimeError) as info:
        logic.classify(source, tmp_path / "model.sabundle", installDependencies=False)
    assert "torch 2.2.0 is installed but torch>=2.4.1,<=2.13.0 is needed: update it" in str(info.value)
    assert "PythonSlicer SinusAnomalyTraining/slicer_script.py setup" in str(info.value)
    assert not list((tmp_path / "slicer-temp").glob("SinusAnomaly[0-9]*"))  # refused before writing the input


def test_self_test_skips_with_a_clear_message_in_a_testing_build_without_the_packages(module, monkeypatch):
    """Slicer's factory builds install no torch: the self-test is reported skipped, saying why, not failed."""
    import unittest

    from SinusAnomalyLib import dependencies

    problem = dependencies.Problem(dependencies.Requirement("monai", "monai", ">=1.5,<1.7"), None)
    monkeypatch.setattr(dependencies, "problems", lambda wanted=None: [problem])
    shown = []
    monkeypatch.setattr(module.SinusAnomalyTest, "delayDisplay", lambda self, message, *a: shown.append(message), raising=False)
    result = unittest.TestResult()
    module.SinusAnomalyTest("runTest").run(result)  # as Slicer's test runner runs it
    assert not result.failures and not result.errors, result.failures + result.errors
    (_, reason), = result.skipped
    assert reason.startswith("Skipped the classification: ") and "monai is not installed" in reason
    assert "Colour table and models folder: passed" in shown  # the checks that need no torch still ran
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: False)  # an interactive self-test only reports it
    shown.clear()
    module.SinusAnomalyTest("test_ClassifySyntheticHead").test_ClassifySyntheticHead()
    assert shown[-1] == reason


def test_closing_the_module_ends_a_running_classification(module, tmp_path):
    """Cancel only asks; the module's cleanup (application exit) also waits until the process is gone."""
    stubborn = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)\n"
    background = proc.ClassificationProcess([sys.executable, "-c", stubborn], cwd=tmp_path, cancel_grace_seconds=0.5).start()
    assert background.wait(timeout=0.0) is None
    deadline = time.time() + 20
    while "up" not in background.lines and time.time() < deadline:
        background.poll()
        time.sleep(0.02)
    widget = module.SinusAnomalyWidget()
    widget.logic = module.SinusAnomalyLogic()
    widget._task = module.ClassificationTask(None, "m.sabundle", False, tmp_path, background)
    widget.logic._tasks.append(widget._task)
    widget.cleanup()
    assert background.finished and background.cancelled and background.killed

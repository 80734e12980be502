"""SinusAnomalyMRMLLib's results and files against Slicer's real MRML classes (the ``slicer-core``
wheel, no application): the anomaly colour table; loading a classify result folder (made with known
affines, labels and values: slicer_fixtures.py) into heat map, label map, table and crop ROI nodes
placed next to the input in the subject hierarchy; result format 2 (coverage, sides that are not
assessable, warnings, the bundle's fingerprint) and the refusal of bad result folders; writing a
volume node to a file; the models folder. The background process, the end-to-end run and
SinusAnomaly.py's logic are in test_slicer_mrml.py.
"""
from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from slicer_fixtures import (CROP_ROTATION, FINGERPRINT, INPUT_AFFINE, SHAPE, input_volume, nodes_of, result_dir,  # noqa: F401
                             sam, slicer, study_with, write_v2_result)
from SinusAnomalyMRMLLib import resultinfo  # after slicer_fixtures, which puts SinusAnomaly/ on sys.path


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

def test_load_results_creates_typed_named_nodes_on_the_files_grid(result_dir):  # noqa: F811
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


def test_result_table_rows_match_result_json(result_dir):  # noqa: F811
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


def test_crop_rois_are_centred_sized_and_oriented_like_the_crops(result_dir):  # noqa: F811
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


def test_results_join_the_input_study_and_its_transform(result_dir):  # noqa: F811
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


def test_results_without_hierarchy_item_or_input(result_dir):  # noqa: F811
    folder, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    source = input_volume(scene)  # no subject hierarchy item (plain MRML does not add one)
    out = sam.load_results(folder, scene, source)
    assert out["heatmap"].GetName() == "subject 01 anomaly heat map"
    out = sam.load_results(folder, slicer.vtkMRMLScene())  # no input node: named after result.json's input
    assert out["heatmap"].GetName() == "subject 01 anomaly heat map"
    assert out["heatmap"].GetAttribute(sam.ATTRIBUTE_INPUT) is None


def test_reloading_into_given_outputs_refills_them(result_dir):  # noqa: F811
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
def test_bad_result_folders_are_refused(result_dir, problem):  # noqa: F811
    folder, *_ = result_dir
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
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


def test_format_2_results_show_coverage_not_assessable_sides_warnings_and_fingerprint(result_dir):  # noqa: F811
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


def test_format_1_results_have_no_fingerprint_or_coverage(result_dir):  # noqa: F811
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
def test_bad_format_2_results_are_refused_naming_the_problem(result_dir, problem, message):  # noqa: F811
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

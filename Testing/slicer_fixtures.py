"""Helpers and fixtures shared by the tests of the Slicer module against Slicer's real MRML classes
(the ``slicer-core`` wheel, no application): test_slicer_mrml.py, test_slicer_results.py,
test_slicer_outputs.py and test_slicer_helpers.py.

A classify result folder made here with known affines, labels and values (:func:`result_dir`;
:func:`write_v2_result` turns it into result format 2), an input volume node, a study in the subject
hierarchy, a random-weight bundle; and SinusAnomaly.py imported with stand-ins for the parts only the
Slicer application provides (qt.QTimer, ScriptedLoadableModule, the parameter node wrapper: the
:func:`module` fixture), a stand-in classify script (:func:`use_fake_classify`) and stand-in widgets
(:func:`fake_ui`). Importing this module skips the importing test file where slicer-core is not installed.
"""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML as a Python wheel) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the 'slicer' module found is not slicer-core", allow_module_level=True)

import nibabel as nib  # noqa: E402
import vtk  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODULE_DIR = REPO / "SinusAnomaly"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

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



# --------------------------------------------------------------------------- result format 2

FINGERPRINT = "3f2a9c0d5e7b41c8a6d2e9f01b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e"


def write_v2_result(folder: Path) -> dict:
    """Turn the fixture's folder into format 2 by hand: the right side not assessable, warnings, fingerprint."""
    result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
    result["version"] = 2
    result["model"]["fingerprint"] = FINGERPRINT
    result["sides"]["left"].update({"coverage": 0.97, "assessable": True})
    result["sides"]["right"].update({"coverage": 0.41, "assessable": False, "probability": None, "spread": None,
                                     "anomalous_volume_ml": None, "verdict": "not assessable"})
    result["warnings"] = ["right: the scan shows 41 % of the sinus (below 60 %): not assessable",
                          "registration quality 0.31 is low: check the crop boxes"]
    (folder / "result.json").write_text(json.dumps(result))
    return result


# --------------------------------------------------------------------------- bundles

def random_bundle(path: Path) -> Path:
    from SinusAnomalyLib.bundle import build_untrained_bundle

    return build_untrained_bundle(path)


# --------------------------------------------------------------------------- the module with stand-ins

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

"""The Slicer module's helpers in SinusAnomalyMRMLLib (bundle selector, a run's end, the self-test's
checks) and the version check, without the Slicer application: plain Python stand-ins for Qt
widgets, Slicer's real MRML classes (``slicer-core``) as in test_slicer_mrml.py, whose fixtures
(a result folder, an input volume) are used here."""
from __future__ import annotations

import types

import pytest

from test_slicer_mrml import MODULE_DIR, input_volume, module, random_bundle, result_dir, sam, slicer  # noqa: F401
from SinusAnomalyLib import dependencies
from SinusAnomalyMRMLLib import bundleselector, classification, selftest


class _StandInCombo:
    """A QComboBox: items (text, data, tooltip), the current index, and whether signals are blocked."""

    def __init__(self):
        self.items, self.currentIndex, self.blocked, self.changes_while_unblocked = [], -1, False, 0

    @property
    def count(self):
        return len(self.items)

    def blockSignals(self, block):
        previous, self.blocked = self.blocked, block
        return previous

    def _changed(self):
        self.changes_while_unblocked += not self.blocked

    def clear(self):
        self.items.clear()
        self._changed()

    def addItem(self, text, data):
        self.items.append([text, data, None])
        self._changed()

    def setItemData(self, index, value, role):
        assert role == bundleselector.TOOLTIP_ROLE
        self.items[index][2] = value

    def itemData(self, index):
        return self.items[index][1]


def test_bundle_selector_lists_the_choices_selects_the_chosen_and_sends_no_signals(tmp_path):
    first, second = random_bundle(tmp_path / "a.sabundle"), random_bundle(tmp_path / "b.sabundle")
    combo = _StandInCombo()
    bundleselector.fill(combo, [("Default", first), ("b.sabundle", second)], "(none)")
    assert [item[:2] for item in combo.items] == [["Default", str(first)], ["b.sabundle", str(second)]]
    assert all(item[2].startswith(str(path)) for item, path in zip(combo.items, (first, second)))  # tooltips
    bundleselector.select(combo, str(second))
    assert combo.currentIndex == 1
    bundleselector.select(combo, "")  # nothing chosen: the current item stays
    assert combo.currentIndex == 1
    elsewhere = random_bundle(tmp_path / "elsewhere" / "c.sabundle")
    bundleselector.select(combo, elsewhere)  # chosen with Browse: added under its file name
    assert combo.items[-1][:2] == ["c.sabundle", str(elsewhere)] and combo.currentIndex == 2
    bundleselector.fill(combo, [], "(none)")
    assert [item[:2] for item in combo.items] == [["(none)", ""]]
    assert combo.changes_while_unblocked == 0 and combo.blocked is False


def test_version_problem_of_the_running_application():
    assert dependencies.slicer_app_version_problem(None) is None  # slicer-core: no application
    assert dependencies.slicer_app_version_problem(types.SimpleNamespace()) is None
    old = types.SimpleNamespace(majorVersion=5, minorVersion=8)
    assert dependencies.slicer_app_version_problem(old) == dependencies.slicer_version_problem(5, 8)
    current = types.SimpleNamespace(majorVersion=dependencies.MIN_SLICER[0], minorVersion=dependencies.MIN_SLICER[1])
    assert dependencies.slicer_app_version_problem(current) == dependencies.slicer_version_problem(*dependencies.MIN_SLICER)


def test_an_earlier_runs_outputs_are_found_by_their_input(result_dir):  # noqa: F811
    folder, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    head, other = input_volume(scene, "head"), input_volume(scene, "other head")
    outputs = sam.load_results(folder, scene, head)
    nodes = {key: outputs[key] for key in sam.ROLES} | {"extra": None}
    assert sam.outputs_for_input(nodes, head) == {key: outputs[key] for key in sam.ROLES}
    assert sam.outputs_for_input(nodes, other) == {} and sam.outputs_for_input(nodes, None) == {}


def test_self_test_checks_pass_on_a_good_result_and_name_what_is_wrong(result_dir):  # noqa: F811
    folder, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    assert selftest.setup_problems(scene, MODULE_DIR) == []
    head = input_volume(scene)
    outputs = sam.load_results(folder, scene, head)
    assert selftest.output_problems(outputs, head, scene) == []
    slicer.util.arrayFromVolume(outputs["labelmap"])[0, 0, 0] = 7
    slicer.util.arrayFromVolume(outputs["heatmap"])[0, 0, 0] = 1.5
    assert selftest.output_problems(outputs, head, scene) == [
        "heat map values [0.0, 1.5] outside [0, 1]", "label values [0, 1, 2, 7] other than 0, 1, 2"]
    scene.RemoveNode(outputs["roi_left"])
    assert selftest.output_problems(outputs, head, scene) == ["roi_left: not in the scene"]
    assert selftest.output_problems({}, head, scene)[0] == "heatmap: no vtkMRMLScalarVolumeNode"


@pytest.mark.parametrize("returncode, cancelled, status", [(2, False, "failed"), (-15, True, "cancelled")])
def test_a_run_that_did_not_finish_loads_nothing_and_its_files_go(tmp_path, returncode, cancelled, status):
    background = types.SimpleNamespace(poll=lambda: [], cancelled=cancelled, returncode=returncode,
                                       lines=[f"line {i}" for i in range(20)], elapsed=1.0)
    task = classification.ClassificationTask(None, tmp_path / "m.sabundle", False, tmp_path / "run", background)
    task.resultDir.mkdir(parents=True)
    classification.conclude(task, slicer.vtkMRMLScene())
    assert task.status == status and task.outputs == {}
    if status == "failed":
        assert task.errorMessage.splitlines() == ["the classify process ended with exit code 2",
                                                  *[f"line {i}" for i in range(5, 20)]]
    classification.remove_files(task, keep=True)
    assert task.tempDir.is_dir()
    classification.remove_files(task)
    assert not task.tempDir.exists()


def test_widget_lists_the_shipped_default_first_and_selects_it(module, tmp_path, monkeypatch):  # noqa: F811
    from SinusAnomalyLib import modelstore

    default = tmp_path / "Resources" / "Models" / "synthetic-default.sabundle"
    mine = tmp_path / "models" / "mine.sabundle"
    for path in (default, mine):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"bundle")
    monkeypatch.setattr(modelstore, "DEFAULT_BUNDLE", default)
    monkeypatch.setenv(modelstore.MODELS_ENV, str(tmp_path / "models"))
    widget = module.SinusAnomalyWidget()
    widget.ui = types.SimpleNamespace(modelComboBox=_StandInCombo(), resultsTableView=types.SimpleNamespace(
        setMRMLTableNode=lambda node: None), inputSelector=types.SimpleNamespace(
        sortFilterProxyModel=lambda: types.SimpleNamespace(hiddenNodeIDs=())))
    widget._updateButtons = lambda: None
    widget.logic = module.SinusAnomalyLogic()
    parameters = types.SimpleNamespace(inputVolume=None, modelPath="", resultTable=None,
                                       connectGui=lambda ui: "gui tag", disconnectGui=lambda tag: None)
    monkeypatch.setattr(widget.logic, "getParameterNode", lambda: parameters)
    for name in ("addObserver", "removeObserver"):  # a stand-in node sends no events
        monkeypatch.setattr(widget, name, lambda *args: None, raising=False)
    widget.initializeParameterNode()
    widget.refreshModelList()
    assert parameters.modelPath == str(default)
    assert [item[:2] for item in widget.ui.modelComboBox.items] == [
        ["Default (synthetic heads, not a clinical device)", str(default)], ["mine.sabundle", str(mine)]]
    assert widget.ui.modelComboBox.currentIndex == 0
    widget.onModelComboChanged(1)  # the user's choice reaches the parameter node and stays
    assert parameters.modelPath == str(mine)
    widget.initializeParameterNode()
    assert parameters.modelPath == str(mine)

    default.unlink()
    mine.unlink()
    widget.refreshModelList()
    assert widget.ui.modelComboBox.items[0][:2] == ["(no bundles in the models folder)", ""]

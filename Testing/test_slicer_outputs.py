"""The Slicer module keeps its own results apart from its inputs, and a late Cancel keeps a finished
result (issue 26), against Slicer's real MRML classes (``slicer-core``) as in test_slicer_mrml.py,
whose helpers and fixtures (a result folder, the module imported with stand-ins) are used here."""
from __future__ import annotations

import os
import time
import types

import pytest

from test_slicer_mrml import fake_ui, input_volume, module, result_dir, sam, slicer, use_fake_classify  # noqa: F401
from SinusAnomalyMRMLLib import process as proc


def test_results_are_no_input_candidates_and_are_listed_for_hiding(result_dir):  # noqa: F811
    folder, *_ = result_dir
    scene = slicer.vtkMRMLScene()
    earlier = input_volume(scene, "earlier head")
    out = sam.load_results(folder, scene, earlier)
    scene.RemoveNode(earlier)  # left: its heat map (a scalar volume) and label map, first in the scene
    assert sam.input_volume_candidate(scene) is None
    head = input_volume(scene, "new head")
    assert sam.input_volume_candidate(scene) is head
    assert sam.result_volume_ids(scene) == [out["heatmap"].GetID(), out["labelmap"].GetID()]
    assert sam.is_result_node(out["table"]) and not sam.is_result_node(head) and not sam.is_result_node(None)


class _StandInProxyModel:
    hiddenNodeIDs = ()


def test_widget_hides_results_from_the_input_selector_and_never_picks_one(module, result_dir, monkeypatch):  # noqa: F811
    folder, *_ = result_dir
    scene = slicer.mrmlScene
    earlier = input_volume(scene, "earlier head")
    out = sam.load_results(folder, scene, earlier)
    scene.RemoveNode(earlier)
    head = input_volume(scene, "new head")
    widget = module.SinusAnomalyWidget()
    widget.ui = fake_ui()
    proxy = _StandInProxyModel()
    widget.ui.inputSelector.sortFilterProxyModel = lambda: proxy
    widget.ui.resultsTableView = types.SimpleNamespace(setMRMLTableNode=lambda node: None)
    widget.ui.modelComboBox.count = 0  # no bundle listed, none chosen
    widget.logic = module.SinusAnomalyLogic()
    parameters = types.SimpleNamespace(inputVolume=None, modelPath="", heatmapVolume=None, resultTable=None,
                                       connectGui=lambda ui: "gui tag", disconnectGui=lambda tag: None)
    monkeypatch.setattr(widget.logic, "getParameterNode", lambda: parameters)
    for name in ("addObserver", "removeObserver"):  # a stand-in node sends no events
        monkeypatch.setattr(widget, name, lambda *args: None, raising=False)
    monkeypatch.setattr(module, "bundle_choices", lambda: [])
    widget.initializeParameterNode()
    assert parameters.inputVolume is head  # not the heat map, the first scalar volume of the scene
    assert list(proxy.hiddenNodeIDs) == [out["heatmap"].GetID(), out["labelmap"].GetID()]
    # a scene saved with a heat map as the input (as the module used to pick): replaced by a head
    parameters.inputVolume = out["heatmap"]
    widget.initializeParameterNode()
    assert parameters.inputVolume is head


def test_finished_outcome_keeps_a_whole_result_whatever_the_cancel(tmp_path):
    def background(cancelled, returncode):
        return types.SimpleNamespace(cancelled=cancelled, returncode=returncode)

    assert proc.finished_outcome(background(False, 0), tmp_path) == "load"
    assert proc.finished_outcome(background(False, 2), tmp_path) == "failed"
    assert proc.finished_outcome(background(True, -15), tmp_path) == "cancelled"  # no result yet: cancelled
    (tmp_path / "result.json").write_text("{}")  # the folder is moved in whole, result.json with it
    assert proc.finished_outcome(background(True, 0), tmp_path) == "load"
    assert proc.finished_outcome(background(True, -15), tmp_path) == "load"  # ended while exiting
    assert proc.finished_outcome(background(False, 2), tmp_path) == "failed"  # no Cancel: its exit code rules


@pytest.mark.skipif(not hasattr(os, "waitid"), reason="waits for the process with os.waitid")
def test_a_cancel_just_after_the_process_finished_keeps_the_result(module, result_dir, tmp_path, monkeypatch):  # noqa: F811
    folder, *_ = result_dir
    use_fake_classify(module, folder, tmp_path, monkeypatch)
    (tmp_path / "model.sabundle").write_bytes(b"bundle")
    logic = module.SinusAnomalyLogic()
    done = []
    task = logic.classify(input_volume(slicer.mrmlScene), tmp_path / "model.sabundle", wait=False,
                          completedCallback=done.append)
    try:  # until the process has exited, left for the task to collect (the timer has not polled it yet)
        os.waitid(os.P_PID, task.process.pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        pass  # collected already by the output reader: exited all the same
    logic.cancel(task)  # the user's Cancel, arriving before the module noticed the end
    assert task.process.cancelled and task.status == "running"
    deadline = time.time() + 30
    while not done and time.time() < deadline:
        task.timer.fire()
        time.sleep(0.02)
    assert done == [task] and task.status == "completed"
    assert task.outputs["heatmap"].GetName() == "subject 01 anomaly heat map" and task.outputs["table"].GetNumberOfRows() == 2

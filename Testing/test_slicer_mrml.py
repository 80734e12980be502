"""The Slicer module against Slicer's real MRML classes (the ``slicer-core`` wheel, no application):
the background process (command, environment, output streaming, cancel); a bundle's tooltip; one
end-to-end run: a posed reference head in a volume node, written by the module's writer, classified
by ``slicer_script.py classify`` in a background process with a random-weight bundle, and the result
folder loaded back into the scene. Last, SinusAnomaly.py's logic (blocking and timer-polled runs,
output reuse, Cancel, failures) with stand-ins for the parts only the Slicer application provides
(qt.QTimer, ScriptedLoadableModule, the parameter node wrapper) and a stand-in classify script.

The colour table, loading result folders (formats 1 and 2), writing a volume node to a file and the
models folder are tested in test_slicer_results.py. The helpers and fixtures both files use are in
slicer_fixtures.py.
"""
from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import SimpleITK as sitk

# fake_ui, module, random_bundle, result_dir, use_fake_classify: also imported from here by
# test_slicer_outputs.py and test_slicer_helpers.py
from slicer_fixtures import (FINGERPRINT, MODULE_DIR, REPO, SHAPE, fake_ui, input_volume, module, random_bundle,  # noqa: F401
                             result_dir, sam, slicer, study_with, use_fake_classify, write_v2_result)
from SinusAnomalyMRMLLib import process as proc  # after slicer_fixtures, which puts SinusAnomaly/ on sys.path
from SinusAnomalyMRMLLib import resultinfo


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

def test_module_logic_runs_classify_in_the_background(module, result_dir, tmp_path, monkeypatch):  # noqa: F811
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


def test_widget_shows_format_2_results_warnings_and_fingerprint(module, result_dir):  # noqa: F811
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


def test_module_on_a_slicer_older_than_5_10_says_why(module, monkeypatch):  # noqa: F811
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


def test_logic_names_a_missing_python_slicer(module, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(proc.PythonSlicerNotFoundError, match="PythonSlicer .*reinstall 3D Slicer"):
        module.SinusAnomalyLogic.pythonExecutable()


def test_logic_checks_versions_before_starting_and_installs_with_the_shared_policy(module, monkeypatch, tmp_path):  # noqa: F811
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


def test_self_test_skips_with_a_clear_message_in_a_testing_build_without_the_packages(module, monkeypatch):  # noqa: F811
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


def test_closing_the_module_ends_a_running_classification(module, tmp_path):  # noqa: F811
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

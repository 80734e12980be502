"""One ``classify`` run of the module: starting its background process and, once that has ended,
its outcome and its results in the scene.

The module's Logic decides when (it polls from a ``qt.QTimer`` or waits); this module does the
work and imports no ``qt``: :mod:`.results` brings ``slicer`` and ``vtk``.
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import slicer

from . import process, results
from .resultinfo import warnings_of

INPUT_FILE = "input.nrrd"  # the input volume as written for the background process, in the task's folder
RESULT_FOLDER = "result"  # where classify writes its result folder, in the task's folder
ERROR_TAIL_LINES = 15  # lines of the process's output quoted when it failed


class ClassificationTask:
    """One classify run: input, temporary folder, background process and, once loaded, the outputs.

    ``status``: "running", "loading", "completed", "failed" or "cancelled".
    """

    def __init__(self, inputVolumeNode, modelPath, forceCpu, tempDir, backgroundProcess):
        self.inputVolumeNode = inputVolumeNode
        self.modelPath = str(modelPath)
        self.forceCpu = bool(forceCpu)
        self.tempDir = Path(tempDir)
        self.resultDir = self.tempDir / RESULT_FOLDER
        self.process = backgroundProcess
        self.status = "running"
        self.outputs = {}
        self.errorMessage = ""
        self.reuseOutputs = None
        self.logCallback = None
        self.completedCallback = None
        self.loadingCallback = None
        self.timer = None

    @property
    def running(self) -> bool:
        return self.status in ("running", "loading")

    @property
    def elapsed(self) -> float:
        return self.process.elapsed


def process_environment(force_cpu: bool, python_paths=()) -> dict:
    """The environment Slicer was started with (PythonSlicer adds its own settings) with ours
    (:func:`.process.classify_environment`); the current one where Slicer cannot say."""
    try:
        base = slicer.util.startupEnvironment()
    except Exception:  # noqa: BLE001 (older Slicer or no application: the current environment)
        base = dict(os.environ)
    return process.classify_environment(base, force_cpu, python_paths=python_paths)


def start_task(input_volume_node, model_path, force_cpu: bool, temp_dir: str | Path, python: str, script: str | Path,
               env: dict) -> ClassificationTask:
    """Write ``input_volume_node`` into ``temp_dir`` and start ``classify`` on it in the background
    (:func:`.process.classify_command`, run by ``python`` with ``env``); returns the running task."""
    temp_dir = Path(temp_dir)
    input_file = temp_dir / INPUT_FILE
    results.write_volume_to_file(input_volume_node, input_file)
    command = process.classify_command(python, script, input_file, model_path, temp_dir / RESULT_FOLDER,
                                       force_cpu=force_cpu)
    logging.info(f"SinusAnomaly: {' '.join(command)}" + (" (CUDA_VISIBLE_DEVICES=-1)" if force_cpu else ""))
    background = process.ClassificationProcess(command, env=env, cwd=temp_dir)
    task = ClassificationTask(input_volume_node, model_path, force_cpu, temp_dir, background)
    background.start()
    return task


def wait(task: ClassificationTask, on_line=None) -> None:
    """Block until the process of ``task`` has ended; ``on_line`` gets each output line, and the
    application (when there is one) processes its events in between."""
    def forward(line):
        if on_line:
            on_line(line)
        if getattr(slicer, "app", None) is not None:
            slicer.app.processEvents()

    task.process.wait(on_line=forward)


def conclude(task: ClassificationTask, scene, on_loaded=None) -> None:
    """Set the status of ``task`` whose process has ended: "cancelled", "failed" (``errorMessage``
    says why) or, once its result folder is loaded into ``scene`` (``task.outputs``, see
    :func:`.results.load_results`), "completed". ``task.loadingCallback`` runs before the loading,
    ``on_loaded(task)`` after it; a failure in either of those last two fails the task."""
    background = task.process
    background.poll()
    outcome = process.finished_outcome(background, task.resultDir)
    if outcome == "cancelled":
        task.status = "cancelled"
    elif outcome == "failed":
        task.status = "failed"
        tail = "\n".join(background.lines[-ERROR_TAIL_LINES:])
        task.errorMessage = f"the classify process ended with exit code {background.returncode}\n{tail}"
    elif task.inputVolumeNode.GetScene() is None:
        task.status = "cancelled"
        task.errorMessage = "the input volume was removed from the scene"
    else:
        task.status = "loading"
        if task.loadingCallback:
            task.loadingCallback(task)
        try:
            task.outputs = results.load_results(task.resultDir, scene, task.inputVolumeNode, outputs=task.reuseOutputs)
            task.status = "completed"
            for warning in warnings_of(task.outputs["result"]):
                logging.warning(f"SinusAnomaly: {warning}")
            if on_loaded:
                on_loaded(task)
        except Exception as exc:  # noqa: BLE001 (reported through the task)
            logging.exception("SinusAnomaly: loading the results failed")
            task.status = "failed"
            task.errorMessage = f"loading the results failed: {exc}"


def remove_files(task: ClassificationTask, keep: bool = False) -> None:
    """Delete the task's temporary folder (input, result), or with ``keep`` say where it stays."""
    if keep:
        logging.info(f"SinusAnomaly: temporary files kept in {task.tempDir}")
    else:
        shutil.rmtree(task.tempDir, ignore_errors=True)

"""SinusAnomaly: anomalies of the maxillary sinuses on head MRI, as a 3D Slicer scripted module.

The widget only wires the GUI; the logic (usable in batch mode and from scripts) writes the input
volume to a temporary file, runs ``SinusAnomalyTraining/slicer_script.py classify`` with
``PythonSlicer`` in a background process (the GUI never freezes; Cancel ends it), and loads the
result folder into the scene with ``SinusAnomalyMRMLLib`` (Qt-free, tested outside Slicer).

Needs 3D Slicer 5.10 or newer (Python 3.12); on an older Slicer the module only shows why.
Only this file may sit at the top of the module folder: Slicer's scripted-module factory loads
every ``*.py`` there as a module, so the helpers live in ``SinusAnomalyMRMLLib/``.
"""
import logging
import sys
import time
from pathlib import Path

import qt
import vtk

import slicer
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.util import VTKObservationMixin
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsROINode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLTableNode,
)

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer before 5.4 has no translation support
    def _(text):
        return text

from SinusAnomalyLib.dependencies import slicer_app_version_problem

SLICER_VERSION_PROBLEM = slicer_app_version_problem(getattr(slicer, "app", None))  # None outside the application
if SLICER_VERSION_PROBLEM:
    logging.error(SLICER_VERSION_PROBLEM)

try:
    from SinusAnomalyLib import dependencies
    from SinusAnomalyLib.modelstore import bundle_choices, models_folder
    from SinusAnomalyMRMLLib import bundleselector, classification, installer, process, resultinfo, results, selftest
    from SinusAnomalyMRMLLib.classification import ClassificationTask  # noqa: F401  (for scripts)
except Exception:  # noqa: BLE001  (on an unsupported Slicer the module only shows SLICER_VERSION_PROBLEM)
    if not SLICER_VERSION_PROBLEM:
        raise

MODULE_DIR = Path(__file__).resolve().parent
SETUP_HINT = "click Classify to install them, or run: PythonSlicer SinusAnomalyTraining/slicer_script.py setup"


#
# SinusAnomaly
#
class SinusAnomaly(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help & Acknowledgement section."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Sinus Anomaly")
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []  # the PyTorch extension (EXTENSION_DEPENDS) is used through PyTorchUtils when loaded
        self.parent.contributors = ["SinusAnomaly developers"]
        self.parent.helpText = (f"<p><b>{SLICER_VERSION_PROBLEM}</b></p>" if SLICER_VERSION_PROBLEM else "") + _("""
Detects anomalies (mucosal thickening, polyps, retention cysts, fully occupied sinuses) in both
maxillary sinuses of a head MRI. Both sinuses are located by registration to a reference head and
cropped (64 mm boxes, shown as ROIs); each crop is classified by the folds of a model bundle
(probability, verdict against the bundle's threshold, spread across folds), and a convolutional
autoencoder's residuals give a heat map and an anomaly label map (1 left, 2 right).
<br><br>
Method: Bhattacharya et al., <i>Self-supervised learning for classifying paranasal anomalies in the
maxillary sinus</i>.
<br><br>
<b>Not a clinical device; not for clinical use. No clinically validated weights ship with it.</b>
The model selector lists first the default bundle shipped with the module, "Default (synthetic
heads, not a clinical device)": trained on synthetic heads only, never on patient scans, and
selected by default. Beside it are the model bundles (*.sabundle) in the models folder
($SINUS_ANOMALY_MODELS or ~/.sinus-anomaly/models), such as those you trained and exported with
the <tt>sinus-anomaly</tt> command-line tools; Browse chooses one elsewhere.
""")
        self.parent.acknowledgementText = _("""
Implements the method of D. Bhattacharya, F. Behrendt, B. T. Becker, L. Maack, D. Beyersdorff,
E. Petersen, M. Petersen, B. Cheng, D. Eggert, C. Betz, A. S. Hoffmann and A. Schlaefer (Hamburg
University of Technology and University Medical Center Hamburg-Eppendorf). The reference head is
derived from pydeface's average head (MIT licence). Built on 3D Slicer, PyTorch, MONAI and SimpleITK.
""")


#
# SinusAnomalyParameterNode
#
@parameterNodeWrapper
class SinusAnomalyParameterNode:
    """The module's parameters, saved with the scene.

    inputVolume - the head MRI to classify.
    modelPath - the model bundle (*.sabundle) file.
    forceCpu - run on the CPU even when a GPU is available (CUDA_VISIBLE_DEVICES=-1).
    heatmapVolume, labelmapVolume, resultTable, leftCropROI, rightCropROI - the latest results.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    forceCpu: bool = False
    heatmapVolume: vtkMRMLScalarVolumeNode
    labelmapVolume: vtkMRMLLabelMapVolumeNode
    resultTable: vtkMRMLTableNode
    leftCropROI: vtkMRMLMarkupsROINode
    rightCropROI: vtkMRMLMarkupsROINode


OUTPUT_PARAMETERS = {  # SinusAnomalyMRMLLib.results.load_results key -> parameter name
    "heatmap": "heatmapVolume",
    "labelmap": "labelmapVolume",
    "table": "resultTable",
    "roi_left": "leftCropROI",
    "roi_right": "rightCropROI",
}


#
# SinusAnomalyWidget
#
class SinusAnomalyWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI wiring only; all work is done by SinusAnomalyLogic."""

    IDLE, STARTING, RUNNING, CANCELLING, LOADING = range(5)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task = None
        self._state = self.IDLE

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if SLICER_VERSION_PROBLEM:
            message = qt.QLabel(SLICER_VERSION_PROBLEM)
            message.wordWrap = True
            self.layout.addWidget(message)
            self.layout.addStretch(1)
            return

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SinusAnomaly.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level widget's mrmlSceneChanged(vtkMRMLScene*) to every MRML widget
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = SinusAnomalyLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelComboChanged)
        self.ui.browseModelButton.connect("clicked()", self.onBrowseModel)
        self.ui.refreshModelsButton.connect("clicked()", self.refreshModelList)
        self.ui.openModelsFolderButton.connect("clicked()", self.onOpenModelsFolder)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.onHeatmapOpacityChanged)
        self.ui.showResultsButton.connect("clicked()", self.onShowResults)

        self.ui.progressBar.hide()
        self.ui.modelsFolderLabel.text = str(models_folder())
        self.refreshModelList()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is None:
            return
        if self._task is not None and self._task.running:
            # the module is going away (application exit, reload): unlike Cancel, wait until the
            # process has ended (killed after the grace period) so that none outlives Slicer
            self.logic.cancel(self._task)
            self._task.process.wait(timeout=process.CANCEL_GRACE_SECONDS + 2.0)
        self.removeObservers()

    def enter(self) -> None:
        if self.logic is None:
            return
        self.initializeParameterNode()
        self.refreshModelList()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self._task is not None and self._task.running:
            self.logic.cancel(self._task)  # its input volume is about to disappear
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    # ------------------------------------------------------------------ parameter node

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        candidate, current = results.input_volume_candidate(slicer.mrmlScene), self._parameterNode.inputVolume
        if candidate and (not current or results.is_result_node(current)):  # a result of ours is no input
            self._parameterNode.inputVolume = candidate
        if not self._parameterNode.modelPath and (choices := bundle_choices()):
            self._parameterNode.modelPath = str(choices[0][1])  # the shipped default where there is one

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # widgets with the dynamic property SlicerParameterName (see the .ui) follow the node
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.ui.inputSelector.sortFilterProxyModel().hiddenNodeIDs = results.result_volume_ids(slicer.mrmlScene)
        self._selectModelInCombo()
        table = self._parameterNode.resultTable if self._parameterNode else None
        self.ui.resultsTableView.setMRMLTableNode(table)
        self._updateButtons()

    # ------------------------------------------------------------------ model bundles

    def refreshModelList(self) -> None:
        bundleselector.fill(self.ui.modelComboBox, bundle_choices(), _("(no bundles in the models folder)"))
        self._selectModelInCombo()

    def _selectModelInCombo(self) -> None:
        if self._parameterNode:
            bundleselector.select(self.ui.modelComboBox, self._parameterNode.modelPath)

    def onModelComboChanged(self, index) -> None:
        if not self._parameterNode or index < 0:
            return
        path = self.ui.modelComboBox.itemData(index)
        if path:
            self._parameterNode.modelPath = str(path)

    def onBrowseModel(self) -> None:
        start = self._parameterNode.modelPath if self._parameterNode and self._parameterNode.modelPath else str(models_folder())
        path = qt.QFileDialog.getOpenFileName(
            slicer.util.mainWindow(), _("Choose a SinusAnomaly model bundle"), start,
            _("SinusAnomaly model bundles (*.sabundle);;All files (*)"))
        if path and self._parameterNode:
            self._parameterNode.modelPath = str(path)

    def onOpenModelsFolder(self) -> None:
        folder = models_folder()
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    # ------------------------------------------------------------------ processing

    def _updateButtons(self) -> None:
        button = self.ui.applyButton
        if self._state == self.IDLE:
            button.text = _("Classify")
            problem = self.logic.inputProblem(
                self._parameterNode.inputVolume if self._parameterNode else None,
                self._parameterNode.modelPath if self._parameterNode else "") if self.logic else "no logic"
            button.enabled = problem is None
            button.toolTip = problem or _("Classify both maxillary sinuses of the input volume")
        elif self._state == self.RUNNING:
            button.text = _("Cancel")
            button.enabled = True
            button.toolTip = _("Stop the running classification")
        else:
            button.enabled = False
            button.toolTip = _("Please wait")
        idle = self._state == self.IDLE
        for widget in (self.ui.inputSelector, self.ui.modelComboBox, self.ui.browseModelButton,
                       self.ui.refreshModelsButton, self.ui.forceCpuCheckBox):
            widget.enabled = idle
        hasResults = bool(self._parameterNode and self._parameterNode.heatmapVolume)
        self.ui.showResultsButton.enabled = hasResults

    def _setState(self, state, message=None) -> None:
        self._state = state
        self._updateButtons()
        bar = self.ui.progressBar
        steps = {self.STARTING: (1, _("Preparing")), self.RUNNING: (2, _("Classifying")),
                 self.CANCELLING: (2, _("Cancelling")), self.LOADING: (3, _("Loading results"))}
        value, text = steps.get(state, (4, message or _("Done")))
        bar.setRange(0, 4)
        bar.value = value
        bar.setFormat(text)
        if state == self.IDLE:
            qt.QTimer.singleShot(2000, lambda: bar.hide() if self._state == self.IDLE else None)
        else:
            bar.show()
            self.addLog(text + "...")
        slicer.app.processEvents()

    def addLog(self, text) -> None:
        log = self.ui.statusLabel
        if log.document().characterCount() > 256 * 1024:
            log.clear()
            log.appendPlainText(_("(log cleared)"))
        log.appendPlainText(str(text))
        log.ensureCursorVisible()

    def onApplyButton(self) -> None:
        if self._state == self.RUNNING and self._task is not None:
            self._setState(self.CANCELLING)
            self.logic.cancel(self._task)
            return
        if self._state != self.IDLE:
            return
        self.ui.statusLabel.clear()
        self._setState(self.STARTING)
        with slicer.util.tryWithErrorDisplay(_("Failed to start the classification."), waitCursor=True):
            try:
                pn = self._parameterNode
                if not self.logic.ensureDependencies(askConfirmation=True):
                    self.addLog(_("Python packages were not installed; nothing was run."))
                    self._setState(self.IDLE, _("Not run"))
                    return
                self._task = self.logic.classify(
                    pn.inputVolume, pn.modelPath, forceCpu=pn.forceCpu, wait=False,
                    logCallback=self.addLog, completedCallback=self.onTaskCompleted,
                    loadingCallback=lambda task: self._setState(self.LOADING),
                    outputs=self.logic.previousOutputs(pn, pn.inputVolume), installDependencies=False)
                self._setState(self.RUNNING)
            except Exception:
                self._task = None
                self._setState(self.IDLE, _("Failed"))
                raise

    def onTaskCompleted(self, task) -> None:
        self._task = None
        if task.status == "completed":
            if self._parameterNode:
                for key, name in OUTPUT_PARAMETERS.items():
                    setattr(self._parameterNode, name, task.outputs.get(key))
            result = task.outputs["result"]
            for line in resultinfo.summary_lines(result):
                self.addLog(line)
            self.ui.modelFingerprintLabel.text = resultinfo.model_line(result)
            warnings = resultinfo.warnings_of(result)
            self.addLog(_("Finished in {seconds:.1f} s.").format(seconds=task.elapsed))
            self.ui.outputsCollapsibleButton.collapsed = False
            self._setState(self.IDLE, _("Done, {count} warning(s): see the log").format(count=len(warnings))
                           if warnings else _("Done"))
        elif task.status == "cancelled":
            self.addLog(_("Cancelled."))
            self._setState(self.IDLE, _("Cancelled"))
        else:
            self.addLog(_("Failed: {message}").format(message=task.errorMessage))
            self._setState(self.IDLE, _("Failed"))
            slicer.util.errorDisplay(_("Classification failed."), detailedText=task.errorMessage)

    # ------------------------------------------------------------------ display

    def onHeatmapOpacityChanged(self, value) -> None:
        slicer.util.setSliceViewerLayers(foregroundOpacity=value)

    def onShowResults(self) -> None:
        pn = self._parameterNode
        if not pn or not pn.heatmapVolume:
            return
        outputs = {key: getattr(pn, name) for key, name in OUTPUT_PARAMETERS.items()}
        self.logic.showResults(pn.inputVolume, outputs, foregroundOpacity=self.ui.heatmapOpacitySlider.value)


#
# SinusAnomalyLogic
#
class SinusAnomalyLogic(ScriptedLoadableModuleLogic):
    """Classification of a volume node with a model bundle; usable without the widget.

    From a script (blocking)::

        logic = SinusAnomalyLogic()
        task = logic.classify(volumeNode, "/path/model.sabundle", forceCpu=True, wait=True)
        task.outputs["table"], task.outputs["heatmap"], task.outputs["labelmap"], ...
    """

    POLL_INTERVAL_MS = 200

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.keepTemporaryFiles = False  # set True to inspect the background process's files
        self.showResultsWhenDone = True
        self._tasks = []

    def getParameterNode(self):
        return SinusAnomalyParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ environment

    @staticmethod
    def trainingScript() -> Path:
        return process.training_script(MODULE_DIR)

    @staticmethod
    def pythonExecutable() -> str:
        """PythonSlicer: Slicer's Python launcher, on PATH inside Slicer (else next to this interpreter);
        a clear error naming where it looked when it is in neither place."""
        return process.find_python_slicer(sys.executable)

    @staticmethod
    def processEnvironment(forceCpu: bool) -> dict:
        """The environment Slicer was started with (PythonSlicer adds its own settings), plus ours."""
        script = SinusAnomalyLogic.trainingScript()
        return classification.process_environment(forceCpu, python_paths=[MODULE_DIR, script.parent.parent])

    # ------------------------------------------------------------------ dependencies

    @staticmethod
    def missingDependencies() -> list:
        """What is missing or outdated among the background process's Python packages
        (SinusAnomalyLib.dependencies.Problem, each says what to update)."""
        return dependencies.problems()

    def ensureDependencies(self, askConfirmation: bool = True) -> bool:
        """Install torch, MONAI and the other packages the background process needs, if missing or
        outdated (SinusAnomalyMRMLLib.installer: the PyTorch extension for torch when installed;
        Slicer's SimpleITK and numpy are never replaced).

        Returns False when the user declined; raises when the installation failed.
        """
        if not self.missingDependencies():
            return True
        def askUser(message):
            return slicer.util.confirmOkCancelDisplay(
                message + "\n\n" + _("Download and install them now? This can take several minutes."),
                _("Install Python packages"))

        confirm = askUser if askConfirmation and not slicer.app.testingEnabled() else None
        # Errors (no network, pip failures) propagate: the widget shows them, scripts get the exception.
        return installer.install_into_slicer(confirm=confirm, interactive=askConfirmation,
                                             work_dir=slicer.util.tempDirectory("SinusAnomalyPip"))

    # ------------------------------------------------------------------ classification

    @staticmethod
    def inputProblem(inputVolumeNode, modelPath):
        """Why classification cannot start with these inputs, or None."""
        if inputVolumeNode is None:
            return _("Select an input volume")
        if inputVolumeNode.GetImageData() is None:
            return _("The input volume has no image data")
        if not modelPath:
            return _("Choose a model bundle (*.sabundle), see the module help")
        if not Path(modelPath).is_file():
            return _("Model bundle not found: {path}").format(path=modelPath)
        return None

    @staticmethod
    def previousOutputs(parameterNode, inputVolumeNode) -> dict:
        """Result nodes of an earlier run on the same input (they are refilled instead of duplicated)."""
        nodes = {key: getattr(parameterNode, name) for key, name in OUTPUT_PARAMETERS.items()} if parameterNode else {}
        return results.outputs_for_input(nodes, inputVolumeNode)

    def classify(self, inputVolumeNode, modelPath, forceCpu=False, wait=True, logCallback=None,
                 completedCallback=None, loadingCallback=None, outputs=None, installDependencies=True):
        """Classify both maxillary sinuses of ``inputVolumeNode`` with the bundle at ``modelPath``.

        Runs ``classify`` in a background PythonSlicer process (``CUDA_VISIBLE_DEVICES=-1`` and
        ``--device cpu`` with ``forceCpu``). ``wait=True`` blocks until the results are loaded and
        raises RuntimeError when the process fails; ``wait=False`` returns at once and calls
        ``completedCallback(task)`` at the end (``task.status`` says how it went). The loaded nodes
        are in ``task.outputs`` (see SinusAnomalyMRMLLib.results.load_results); ``outputs`` may hold nodes
        of an earlier run to refill.
        """
        problem = self.inputProblem(inputVolumeNode, modelPath)
        if problem:
            raise ValueError(problem)
        if installDependencies and not self.ensureDependencies(askConfirmation=True):
            raise RuntimeError("SinusAnomaly's Python packages are not installed")
        problems = self.missingDependencies()
        if problems:  # versions are checked here, before the background process would fail on them
            raise RuntimeError(dependencies.describe(problems, SETUP_HINT))
        script, python, env = self.trainingScript(), self.pythonExecutable(), self.processEnvironment(forceCpu)
        tempDir = Path(slicer.util.tempDirectory("SinusAnomaly"))
        self._log(logCallback, _("Writing the input volume to {path}").format(path=tempDir / classification.INPUT_FILE))
        task = classification.start_task(inputVolumeNode, modelPath, forceCpu, tempDir, python, script, env)
        task.reuseOutputs, task.logCallback = outputs, logCallback
        task.completedCallback, task.loadingCallback = completedCallback, loadingCallback
        self._tasks.append(task)
        self._log(logCallback, _("Started the classification (process {pid})").format(pid=task.process.pid))

        if wait:
            classification.wait(task, on_line=lambda line: self._log(logCallback, line))
            self._finish(task)
            if task.status != "completed":
                raise RuntimeError(f"SinusAnomaly classification {task.status}: {task.errorMessage}")
            return task

        task.timer = qt.QTimer()
        task.timer.setInterval(self.POLL_INTERVAL_MS)
        task.timer.connect("timeout()", lambda: self._poll(task))
        task.timer.start()
        return task

    def cancel(self, task=None) -> None:
        """End the background process of ``task`` (default: every running one)."""
        # The timer (wait=False) or the waiting loop (wait=True) then sees the process end and
        # finishes the task with status "cancelled".
        for t in ([task] if task is not None else list(self._tasks)):
            if t is not None and t.status == "running":
                t.process.cancel()

    def _poll(self, task) -> None:
        for line in task.process.poll():
            self._log(task.logCallback, line)
        if task.process.finished:
            task.timer.stop()
            self._finish(task)

    def _finish(self, task) -> None:
        if task.status != "running":
            return  # finished already
        try:
            classification.conclude(task, slicer.mrmlScene, on_loaded=(
                lambda t: self.showResults(t.inputVolumeNode, t.outputs)) if self.showResultsWhenDone else None)
        finally:
            if task in self._tasks:
                self._tasks.remove(task)
            classification.remove_files(task, keep=self.keepTemporaryFiles)
            if task.completedCallback:
                task.completedCallback(task)

    @staticmethod
    def _log(callback, text) -> None:
        logging.info(text)
        if callback:
            callback(text)

    # ------------------------------------------------------------------ display

    @staticmethod
    def showResults(inputVolumeNode, outputs, foregroundOpacity=0.4) -> None:
        """Input as background, heat map as coloured foreground, anomalies as label layer; ROIs shown."""
        results.show_results(inputVolumeNode, outputs, foreground_opacity=foregroundOpacity)


#
# SinusAnomalyTest
#
class SinusAnomalyTest(ScriptedLoadableModuleTest):
    """Self-test (inside Slicer): colour table, models folder, and a classification of a synthetic head."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ColorTableAndModelsFolder()
        self.setUp()
        self.test_ClassifySyntheticHead()

    def test_ColorTableAndModelsFolder(self):
        self.delayDisplay("Colour table and models folder")
        self.assertEqual(selftest.setup_problems(slicer.mrmlScene, MODULE_DIR), [])
        self.delayDisplay("Colour table and models folder: passed")

    def test_ClassifySyntheticHead(self):
        self.delayDisplay("Classification of a synthetic head")
        logic = SinusAnomalyLogic()
        problems = logic.missingDependencies()
        if problems:
            # Slicer's extension build machines install no torch: there the test is reported as skipped
            # (not passed, not failed); interactively it says so and the other checks still count
            message = "Skipped the classification: " + dependencies.describe(problems, SETUP_HINT)
            self.delayDisplay(message)
            if slicer.app.testingEnabled():
                self.skipTest(message)
            return

        folder = Path(slicer.util.tempDirectory("SinusAnomalyTest"))
        imagePath, bundlePath = selftest.synthetic_head_and_bundle(folder)
        volumeNode = slicer.util.loadVolume(str(imagePath))
        self.delayDisplay("Synthetic head loaded; classifying (background process)")

        start = time.time()
        task = logic.classify(volumeNode, bundlePath, forceCpu=True, wait=True)
        self.assertEqual(task.status, "completed")
        self.assertEqual(selftest.output_problems(task.outputs, volumeNode, slicer.mrmlScene), [])
        self.delayDisplay(f"Classification of a synthetic head: passed ({time.time() - start:.1f} s)")

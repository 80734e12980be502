"""The Slicer-facing part of SinusAnomaly that needs MRML but not Qt.

Everything here works in 3D Slicer and in plain Python with the ``slicer-core`` wheel (Slicer's
real MRML classes without the application), which is how ``Testing/test_slicer_mrml.py`` tests it:

* writing an input volume node to a file for the background ``classify`` process
  (:func:`write_volume_to_file`);
* turning a ``classify`` result folder into MRML nodes (:func:`load_results`): the residual heat
  map as a coloured scalar volume, the anomaly label map with its colour table
  (:func:`create_anomaly_color_table`), the results table and both crop boxes as ROIs, placed
  next to the input volume in the subject hierarchy;
* the per-user models folder (:func:`models_folder`, :func:`list_bundles`) and what each bundle
  is (:func:`bundle_tooltip`);
* locating the ``classify`` entry script, building its command line and environment, and running
  it as a background process whose output is read by a thread and collected by polling
  (:class:`ClassificationProcess`: the module polls it from a ``qt.QTimer``, a script waits on it);
* which Python packages the background process still lacks (:func:`missing_requirements`).

Unlike ``SinusAnomalyLib`` (which never imports slicer, qt, ctk or vtk), this file imports
``slicer`` and ``vtk``; it never imports ``qt`` or ``ctk``.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import vtk

import slicer
from SinusAnomalyLib.bundlefile import describe_bundle, read_bundle_meta
from SinusAnomalyLib.errors import BundleError
from SinusAnomalyLib.modelstore import BUNDLE_SUFFIX, MODELS_ENV, list_bundles, models_folder  # noqa: F401  (used by the widget)

RESULT_FORMAT = "sinus-anomaly-result"
RESULT_VERSION = 1
RESULT_FILE = "result.json"
SIDES = ("left", "right")
SIDE_TITLES = {"left": "Left", "right": "Right"}
LABEL_VALUES = {"left": 1, "right": 2}
LABEL_NAMES = {1: "left maxillary sinus anomaly", 2: "right maxillary sinus anomaly"}
LABEL_COLORS = {1: (0.97, 0.55, 0.10), 2: (0.20, 0.60, 1.00)}  # orange left, blue right
COLOR_TABLE_NAME = "SinusAnomaly labels"
CROP_SIZE_VOXELS = 64  # crops are 64^3 voxels of 1 mm (SinusAnomalyLib.extraction)
TABLE_COLUMNS = ("Side", "Probability", "Verdict", "Spread", "Volume (mL)")

# Heat-map display: Slicer's file-based colour tables when the application loaded them (IDs as
# vtkSlicerColorLogic names them), else a similar procedural one made here (plain slicer-core).
HEATMAP_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
HEATMAP_COLOR_NODE_NAMES = ("Inferno", "ColdToHotRainbow")
HEATMAP_FALLBACK_COLOR_NAME = "SinusAnomaly heat"
HEATMAP_OPACITY = 0.4  # foreground opacity in the slice views
HEATMAP_SHOWN_FROM = 0.05  # heat below this is transparent (zero outside the crops would darken the image)

# Attributes set on every result node: which input volume and which role.
ATTRIBUTE_INPUT = "SinusAnomaly.InputVolumeID"
ATTRIBUTE_ROLE = "SinusAnomaly.Role"
ROLES = ("heatmap", "labelmap", "table", "roi_left", "roi_right")

# Packages the background classify process needs besides what Slicer ships (numpy, SimpleITK).
# (import name, pip requirement, install with --no-deps). SimpleITK is deliberately absent:
# Slicer ships its own build with Slicer-specific IO and it must never be reinstalled or
# upgraded. None of the packages below depends on SimpleITK; MONAI's only dependencies are numpy
# and torch, both present by then, so it goes in with --no-deps and pip cannot swap the torch
# build that the PyTorch extension chose. Every install also runs with a constraints file pinning
# the installed SimpleITK (and torch) versions (see pip_constraints).
TORCH_REQUIREMENT = ">=2.1,<=2.13.0"  # pyproject.toml's range
TORCH_FALLBACK_REQUIREMENT = "torch==2.13.0"  # without the PyTorch extension (a CPU build on most systems)
PYTHON_REQUIREMENTS = (
    ("monai", "monai>=1.3,<1.7", True),
    ("nibabel", "nibabel>=5.0", False),
    ("scipy", "scipy>=1.9", False),
    ("sklearn", "scikit-learn>=1.2", False),
    ("tqdm", "tqdm>=4.60", False),
)
PINNED_DISTRIBUTIONS = ("SimpleITK", "torch")


class ResultError(ValueError):
    """A classify result folder that cannot be loaded; the message names the file and the problem."""


# --------------------------------------------------------------------------- models folder


def bundle_tooltip(path: str | Path) -> str:
    """The bundle's path and description (numpy only: works before torch is installed), or why
    it cannot be used."""
    try:
        return f"{path}\n{describe_bundle(read_bundle_meta(path))}"
    except BundleError as exc:
        return f"cannot be used: {exc}"

# --------------------------------------------------------------------------- background process

def find_training_script(module_dir: str | Path) -> Path | None:
    """``SinusAnomalyTraining/slicer_script.py`` next to the module (installed extension) or one level
    up (source tree, and where the extension build copies ``../SinusAnomalyTraining``)."""
    module_dir = Path(module_dir).resolve()
    for base in (module_dir, module_dir.parent):
        candidate = base / "SinusAnomalyTraining" / "slicer_script.py"
        if candidate.is_file():
            return candidate
    return None


def classify_command(python: str | Path, script: str | Path, input_file: str | Path, model: str | Path,
                     out_dir: str | Path, force_cpu: bool = False) -> list[str]:
    """``PythonSlicer slicer_script.py -v classify INPUT --model BUNDLE --out DIR [--device cpu]``.

    ``-v`` makes the process log each phase with its time, which the module's log shows.
    """
    command = [str(python), str(script), "-v", "classify", str(input_file), "--model", str(model), "--out", str(out_dir)]
    if force_cpu:
        command += ["--device", "cpu"]
    return command


def classify_environment(base: dict | None = None, force_cpu: bool = False, python_paths=()) -> dict:
    """Environment of the background process.

    ``force_cpu`` hides every GPU (``CUDA_VISIBLE_DEVICES=-1``). ``python_paths`` (the module folder
    holding ``SinusAnomalyLib``, the folder holding ``SinusAnomalyTraining``) go first on
    ``PYTHONPATH`` so the script finds both in any layout. Output is unbuffered so the log streams.
    """
    env = dict(os.environ if base is None else base)
    if force_cpu:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    paths = [str(p) for p in python_paths]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


class ClassificationProcess:
    """A command run in the background; its output is read line by line by a thread.

    ``poll()`` returns the lines that arrived since the last call and never blocks (call it from a
    timer); ``wait()`` blocks until the end (scripts). ``cancel()`` ends the process and everything
    it started (the PythonSlicer launcher starts the real interpreter as a child process).
    """

    def __init__(self, command, env: dict | None = None, cwd: str | Path | None = None):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = str(cwd) if cwd is not None else None
        self.returncode: int | None = None
        self.cancelled = False
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.lines: list[str] = []  # everything read so far
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._done = False

    def start(self) -> "ClassificationProcess":
        kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                      encoding="utf-8", errors="replace", bufsize=1, env=self.env, cwd=self.cwd)
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel() reaches the launcher's children
        self.start_time = time.time()
        self._proc = subprocess.Popen(self.command, **kwargs)
        self._reader = threading.Thread(target=self._read, name="SinusAnomaly output reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        proc = self._proc
        for line in proc.stdout:
            self._queue.put(line.rstrip("\r\n"))
        proc.stdout.close()
        proc.wait()
        self._queue.put(None)  # end marker, after all output

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._done

    @property
    def finished(self) -> bool:
        """True once the process ended and all its output has been returned by poll()/wait()."""
        return self._done

    @property
    def succeeded(self) -> bool:
        return self._done and not self.cancelled and self.returncode == 0

    @property
    def elapsed(self) -> float:
        if self.start_time is None:
            return 0.0
        return (self.end_time or time.time()) - self.start_time

    def poll(self) -> list[str]:
        """New output lines since the last call (never blocks)."""
        new = []
        while not self._done:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._finish()
            else:
                new.append(item)
        self.lines.extend(new)
        return new

    def wait(self, timeout: float | None = None, on_line=None) -> int | None:
        """Block until the process ends (or ``timeout`` seconds pass); ``on_line`` gets each line."""
        deadline = None if timeout is None else time.time() + timeout
        while not self._done:
            remaining = None if deadline is None else deadline - time.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=0.2 if remaining is None else min(0.2, remaining))
            except queue.Empty:
                continue
            if item is None:
                self._finish()
            else:
                self.lines.append(item)
                if on_line:
                    on_line(item)
        return self.returncode

    def _finish(self) -> None:
        self._done = True
        self.end_time = time.time()
        self.returncode = self._proc.returncode

    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Stop the process and its children (terminate, then kill after ``grace_seconds``)."""
        if self._proc is None or self._proc.poll() is not None:
            self.cancelled = self.cancelled or (self._proc is not None and not self._done)
            return
        self.cancelled = True
        pid = self._proc.pid
        if os.name == "nt":
            # taskkill /T ends the whole tree (the launcher and the interpreter it started)
            subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        else:
            try:
                os.killpg(pid, signal.SIGTERM)  # the group started with start_new_session
            except ProcessLookupError:
                return
            try:
                self._proc.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        try:
            self._proc.wait(timeout=grace_seconds)
        except subprocess.TimeoutExpired:
            self._proc.kill()


# --------------------------------------------------------------------------- dependencies

def missing_requirements(torch_too: bool = True) -> list[tuple[str, str, bool]]:
    """The entries of :data:`PYTHON_REQUIREMENTS` (and torch) whose module cannot be found."""
    wanted = ((("torch", f"torch{TORCH_REQUIREMENT}", False),) if torch_too else ()) + PYTHON_REQUIREMENTS
    return [entry for entry in wanted if importlib.util.find_spec(entry[0]) is None]


def _valid_version(text: str) -> bool:
    try:
        from packaging.version import InvalidVersion, Version
    except ImportError:
        return re.fullmatch(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?(\+[A-Za-z0-9.]+)?", text) is not None
    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def pip_constraints() -> str:
    """Constraints-file text pinning the installed SimpleITK and torch (those installed with a valid
    version in their metadata; a line pip could not parse would make every install fail)."""
    lines = []
    for name in PINNED_DISTRIBUTIONS:
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        if version and _valid_version(version):
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + ("\n" if lines else "")


def pip_install_arguments(requirements, constraints_file: str | Path | None = None) -> list[list[str]]:
    """``pip install`` argument lists for (import name, requirement, no_deps) entries: one list for the
    --no-deps packages, one for the rest; each with ``-c constraints_file`` when given."""
    groups = []
    for no_deps in (True, False):
        names = [req for _, req, flag in requirements if flag == no_deps]
        if not names:
            continue
        args = list(names)
        if no_deps:
            args.append("--no-deps")
        if constraints_file:
            args += ["-c", str(constraints_file)]
        groups.append(args)
    return groups


# --------------------------------------------------------------------------- volumes

def write_volume_to_file(volume_node, path: str | Path, compress: bool = False) -> Path:
    """Write a volume node (its image data and IJK-to-RAS geometry) to NRRD, NIfTI, ... by file name.

    Uses a ``vtkMRMLVolumeArchetypeStorageNode``, so it works in Slicer and with ``slicer-core``; the
    node's parent transform is not applied (results are placed under the same transform).
    """
    if volume_node is None or volume_node.GetImageData() is None:
        raise ValueError("write_volume_to_file: the volume node has no image data")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    scene = volume_node.GetScene()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    if scene is not None:
        scene.AddNode(storage)
    try:
        storage.SetFileName(str(path))
        storage.SetUseCompression(bool(compress))
        if not storage.WriteData(volume_node):
            raise OSError(f"could not write volume '{volume_node.GetName()}' to {path}")
    finally:
        if scene is not None:
            scene.RemoveNode(storage)
    return path


def _read_volume(scene, node, path: Path) -> None:
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    scene.AddNode(storage)
    try:
        storage.SetFileName(str(path))
        storage.SetSingleFile(True)
        if not storage.ReadData(node):
            raise ResultError(f"{path}: could not be read as a volume")
    finally:
        scene.RemoveNode(storage)


def matrix_to_numpy(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)])


def numpy_to_matrix(array) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            matrix.SetElement(i, j, float(array[i][j]))
    return matrix


def ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_numpy(matrix)


# --------------------------------------------------------------------------- colours

def create_anomaly_color_table(scene, name: str = COLOR_TABLE_NAME):
    """Colour table of the anomaly label map: 0 background (transparent), 1 left and 2 right
    maxillary sinus anomaly. An existing table of that name made by this function is reused."""
    existing = scene.GetFirstNodeByName(name)
    if existing is not None and existing.IsA("vtkMRMLColorTableNode") and existing.GetAttribute(ATTRIBUTE_ROLE) == "colors":
        return existing
    table = slicer.vtkMRMLColorTableNode()
    table.SetName(name)
    table.SetTypeToUser()
    table.SetNumberOfColors(3)
    table.GetLookupTable().SetTableRange(0, 2)
    table.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value, label in LABEL_NAMES.items():
        r, g, b = LABEL_COLORS[value]
        table.SetColor(value, label, r, g, b, 1.0)
    table.SetAttribute(ATTRIBUTE_ROLE, "colors")
    table.SetAttribute("Category", "SinusAnomaly")
    scene.AddNode(table)
    return table


def heatmap_color_node_id(scene) -> str:
    """Inferno or ColdToHotRainbow when present (Slicer), else a similar procedural colour node."""
    for node_id in HEATMAP_COLOR_NODE_IDS:
        if scene.GetNodeByID(node_id) is not None:
            return node_id
    for name in (*HEATMAP_COLOR_NODE_NAMES, HEATMAP_FALLBACK_COLOR_NAME):
        node = scene.GetFirstNodeByName(name)
        if node is not None and node.IsA("vtkMRMLColorNode"):
            return node.GetID()
    colors = slicer.vtkMRMLProceduralColorNode()
    colors.SetName(HEATMAP_FALLBACK_COLOR_NAME)
    ramp = vtk.vtkColorTransferFunction()
    for x, rgb in ((0.0, (0.0, 0.0, 0.02)), (0.25, (0.34, 0.06, 0.43)), (0.5, (0.73, 0.21, 0.33)),
                   (0.75, (0.98, 0.55, 0.04)), (1.0, (0.99, 1.0, 0.64))):  # inferno-like ramp
        ramp.AddRGBPoint(x, *rgb)
    colors.SetAndObserveColorTransferFunction(ramp)
    colors.SetAttribute("Category", "SinusAnomaly")
    scene.AddNode(colors)
    return colors.GetID()


# --------------------------------------------------------------------------- results

def read_result(result_dir: str | Path) -> dict:
    """``result.json`` of a classify output folder, checked against the schema this module reads."""
    path = Path(result_dir) / RESULT_FILE
    if not path.is_file():
        raise ResultError(f"{path}: no result file (did classify finish?)")
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ResultError(f"{path}: unreadable ({exc})") from exc
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise ResultError(f"{path}: not a SinusAnomaly result (no '{RESULT_FORMAT}' format marker)")
    version = result.get("version")
    if not isinstance(version, int) or version > RESULT_VERSION:
        raise ResultError(f"{path}: result version {version!r}; this module reads up to {RESULT_VERSION}")
    sides = result.get("sides")
    if not isinstance(sides, dict) or any(side not in sides for side in SIDES):
        raise ResultError(f"{path}: needs results for both sides ({', '.join(SIDES)})")
    for side in SIDES:
        for key in ("probability", "verdict"):
            if key not in sides[side]:
                raise ResultError(f"{path}: side '{side}' has no '{key}'")
    return result


def result_rows(result: dict) -> list[tuple[str, float, str, float, float]]:
    """(Side, Probability, Verdict, Spread, Volume (mL)) for each side, as shown in the table."""
    rows = []
    for side in SIDES:
        entry = result["sides"][side]
        rows.append((SIDE_TITLES[side], float(entry["probability"]), str(entry["verdict"]),
                     float(entry.get("spread", 0.0) or 0.0), float(entry.get("anomalous_volume_ml", 0.0) or 0.0)))
    return rows


def crop_box(entry: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centre RAS mm, rotation 3x3 with det +1, size mm) of one side's crop from result.json.

    The crop affine maps voxel indices to RAS; its columns give the axes and the voxel size. The
    right crop is mirrored along axis 0 (det < 0): that axis is flipped back for a proper rotation,
    which leaves the box itself unchanged.
    """
    affine = entry.get("crop_affine_ras")
    if affine is None:
        center = np.asarray(entry["center_ras_mm"], dtype=float)
        return center, np.eye(3), np.full(3, float(CROP_SIZE_VOXELS))
    affine = np.asarray(affine, dtype=float)
    linear = affine[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    axes = linear / spacing
    u, _, vt = np.linalg.svd(axes)  # nearest orthonormal matrix (tolerates rounding in the file)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation[:, 0] *= -1.0
    center = affine[:3, :3] @ np.full(3, (CROP_SIZE_VOXELS - 1) / 2.0) + affine[:3, 3]
    return center, rotation, spacing * CROP_SIZE_VOXELS


def _base_name(result: dict, input_volume_node) -> str:
    if input_volume_node is not None:
        return input_volume_node.GetName()
    name = Path(str(result.get("input") or "SinusAnomaly")).name
    for suffix in (".nii.gz", ".nrrd", ".nhdr", ".nii", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _reusable(outputs: dict | None, key: str, class_name: str):
    node = (outputs or {}).get(key)
    if node is not None and node.IsA(class_name) and node.GetScene() is not None:
        return node
    return None


def _new_or_reused(scene, outputs, key, class_name, name):
    node = _reusable(outputs, key, class_name)
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    else:
        node.SetName(name)
    return node


def _fill_table(table_node, result: dict) -> None:
    rows = result_rows(result)
    columns = []
    for index, title in enumerate(TABLE_COLUMNS):
        array = vtk.vtkStringArray() if isinstance(rows[0][index], str) else vtk.vtkDoubleArray()
        array.SetName(title)
        for row in rows:
            array.InsertNextValue(row[index])
        columns.append(array)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    for array in columns:
        table_node.AddColumn(array)
    descriptions = {
        "Side": "Maxillary sinus (patient side)",
        "Probability": "Probability of an anomaly: mean over the bundle's folds",
        "Verdict": "anomalous when the probability reaches the bundle's threshold",
        "Spread": "Standard deviation of the fold probabilities",
        "Volume (mL)": "Volume marked anomalous in the label map",
    }
    for title, text in descriptions.items():
        table_node.SetColumnDescription(title, text)
    table_node.SetColumnUnitLabel("Volume (mL)", "mL")
    for side in SIDES:
        entry = result["sides"][side]
        if "threshold" in entry:
            table_node.SetAttribute(f"SinusAnomaly.threshold.{side}", str(entry["threshold"]))
    model = result.get("model") or {}
    if model.get("name"):
        table_node.SetAttribute("SinusAnomaly.model", str(model["name"]))
    table_node.SetLocked(True)  # results, not for editing
    table_node.EndModify(was_modifying)


def _set_roi(roi, entry: dict) -> None:
    center, rotation, size = crop_box(entry)
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = center
    was_modifying = roi.StartModify()
    roi.SetAndObserveObjectToNodeMatrix(numpy_to_matrix(matrix))
    roi.SetSize(*[float(v) for v in size])
    roi.SetCenter(*[float(v) for v in center])
    roi.EndModify(was_modifying)


def subject_hierarchy(scene):
    """The scene's subject hierarchy node (created on demand by MRML), or None."""
    getter = getattr(scene, "GetSubjectHierarchyNode", None)
    if getter is not None:
        return getter()
    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def place_next_to(scene, reference_node, nodes) -> int | None:
    """Put ``nodes`` under the subject hierarchy parent (study) of ``reference_node``.

    Returns the parent item ID, or None when the reference node has no hierarchy item.
    """
    sh = subject_hierarchy(scene) if reference_node is not None else None
    if sh is None:
        return None
    reference_item = sh.GetItemByDataNode(reference_node)
    if not reference_item:
        return None
    parent = sh.GetItemParent(reference_item)
    for node in nodes:
        if node is None:
            continue
        item = sh.GetItemByDataNode(node)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, node)
    return parent


def load_results(result_dir: str | Path, scene, input_volume_node=None, outputs: dict | None = None) -> dict:
    """Load a ``classify`` result folder into ``scene``.

    Creates (or, for nodes given in ``outputs`` under the same keys, refills):

    * ``heatmap``: ``vtkMRMLScalarVolumeNode`` "<input> anomaly heat map", values in [0, 1],
      Inferno colours (or ColdToHotRainbow, or a similar ramp), window 0-1, low heat transparent;
    * ``labelmap``: ``vtkMRMLLabelMapVolumeNode`` "<input> anomaly labels" (1 left, 2 right) with the
      ``color_table`` of :func:`create_anomaly_color_table`;
    * ``table``: ``vtkMRMLTableNode`` "<input> sinus anomaly results", one row per side, columns
      :data:`TABLE_COLUMNS`;
    * ``roi_left``, ``roi_right``: ``vtkMRMLMarkupsROINode`` boxes of the 64 mm crops, centred on the
      crop centre and oriented like the crop.

    With ``input_volume_node`` the new nodes are named after it, placed under its parent transform
    and next to it in the subject hierarchy. Returns the nodes and the parsed ``result`` in a dict.
    """
    result_dir = Path(result_dir)
    result = read_result(result_dir)
    files = result.get("files") or {}
    heatmap_file = result_dir / files.get("heatmap", "heatmap.nii.gz")
    labelmap_file = result_dir / files.get("labelmap", "labelmap.nii.gz")
    for path in (heatmap_file, labelmap_file):
        if not path.is_file():
            raise ResultError(f"{path}: missing from the result folder")

    base = _base_name(result, input_volume_node)
    created = {}

    heatmap = _new_or_reused(scene, outputs, "heatmap", "vtkMRMLScalarVolumeNode", f"{base} anomaly heat map")
    _read_volume(scene, heatmap, heatmap_file)
    if heatmap.GetDisplayNode() is None:
        heatmap.CreateDefaultDisplayNodes()
    display = heatmap.GetDisplayNode()
    display.SetAndObserveColorNodeID(heatmap_color_node_id(scene))
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetThreshold(HEATMAP_SHOWN_FROM, 1.0e6)
    display.ApplyThresholdOn()
    display.AutoThresholdOff()
    created["heatmap"] = heatmap

    labelmap = _new_or_reused(scene, outputs, "labelmap", "vtkMRMLLabelMapVolumeNode", f"{base} anomaly labels")
    _read_volume(scene, labelmap, labelmap_file)
    color_table = create_anomaly_color_table(scene)
    if labelmap.GetDisplayNode() is None:
        # made here rather than by CreateDefaultDisplayNodes, which would first point it at the
        # generic label colours (absent from a bare MRML scene)
        label_display = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeDisplayNode")
        label_display.SetAndObserveColorNodeID(color_table.GetID())
        labelmap.SetAndObserveDisplayNodeID(label_display.GetID())
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(color_table.GetID())
    created["labelmap"] = labelmap

    table = _new_or_reused(scene, outputs, "table", "vtkMRMLTableNode", f"{base} sinus anomaly results")
    _fill_table(table, result)
    created["table"] = table

    for side in SIDES:
        key = f"roi_{side}"
        roi = _new_or_reused(scene, outputs, key, "vtkMRMLMarkupsROINode", f"{base} {side} sinus crop")
        _set_roi(roi, result["sides"][side])
        if roi.GetDisplayNode() is None:
            roi.CreateDefaultDisplayNodes()
        roi_display = roi.GetDisplayNode()
        if roi_display is not None:
            roi_display.SetSelectedColor(*LABEL_COLORS[LABEL_VALUES[side]])
            roi_display.SetColor(*LABEL_COLORS[LABEL_VALUES[side]])
            roi_display.SetFillOpacity(0.0)
        roi.SetLocked(True)  # shows where the crop was taken; moving it would change nothing
        created[key] = roi

    transform_id = input_volume_node.GetTransformNodeID() if input_volume_node is not None else None
    for role in ROLES:
        node = created[role]
        node.SetAttribute(ATTRIBUTE_ROLE, role)
        if input_volume_node is not None:
            node.SetAttribute(ATTRIBUTE_INPUT, input_volume_node.GetID())
        if role != "table":
            node.SetAndObserveTransformNodeID(transform_id)
    if input_volume_node is not None:
        place_next_to(scene, input_volume_node, [created[role] for role in ROLES])

    created["color_table"] = color_table
    created["result"] = result
    return created

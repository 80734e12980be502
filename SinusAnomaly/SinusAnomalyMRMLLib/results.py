"""A ``classify`` result folder as MRML nodes, and volume nodes as files for the background process.

Works in 3D Slicer and in plain Python with the ``slicer-core`` wheel (Slicer's real MRML classes
without the application), which is how ``Testing/test_slicer_results.py`` tests it:

* writing an input volume node to a file for the background ``classify`` process
  (:func:`write_volume_to_file`);
* turning a ``classify`` result folder (format version 1 or 2) into MRML nodes
  (:func:`load_results`): the residual heat map as a coloured scalar volume, the anomaly label
  map with its colour table (:func:`create_anomaly_color_table`), the results table and both crop
  boxes as ROIs, placed next to the input volume in the subject hierarchy;
* telling those results from inputs (:func:`is_result_node`, :func:`result_volume_ids`,
  :func:`input_volume_candidate`): a heat map is no head MRI to classify; an earlier run's
  results for an input (:func:`outputs_for_input`);
* showing them in the slice views (:func:`show_results`, only where the application has views).

It imports ``slicer`` and ``vtk`` (so it is not part of ``SinusAnomalyLib``), never ``qt`` or ``ctk``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import vtk

import slicer
from SinusAnomalyLib.resultformat import HEATMAP_FILE, LABEL_NAMES, LABEL_VALUES, LABELMAP_FILE, SIDES

from .resultinfo import COLUMN_DESCRIPTIONS, TABLE_COLUMNS, ResultError, crop_box, read_result, result_rows, warnings_of

LABEL_COLORS = {1: (0.97, 0.55, 0.10), 2: (0.20, 0.60, 1.00)}  # orange left, blue right
COLOR_TABLE_NAME = "SinusAnomaly labels"

# Heat-map display: Slicer's file-based colour tables when the application loaded them (IDs as
# vtkSlicerColorLogic names them), else a similar procedural one made here (plain slicer-core).
HEATMAP_COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLColorTableNodeFileColdToHotRainbow.txt")
HEATMAP_COLOR_NODE_NAMES = ("Inferno", "ColdToHotRainbow")
HEATMAP_FALLBACK_COLOR_NAME = "SinusAnomaly heat"
HEATMAP_OPACITY = 0.4  # foreground opacity in the slice views
HEATMAP_SHOWN_FROM = 0.05  # heat below this is transparent (zero outside the crops would darken the image)

# Attributes set on every result node: which input volume and which role; on the table, the model.
ATTRIBUTE_INPUT = "SinusAnomaly.InputVolumeID"
ATTRIBUTE_ROLE = "SinusAnomaly.Role"
ATTRIBUTE_MODEL = "SinusAnomaly.model"
ATTRIBUTE_FINGERPRINT = "SinusAnomaly.modelFingerprint"
ATTRIBUTE_WARNINGS = "SinusAnomaly.warnings"
ROLES = ("heatmap", "labelmap", "table", "roi_left", "roi_right")

__all__ = ["ResultError", "crop_box", "read_result", "result_rows", "load_results", "write_volume_to_file",
           "create_anomaly_color_table", "is_result_node", "result_volume_ids", "input_volume_candidate",
           "outputs_for_input", "show_results"]


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


# --------------------------------------------------------------------------- the module's own outputs

def is_result_node(node) -> bool:
    """Whether ``node`` is a result :func:`load_results` made (it carries :data:`ATTRIBUTE_ROLE`,
    which a saved scene keeps)."""
    return node is not None and node.GetAttribute(ATTRIBUTE_ROLE) in ROLES


def outputs_for_input(nodes: dict, input_volume_node) -> dict:
    """Those of ``nodes`` (:func:`load_results` key -> node or None) that are results for
    ``input_volume_node``: an earlier run's, to refill instead of duplicating them."""
    if input_volume_node is None:
        return {}
    return {key: node for key, node in nodes.items()
            if node is not None and node.GetAttribute(ATTRIBUTE_INPUT) == input_volume_node.GetID()}


def _nodes_of_class(scene, class_name: str) -> list:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def result_volume_ids(scene) -> list[str]:
    """IDs of the heat maps and label maps :func:`load_results` made in ``scene``: a result is no
    head MRI, so the module's input selector hides them (``sortFilterProxyModel().hiddenNodeIDs``)."""
    return [node.GetID() for node in _nodes_of_class(scene, "vtkMRMLVolumeNode") if is_result_node(node)]


def input_volume_candidate(scene):
    """The first scalar volume of ``scene`` that may be a head MRI to classify (no label map, no
    result of this module), or None."""
    return next((node for node in _nodes_of_class(scene, "vtkMRMLScalarVolumeNode")
                 if not node.IsA("vtkMRMLLabelMapVolumeNode") and not is_result_node(node)), None)


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
    """One text row per side (empty numbers where a side is not assessable), descriptions, model."""
    rows = result_rows(result)
    columns = []
    for index, title in enumerate(TABLE_COLUMNS):
        array = vtk.vtkStringArray()
        array.SetName(title)
        for row in rows:
            array.InsertNextValue(row[index])
        columns.append(array)
    was_modifying = table_node.StartModify()
    table_node.RemoveAllColumns()
    for array in columns:
        table_node.AddColumn(array)
    for title, text in COLUMN_DESCRIPTIONS.items():
        table_node.SetColumnDescription(title, text)
    table_node.SetColumnUnitLabel("Volume (mL)", "mL")
    table_node.SetColumnUnitLabel("Coverage (%)", "%")
    for side in SIDES:
        entry = result["sides"][side]
        if "threshold" in entry:
            table_node.SetAttribute(f"SinusAnomaly.threshold.{side}", str(entry["threshold"]))
    model = result.get("model") or {}
    if model.get("name"):
        table_node.SetAttribute(ATTRIBUTE_MODEL, str(model["name"]))
    for name, value in ((ATTRIBUTE_FINGERPRINT, str(model.get("fingerprint") or "")),
                        (ATTRIBUTE_WARNINGS, "\n".join(warnings_of(result)))):
        if value:
            table_node.SetAttribute(name, value)
        else:
            table_node.RemoveAttribute(name)
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
    heatmap_file = result_dir / files.get("heatmap", HEATMAP_FILE)
    labelmap_file = result_dir / files.get("labelmap", LABELMAP_FILE)
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


def show_results(input_volume_node, outputs: dict, foreground_opacity: float = HEATMAP_OPACITY) -> None:
    """Input as background, heat map as coloured foreground, anomalies as label layer; ROIs shown.
    Does nothing without slice views (batch mode, ``slicer-core``)."""
    app = getattr(slicer, "app", None)
    if app is None or not hasattr(app, "layoutManager") or app.layoutManager() is None:
        return
    slicer.util.setSliceViewerLayers(
        background=input_volume_node, foreground=outputs.get("heatmap"), label=outputs.get("labelmap"),
        foregroundOpacity=foreground_opacity, labelOpacity=0.8)
    for key in ("roi_left", "roi_right"):
        roi = outputs.get(key)
        if roi is not None and roi.GetDisplayNode() is not None:
            roi.GetDisplayNode().SetVisibility(True)

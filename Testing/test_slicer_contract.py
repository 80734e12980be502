"""What a real 3D Slicer needs from the module's files, checked without Slicer.

Slicer loads every ``*.py`` at the top of a module folder as a module; the GUI finds widgets by
their object names in the ``.ui``; the extension build installs only the files its CMakeLists
name; the Extensions Manager shows icon and screenshots by absolute URL; and
``Slicer --python-script`` only ends when the script calls ``sys.exit``. Each of these is a file
contract that plain Python can check.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

from SinusAnomalyLib import dependencies

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "SinusAnomaly"
MODULE_FILE = MODULE_DIR / "SinusAnomaly.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "SinusAnomaly.ui"
SCRIPT = REPO / "SinusAnomalyTraining" / "slicer_script.py"

# Every widget SinusAnomaly.py uses through self.ui, and the class the code expects it to be.
EXPECTED_UI_CLASSES = {
    "applyButton": "QPushButton",
    "browseModelButton": "QToolButton",
    "forceCpuCheckBox": "QCheckBox",
    "heatmapOpacitySlider": "ctkSliderWidget",
    "inputSelector": "qMRMLNodeComboBox",
    "modelComboBox": "QComboBox",
    "modelFingerprintLabel": "QLabel",
    "modelsFolderLabel": "QLabel",
    "openModelsFolderButton": "QToolButton",
    "outputsCollapsibleButton": "ctkCollapsibleButton",
    "progressBar": "QProgressBar",
    "refreshModelsButton": "QToolButton",
    "resultsTableView": "qMRMLTableView",
    "showResultsButton": "QPushButton",
    "statusLabel": "QPlainTextEdit",
}


def ui_widgets() -> dict[str, str]:
    """Object name -> class of every widget in the .ui file."""
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w.get("class") for w in root.iter("widget")}


# --------------------------------------------------------------------------- module folder

def test_only_the_module_file_is_at_the_top_of_the_module_folder():
    """Slicer's scripted-module factory takes every *.py here for a module named like the file."""
    top_level = sorted(p.name for p in MODULE_DIR.glob("*.py"))
    assert top_level == ["SinusAnomaly.py"], (
        f"{top_level}: only SinusAnomaly.py may sit in {MODULE_DIR}; put helpers into SinusAnomalyMRMLLib/")
    for path in MODULE_DIR.glob("*.py"):
        classes = {node.name for node in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(node, ast.ClassDef)}
        assert path.stem in classes, f"{path}: defines no class {path.stem}, so Slicer cannot load it as a module"


def test_mrml_helpers_stay_out_of_the_pure_library():
    """SinusAnomalyLib never imports slicer, qt, ctk or vtk; the module's MRML helpers are a sibling package."""
    for path in (MODULE_DIR / "SinusAnomalyLib").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not imported & {"slicer", "qt", "ctk", "vtk"}, f"{path} imports {sorted(imported & {'slicer', 'qt', 'ctk', 'vtk'})}"
    assert (MODULE_DIR / "SinusAnomalyMRMLLib" / "__init__.py").is_file()


# --------------------------------------------------------------------------- .ui

def test_every_ui_widget_the_code_uses_exists_with_the_expected_class():
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used == set(EXPECTED_UI_CLASSES), (
        f"widgets used but not in EXPECTED_UI_CLASSES: {sorted(used - set(EXPECTED_UI_CLASSES))}; "
        f"listed but no longer used: {sorted(set(EXPECTED_UI_CLASSES) - used)}")
    widgets = ui_widgets()
    for name, expected in EXPECTED_UI_CLASSES.items():
        assert name in widgets, f"{UI_FILE.name} has no widget '{name}' (used as self.ui.{name})"
        assert widgets[name] == expected, f"{UI_FILE.name}: '{name}' is a {widgets[name]}, the code expects a {expected}"


def test_parameter_node_bindings_match_the_parameter_node():
    """Widgets with a SlicerParameterName are connected to the parameter of that name by connectGui."""
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    node_class = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SinusAnomalyParameterNode")
    parameters = {stmt.target.id: ast.unparse(stmt.annotation) for stmt in node_class.body if isinstance(stmt, ast.AnnAssign)}
    root = ET.parse(UI_FILE).getroot()
    bound = {}
    for widget in root.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    assert bound, "no widget is bound to the parameter node"
    for parameter, widget_class in bound.items():
        assert parameter in parameters, f"{UI_FILE.name} binds '{parameter}', which SinusAnomalyParameterNode lacks"
        kind = parameters[parameter]
        if kind.startswith("vtkMRML"):
            assert widget_class == "qMRMLNodeComboBox", (parameter, widget_class)
        elif kind == "bool":
            assert widget_class == "QCheckBox", (parameter, widget_class)


def test_custom_widgets_are_declared():
    root = ET.parse(UI_FILE).getroot()
    declared = {c.find("class").text for c in root.iter("customwidget")}
    used = {cls for cls in ui_widgets().values() if cls.startswith(("ctk", "qMRML", "qSlicer"))}
    assert used <= declared, sorted(used - declared)


# --------------------------------------------------------------------------- module CMakeLists

def cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s*\n(.*?)\n\s*\)", text, flags=re.S)
    assert match, f"set({variable} ...) not found"
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.split("#")[0].strip()]


def test_module_cmakelists_lists_every_python_and_resource_file_and_nothing_else():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    module_name = re.search(r"set\(MODULE_NAME (\w+)\)", text).group(1)
    scripts = {entry.replace("${MODULE_NAME}", module_name) for entry in cmake_list(text, "MODULE_PYTHON_SCRIPTS")}
    scripts.discard("${TRAINING_PYTHON_SCRIPTS}")  # the copies of ../SinusAnomalyTraining, checked below
    resources = {entry.replace("${MODULE_NAME}", module_name) for entry in cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    python_files = {str(p.relative_to(MODULE_DIR)).replace(os.sep, "/") for p in MODULE_DIR.rglob("*.py")
                    if "__pycache__" not in p.parts}
    # Screenshots are for the extension catalogue (EXTENSION_SCREENSHOTURLS), not installed with the module.
    resource_files = {str(p.relative_to(MODULE_DIR)).replace(os.sep, "/") for p in (MODULE_DIR / "Resources").rglob("*")
                      if p.is_file() and "__pycache__" not in p.parts and "Screenshots" not in p.parts}
    assert python_files - scripts == set(), f"Python files missing from MODULE_PYTHON_SCRIPTS: {sorted(python_files - scripts)}"
    assert scripts - python_files == set(), f"MODULE_PYTHON_SCRIPTS names missing files: {sorted(scripts - python_files)}"
    assert resource_files - resources == set(), f"files missing from MODULE_PYTHON_RESOURCES: {sorted(resource_files - resources)}"
    assert resources - resource_files == set(), f"MODULE_PYTHON_RESOURCES names missing files: {sorted(resources - resource_files)}"

    training = REPO / "SinusAnomalyTraining"
    listed_training = set(cmake_list(text, "TRAINING_PYTHON_FILES"))
    actual_training = {str(p.relative_to(training)).replace(os.sep, "/") for p in training.rglob("*.py") if "__pycache__" not in p.parts}
    assert listed_training == actual_training, (sorted(actual_training - listed_training), sorted(listed_training - actual_training))


# --------------------------------------------------------------------------- extension metadata

def extension_settings() -> dict[str, str]:
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r'^set\((EXTENSION_\w+|SINUS_ANOMALY_\w+) "([^"]*)"\)', text, flags=re.M)}


def test_extension_metadata_urls_are_absolute_and_built_from_the_homepage():
    settings = extension_settings()
    homepage = settings["EXTENSION_HOMEPAGE"]
    assert re.fullmatch(r"https://\S+", homepage) and "TBD" not in homepage, homepage
    for key in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = settings[key].split()
        assert urls, f"{key} is empty"
        for url in urls:
            assert url.startswith("${EXTENSION_HOMEPAGE}/"), f"{key}: {url} is not built from EXTENSION_HOMEPAGE"
            path = REPO / url.split("/", 3)[-1]  # ${EXTENSION_HOMEPAGE}/raw/<branch>/<path>
            assert path.is_file(), f"{key}: {url} points at {path}, which does not exist"
    assert len(settings["EXTENSION_SCREENSHOTURLS"].split()) >= 1
    assert settings["EXTENSION_DEPENDS"] == "PyTorch"


def test_minimum_slicer_version_is_the_same_everywhere():
    minimum = f"{dependencies.MIN_SLICER[0]}.{dependencies.MIN_SLICER[1]}"
    top = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(rf'Slicer_VERSION VERSION_LESS "{re.escape(minimum)}"', top), "the build does not refuse older Slicer"
    assert f"3D Slicer {minimum}" in extension_settings()["EXTENSION_DESCRIPTION"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"3D Slicer {minimum} or newer" in readme
    assert dependencies.slicer_version_problem(5, 8, (3, 9)) is not None
    assert minimum in dependencies.slicer_version_problem(5, 8, (3, 9))
    assert dependencies.slicer_version_problem(*dependencies.MIN_SLICER, dependencies.MIN_SLICER_PYTHON) is None
    assert dependencies.slicer_version_problem(5, 12, (3, 12)) is None


# --------------------------------------------------------------------------- slicer_script.py

def run_script(tmp_path, prelude: str, *args, timeout=180):
    """Run slicer_script.py as __main__ after ``prelude`` (which may patch a command), as Slicer
    would: the package is not installed, only site-packages are on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p.endswith("site-packages"))
    code = textwrap.dedent(prelude) + f"\nimport runpy, sys\nsys.argv = [{str(SCRIPT)!r}, *{list(args)!r}]\n" \
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\nprint('SCRIPT RETURNED')\n"
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=timeout)


PATCH_SYNTH = """
import sys
sys.path.insert(0, {repo!r}); sys.path.insert(0, {repo!r} + '/SinusAnomaly')
import SinusAnomalyTraining.commands.synth as synth
def failing_run(args):
    {body}
synth.run = failing_run
"""


def test_slicer_script_exits_zero_on_success(tmp_path):
    proc = run_script(tmp_path, "", "--", "setup", "--check")
    assert proc.returncode == 0, proc.stderr
    assert "Everything SinusAnomaly needs is installed." in proc.stdout
    assert "SCRIPT RETURNED" not in proc.stdout  # the script itself ends the process


def test_slicer_script_exits_nonzero_with_traceback_on_an_unexpected_exception(tmp_path):
    prelude = PATCH_SYNTH.format(repo=str(REPO), body="raise ZeroDivisionError('injected failure')")
    proc = run_script(tmp_path, prelude, "--", "synth", "--out", str(tmp_path / "cohort"))
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback (most recent call last)" in proc.stderr and "ZeroDivisionError: injected failure" in proc.stderr
    assert "SCRIPT RETURNED" not in proc.stdout


def test_slicer_script_exits_2_on_a_sinus_anomaly_error(tmp_path):
    prelude = PATCH_SYNTH.format(
        repo=str(REPO), body="from SinusAnomalyLib.errors import DatasetError; raise DatasetError('labels.csv: injected problem')")
    proc = run_script(tmp_path, prelude, "synth", "--out", str(tmp_path / "cohort"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "sinus-anomaly synth: error: labels.csv: injected problem" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_slicer_script_names_setup_when_torch_cannot_be_imported(tmp_path):
    """A fresh Slicer has no torch: the command must say how to install it, not end in an ImportError."""
    prelude = "import sys\nsys.modules['torch'] = None  # import torch now raises ImportError\n"
    proc = run_script(tmp_path, prelude, "--", "evaluate", "--dataset", str(tmp_path / "d"), "--run-dir", str(tmp_path / "r"))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "'torch' cannot be imported" in proc.stderr and "sinus-anomaly setup" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_slicer_script_does_nothing_when_imported_by_a_spawned_worker(tmp_path):
    """multiprocessing's spawn runs the main script again as __mp_main__: no command may start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = f"import runpy, sys\nsys.argv = [{str(SCRIPT)!r}, 'synth', '--out', 'x']\n" \
           f"runpy.run_path({str(SCRIPT)!r}, run_name='__mp_main__')\nprint('imported only')\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "imported only" and not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- screenshots

def test_screenshots_exist_and_are_pngs():
    shots = sorted((MODULE_DIR / "Resources" / "Screenshots").glob("*.png"))
    assert shots, "no screenshots: run Resources/Scripts/make_screenshots.py"
    for shot in shots:
        data = shot.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", shot
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        assert width >= 600 and height >= 300, (shot, width, height)

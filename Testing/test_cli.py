"""The one CLI: every subcommand has --help, and it runs as a module and as the Slicer script."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from SinusAnomalyTraining.cli import COMMANDS, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"sinus-anomaly {command}" in out
    assert ("--out" in out) or ("--run-dir" in out)


def test_missing_subcommand_is_an_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_runs_as_python_module():
    proc = subprocess.run([sys.executable, "-m", "SinusAnomalyTraining", "extract", "--help"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "64 mm crops" in proc.stdout


def test_slicer_script_works_without_installation_and_passes_exit_code(tmp_path):
    """As under PythonSlicer or `Slicer --python-script`: the package is not installed, the script
    puts it on sys.path itself; Slicer passes a leading "--"; the exit code comes through."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    script = REPO / "SinusAnomalyTraining" / "slicer_script.py"
    # -S: no site-packages path hooks, so an editable install cannot help; numpy etc. come via PYTHONPATH of site dirs
    site_dirs = [p for p in sys.path if p.endswith("site-packages")]
    env["PYTHONPATH"] = os.pathsep.join(site_dirs)
    ok = subprocess.run([sys.executable, "-S", str(script), "--", "prepare", "--help"],
                        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "sinus-anomaly prepare" in ok.stdout
    bad = subprocess.run([sys.executable, "-S", str(script), "extract", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert bad.returncode == 2
    assert "missing.nii.gz: does not exist" in bad.stderr
    assert not (tmp_path / "o").exists()


def test_extension_build_lists_every_python_file():
    """SinusAnomaly/CMakeLists.txt names files one by one; a file missing there is missing in Slicer."""
    import re

    cmake = (REPO / "SinusAnomaly" / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s*([\w/]+\.py)\s*$", cmake, flags=re.M))
    lib = {f"SinusAnomalyLib/{p.relative_to(REPO / 'SinusAnomaly' / 'SinusAnomalyLib').as_posix()}"
           for p in (REPO / "SinusAnomaly" / "SinusAnomalyLib").rglob("*.py")}
    training = {str(p.relative_to(REPO / "SinusAnomalyTraining")) for p in (REPO / "SinusAnomalyTraining").rglob("*.py")}
    assert lib <= listed, sorted(lib - listed)
    assert training <= listed, sorted(training - listed)


def test_extension_build_lists_every_data_file_of_the_training_package():
    import re

    cmake = (REPO / "SinusAnomaly" / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s*([\w/.-]+\.json)\s*$", cmake, flags=re.M))
    package = REPO / "SinusAnomalyTraining"
    assert {str(p.relative_to(package)) for p in package.rglob("*.json")} <= listed

"""A wheel is a working install: built from the source tree, installed without -e, it carries the
reference head and the real anatomies and extracts a head run from outside the repository."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCES = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "demo_out", "out")


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, (args, proc.stdout[-2000:], proc.stderr[-3000:])
    return proc


def test_a_wheel_installed_without_editable_mode_carries_its_resources_and_extracts_a_head(tmp_path):
    # a copy of the tree, so the build's own folders (build/, *.egg-info) never land in the checkout
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "--wheel-dir", tmp_path / "wheels", source)
    wheel, = (tmp_path / "wheels").glob("sinus_anomaly-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for name in ("Reference/reference_head.nii.gz", "Reference/reference_sinus_labels.nii.gz", "Reference/reference.json",
                 "Anatomies/real_heads.json", "Anatomies/colin27.nii.gz", "Models/synthetic-default.sabundle"):
        assert f"SinusAnomalyLib/Resources/{name}" in names, name
    synth = {f"SinusAnomalyLib/synth/{p.name}" for p in (REPO / "SinusAnomaly" / "SinusAnomalyLib" / "synth").glob("*.py")}
    assert len(synth) > 1 and synth <= names, sorted(synth - names)  # a subpackage: listed in pyproject.toml's packages
    site = tmp_path / "site"
    run(sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", site, wheel)

    outside = tmp_path / "elsewhere"  # not the repository: nothing can come from the checkout
    outside.mkdir()
    scan = outside / "head.nii.gz"
    shutil.copyfile(REPO / "SinusAnomaly" / "Resources" / "Reference" / "reference_head.nii.gz", scan)
    env = {k: v for k, v in os.environ.items() if k != "SINUS_ANOMALY_RESOURCES"} | {"PYTHONPATH": str(site)}
    where = run(sys.executable, "-c", "import SinusAnomalyLib.reference as r, SinusAnomalyTraining.cli as c, SinusAnomalyLib.synth as s\n"
                "print(r.__file__); print(c.__file__); print(s.__file__); print(r.resources_dir())\n"
                "import SinusAnomalyLib.modelstore as m; assert m.default_bundle() is not None, m.DEFAULT_BUNDLE", cwd=outside, env=env).stdout.split()
    assert all(Path(path).resolve().is_relative_to(site.resolve()) for path in where), where
    run(sys.executable, "-m", "SinusAnomalyTraining", "extract", scan, "--out", outside / "crops", cwd=outside, env=env)
    summary = json.loads((outside / "crops" / "extraction.json").read_text(encoding="utf-8"))
    assert {summary[side]["coverage"] for side in ("left", "right")} == {1.0}
    assert (outside / "crops" / "left_crop.nii.gz").is_file() and (outside / "crops" / "right_crop.nii.gz").is_file()

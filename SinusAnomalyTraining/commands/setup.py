"""Install the Python packages SinusAnomaly needs (torch, MONAI, ...) into this Python.

Run it once in 3D Slicer's Python before headless training or classification there:

    Slicer --no-main-window --python-script SinusAnomalyTraining/slicer_script.py -- setup
    PythonSlicer SinusAnomalyTraining/slicer_script.py setup

then e.g. `... -- run --config paper --dataset DATASET --run-dir RUN` or `... -- classify IMAGE
--model BUNDLE --out DIR`. Same policy as the Slicer module: torch first (with the PyTorch
extension's installer when Slicer runs with it, which picks the build for your GPU; else from
PyPI within the range for this Python), then MONAI and the rest; Slicer's SimpleITK and numpy
are never replaced. In Slicer 5.11+ pip runs through slicer.packaging.pip_ensure, else
slicer.util.pip_install; outside Slicer through `python -m pip`.

--check only reports (exit 2 when something is missing or outdated); --dry-run says what would be
installed and how.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from SinusAnomalyLib import dependencies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only report what is missing or outdated (exit 2 if anything)")
    parser.add_argument("--dry-run", action="store_true", help="say what would be installed and how; install nothing")


def _slicer_installer():
    """SinusAnomalyMRMLLib.installer when this is Slicer's Python, else None."""
    try:
        from SinusAnomalyMRMLLib import installer  # noqa: PLC0415  (on sys.path via slicer_script.py)
    except ImportError:
        return None
    return installer if installer.running_in_slicer_python() else None


def _report() -> list:
    found = {p.requirement.module: p for p in dependencies.problems()}
    for requirement in dependencies.requirements():
        version = dependencies.installed_version(requirement.distribution)
        status = str(found[requirement.module]) if requirement.module in found else f"{requirement.distribution} {version}: ok"
        print(f"  {status}  [{requirement.pip}]")
    return list(found.values())


def run(args: argparse.Namespace) -> int:
    print(f"Python {sys.version.split()[0]} at {sys.executable}")
    found = _report()
    if not found:
        print("Everything SinusAnomaly needs is installed.")
        return 0
    if args.check:
        print(dependencies.describe(found, f"run `{dependencies.SETUP_COMMAND}` without --check"), file=sys.stderr)
        return 2
    installer = _slicer_installer()
    if args.dry_run:
        torch_missing = any(p.requirement.module == "torch" for p in found)
        if installer is not None:
            torch_way = ("the PyTorch extension" if installer.pytorch_extension_installer(interactive=False) is not None
                         else "pip from PyPI")
            print("Would install into Slicer's Python" + (f"; torch with {torch_way}" if torch_missing else "") + ":")
        else:
            print(f"Would install with {sys.executable} -m pip:")
        for problem in found:
            print(f"  {problem.requirement.pip}")
        return 0
    try:
        if installer is not None:
            installer.install_into_slicer(confirm=None, log=print, interactive=False)
        else:
            dependencies.install(lambda requirements, constraints: dependencies.pip_in_subprocess(requirements, constraints, print),
                                 None, confirm=None, log=print)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        print(f"sinus-anomaly setup: error: installation failed: {exc}", file=sys.stderr)
        return 1
    print("Everything SinusAnomaly needs is installed.")
    return 0

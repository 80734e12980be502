"""Entry script for 3D Slicer and PythonSlicer, where the package may not be installed.

    Slicer --no-main-window --python-script /path/to/SinusAnomalyTraining/slicer_script.py -- extract head.nii.gz --out out
    PythonSlicer /path/to/SinusAnomalyTraining/slicer_script.py extract head.nii.gz --out out

It puts the repository (for ``SinusAnomalyTraining``) and the module folder (for
``SinusAnomalyLib``) on ``sys.path``, runs the CLI and exits with its exit code.
"""
import sys
from pathlib import Path

_repo = Path(__file__).resolve().parent.parent
for _path in (_repo, _repo / "SinusAnomaly"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from SinusAnomalyTraining.cli import run_and_exit  # noqa: E402

_args = sys.argv[1:]
if _args and _args[0] == "--":  # Slicer's launcher passes "--" through to the script
    _args = _args[1:]
run_and_exit(_args)

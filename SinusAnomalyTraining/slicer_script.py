"""Entry script for 3D Slicer and PythonSlicer, where the package may not be installed.

    Slicer --no-main-window --python-script /path/to/SinusAnomalyTraining/slicer_script.py -- extract head.nii.gz --out out
    PythonSlicer /path/to/SinusAnomalyTraining/slicer_script.py extract head.nii.gz --out out

It puts the folder holding ``SinusAnomalyTraining`` and the module folder (``SinusAnomalyLib``,
``SinusAnomalyMRMLLib``) on ``sys.path``, runs the CLI and always ends the process with an exit
code: ``Slicer --python-script`` keeps running after a script unless it calls ``sys.exit``, so an
exception the CLI does not handle is printed with its traceback and exits with 1.

The work runs only under ``if __name__ == "__main__"``: importing this file starts no command.
"""
import sys
import traceback
from pathlib import Path

UNEXPECTED_ERROR_EXIT_CODE = 1


def _add_package_paths() -> None:
    base = Path(__file__).resolve().parent.parent  # the repository, or the installed qt-scripted-modules folder
    for path in (base, base / "SinusAnomaly"):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))


def main(argv: list) -> None:
    """Run the CLI with ``argv`` and exit; never returns, whatever happens."""
    if argv and argv[0] == "--":  # Slicer's launcher passes "--" through to the script
        argv = argv[1:]
    try:
        _add_package_paths()
        from SinusAnomalyTraining.cli import run_and_exit  # noqa: PLC0415

        run_and_exit(argv)
    except SystemExit as exc:
        code = exc.code
        if code is None:
            code = 0
        elif not isinstance(code, int):
            print(code, file=sys.stderr)
            code = UNEXPECTED_ERROR_EXIT_CODE
        _exit(code)
    except BaseException:  # noqa: BLE001  (anything else: report it and end the process)
        traceback.print_exc()
        print("sinus-anomaly: unexpected error (traceback above); exit code 1", file=sys.stderr)
        _exit(UNEXPECTED_ERROR_EXIT_CODE)
    _exit(0)


def _exit(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])

"""Installing SinusAnomaly's Python packages into 3D Slicer's Python.

The module (before its first classification) and ``sinus-anomaly setup`` (run with PythonSlicer or
``Slicer --python-script``) both call :func:`install_into_slicer`, so they follow one policy
(:func:`SinusAnomalyLib.dependencies.install`):

* torch first, with the PyTorch extension's ``installTorch`` when it is installed (it picks the
  build that fits the GPU driver), else from PyPI within the range for the running Python;
* then MONAI and the rest, with a constraints file that keeps Slicer's SimpleITK and numpy and
  the torch just chosen;
* pip through ``slicer.packaging.pip_ensure`` where Slicer has it (5.11 and newer), else
  ``slicer.util.pip_install``.

``slicer`` is imported when these functions run, never at import time.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path

from SinusAnomalyLib import dependencies

REQUESTER = "SinusAnomaly"


def _slicer():
    import slicer  # noqa: PLC0415

    return slicer


def slicer_pip(slicer_module=None, interactive: bool = True):
    """``pip(requirements, constraints_file)`` for Slicer: ``pip_ensure`` (5.11+) or ``pip_install``."""
    slicer = slicer_module or _slicer()
    pip_ensure = None
    # slicer.packaging.pip_ensure in 5.11-5.12 (takes requirement strings); Slicer's development
    # branch moves it to slicer.pydeps (takes packaging Requirement objects)
    for module_name, wants_objects in (("packaging", False), ("pydeps", True)):
        module = getattr(slicer, module_name, None)
        if module is None:
            try:
                module = importlib.import_module(f"slicer.{module_name}")
            except ImportError:
                continue
        if getattr(module, "pip_ensure", None) is not None:
            pip_ensure = _with_requirement_objects(module.pip_ensure) if wants_objects else module.pip_ensure
            break

    def pip(requirements: list[str], constraints_file: Path) -> None:
        if pip_ensure is not None:
            logging.info(f"SinusAnomaly: slicer.packaging.pip_ensure {requirements} -c {constraints_file}")
            # the user confirmed already (one question for everything); a restart prompt only in the GUI
            pip_ensure(list(requirements), constraints=str(constraints_file), requester=REQUESTER,
                       prompt_install=False, prompt_restart=interactive)
        else:
            args = [*requirements, "-c", str(constraints_file)]
            logging.info(f"SinusAnomaly: slicer.util.pip_install {args}")
            slicer.util.pip_install(args)

    return pip


def _with_requirement_objects(pip_ensure):
    """``pip_ensure`` that takes requirement strings, for an API that takes ``Requirement`` objects."""
    def call(requirements, **kwargs):
        from packaging.requirements import Requirement  # noqa: PLC0415  (pip's, in Slicer's Python)

        return pip_ensure([Requirement(text) for text in requirements], **kwargs)

    return call


def pytorch_extension_installer(slicer_module=None, interactive: bool = True):
    """``install_torch(specifier)`` through the PyTorch extension, or None when it is not available
    (not installed, or PythonSlicer, where no Slicer module is loaded)."""
    slicer = slicer_module or _slicer()
    if getattr(slicer, "app", None) is None:
        return None
    try:
        import PyTorchUtils  # noqa: PLC0415  (the PyTorch extension's module)
    except ImportError:
        return None

    def install_torch(specifier: str) -> bool:
        logic = PyTorchUtils.PyTorchUtilsLogic()
        try:
            torch = logic.installTorch(askConfirmation=interactive, torchVersionRequirement=specifier)
        except TypeError:  # an old PyTorch extension without version requirements
            torch = logic.installTorch(askConfirmation=interactive)
        return torch is not None

    return install_torch


def install_into_slicer(confirm=None, log=logging.info, interactive: bool = True, work_dir: str | Path | None = None,
                        slicer_module=None) -> bool:
    """Install what is missing or outdated into Slicer's Python; False when the user declined.

    ``confirm`` is the one question before anything is installed, so the PyTorch extension is not
    asked to confirm again; ``interactive`` allows Slicer's restart prompt after an upgrade.
    """
    return dependencies.install(
        slicer_pip(slicer_module, interactive), pytorch_extension_installer(slicer_module, interactive=False),
        confirm=confirm, log=log, work_dir=work_dir)


def running_in_slicer_python(slicer_module=None) -> bool:
    """Whether this interpreter is 3D Slicer's (the application, or PythonSlicer, whose launcher sets
    SLICER_HOME), not a plain Python that merely has the ``slicer-core`` wheel."""
    import os  # noqa: PLC0415

    try:
        slicer = slicer_module or _slicer()
    except ImportError:
        return False
    return getattr(slicer, "app", None) is not None or bool(os.environ.get("SLICER_HOME"))

"""Which Python packages SinusAnomaly needs, in which versions, and what is wrong with the installed ones.

One policy for every place that checks or installs them: the Slicer module (before it starts
``classify``), ``sinus-anomaly setup`` (which installs them into Slicer's Python) and the other
subcommands (which name ``setup`` when something is missing). Plain Python: it never imports
torch, MONAI, slicer or Qt; versions are read from the installed distributions' metadata.

Supported 3D Slicer: :data:`MIN_SLICER` or newer (its Python is :data:`MIN_SLICER_PYTHON`).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import UnsupportedPythonError

MIN_SLICER = (5, 10)
MIN_SLICER_PYTHON = (3, 12)
SETUP_COMMAND = "sinus-anomaly setup"

# Lowest torch and MONAI per Python minor version: the first releases with wheels for it. The
# upper bounds are the newest releases this project was tested with (pyproject.toml).
TORCH_UPPER = "<=2.13.0"
MONAI_UPPER = "<1.7"
LOWEST_BY_PYTHON = {  # (major, minor): (torch, monai)
    (3, 10): ("2.1", "1.3"),
    (3, 11): ("2.1", "1.3"),
    (3, 12): ("2.2", "1.3"),
    (3, 13): ("2.6", "1.5"),
    (3, 14): ("2.9", "1.5"),
}
# With numpy 2 (Slicer 5.10 and newer ship it): torch built for numpy 2, and MONAI 1.5 or newer
# (1.4 and older declare numpy<2; 1.5 needs torch 2.4.1 or newer).
LOWEST_WITH_NUMPY2 = ("2.4.1", "1.5")


@dataclass(frozen=True)
class Requirement:
    """One package: its import name, distribution name and version specifier."""

    module: str
    distribution: str
    specifier: str

    @property
    def pip(self) -> str:
        """The requirement as pip reads it, e.g. ``torch>=2.4,<=2.13.0``."""
        return f"{self.distribution}{self.specifier}"


def torch_and_monai(python: tuple[int, int] | None = None, numpy_version: str | None = "installed"
                    ) -> tuple[Requirement, Requirement]:
    """torch and MONAI requirements for ``python`` (default: the running one) and ``numpy_version``
    (default: the installed numpy; None: no numpy)."""
    python = tuple((python or sys.version_info)[:2])
    if python not in LOWEST_BY_PYTHON:
        known = ", ".join(f"{a}.{b}" for a, b in LOWEST_BY_PYTHON)
        raise UnsupportedPythonError(
            f"Python {python[0]}.{python[1]} is not supported by SinusAnomaly (supported: {known})")
    torch_low, monai_low = LOWEST_BY_PYTHON[python]
    if numpy_version == "installed":
        numpy_version = installed_version("numpy")
    if numpy_version is not None and _release(numpy_version)[0] >= 2:
        torch_low = max(torch_low, LOWEST_WITH_NUMPY2[0], key=_release)
        monai_low = max(monai_low, LOWEST_WITH_NUMPY2[1], key=_release)
    return (Requirement("torch", "torch", f">={torch_low},{TORCH_UPPER}"),
            Requirement("monai", "monai", f">={monai_low},{MONAI_UPPER}"))


def requirements(python: tuple[int, int] | None = None, numpy_version: str | None = "installed") -> list[Requirement]:
    """Everything the headless toolkit needs besides numpy and SimpleITK (which Slicer ships and
    which are never installed or upgraded by SinusAnomaly): torch first, then the rest."""
    torch, monai = torch_and_monai(python, numpy_version)
    return [
        torch,
        monai,
        Requirement("nibabel", "nibabel", ">=5.0"),
        Requirement("scipy", "scipy", ">=1.9"),
        Requirement("sklearn", "scikit-learn", ">=1.2"),
        Requirement("tqdm", "tqdm", ">=4.60"),
        Requirement("matplotlib", "matplotlib", ">=3.6"),
        Requirement("filelock", "filelock", ">=3.0"),  # output locks; torch brings it, extract/prepare need it without
    ]


# Distributions pinned to their installed version in every install (constraints file): Slicer's
# own SimpleITK and numpy, and the torch build chosen first (possibly a CUDA build).
PINNED_DISTRIBUTIONS = ("SimpleITK", "numpy", "torch")


@dataclass(frozen=True)
class Problem:
    """A requirement that is not met: ``installed`` is None when the package is missing."""

    requirement: Requirement
    installed: str | None
    note: str = ""

    def __str__(self) -> str:
        if self.installed is None:
            return f"{self.requirement.distribution} is not installed (needs {self.requirement.pip})"
        if self.note:
            return f"{self.requirement.distribution} {self.installed}: {self.note}"
        return f"{self.requirement.distribution} {self.installed} is installed but {self.requirement.pip} is needed: update it"


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` is within ``specifier`` (comma-separated ``>=``, ``<=``, ``<``, ``>``, ``==``, ``!=``).

    A local build tag (``2.13.0+cu128``) does not count against ``<=2.13.0``.
    """
    public = version.split("+", 1)[0]
    try:
        from packaging.specifiers import SpecifierSet  # noqa: PLC0415
        from packaging.version import InvalidVersion, Version  # noqa: PLC0415
    except ImportError:
        return _simple_satisfies(public, specifier)
    try:
        return Version(public) in SpecifierSet(specifier, prereleases=True)
    except InvalidVersion:
        return False


def _release(text: str) -> tuple[int, ...]:
    match = re.match(r"(\d+(?:\.\d+)*)", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    numbers = [int(p) for p in match.group(1).split(".")]
    while len(numbers) > 1 and numbers[-1] == 0:
        numbers.pop()
    return tuple(numbers)


def _simple_satisfies(version: str, specifier: str) -> bool:
    """Release-number comparison without the ``packaging`` library (pre-releases not special)."""
    try:
        have = _release(version)
    except ValueError:
        return False
    checks = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
              "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        operator = next(op for op in (">=", "<=", "==", "!=", ">", "<") if clause.startswith(op))
        if not checks[operator](have, _release(clause[len(operator):])):
            return False
    return True


def problems(wanted: list[Requirement] | None = None) -> list[Problem]:
    """The requirements that are missing (not installed or not importable) or in the wrong version."""
    found = []
    for requirement in requirements() if wanted is None else wanted:
        version = installed_version(requirement.distribution)
        if version is None or importlib.util.find_spec(requirement.module) is None:
            found.append(Problem(requirement, None))
        elif not version_satisfies(version, requirement.specifier):
            found.append(Problem(requirement, version))
        elif requirement.module == "monai":
            mismatch = _torch_mismatch("monai")
            if mismatch:
                found.append(Problem(requirement, version, mismatch))
    return found


def _torch_mismatch(distribution: str) -> str:
    """Why the installed torch does not fit what ``distribution`` declares it needs ("" when it does)."""
    torch_version = installed_version("torch")
    if torch_version is None:
        return ""
    for line in importlib.metadata.requires(distribution) or []:
        match = re.fullmatch(r"torch\s*\(?([<>=!~,.0-9a-z+ ]*)\)?\s*", line.strip())
        if match and match.group(1).strip() and not version_satisfies(torch_version, match.group(1).replace(" ", "")):
            return (f"needs torch{match.group(1).replace(' ', '')} but torch {torch_version} is installed: "
                    f"update {distribution} or torch")
    return ""


def describe(found: list[Problem], remedy: str = f"run `{SETUP_COMMAND}`") -> str:
    """One message for the user: what is wrong with which package, and what to do."""
    lines = [f"SinusAnomaly's Python packages are not ready ({remedy}):"]
    lines += [f"  - {problem}" for problem in found]
    return "\n".join(lines)


def constraints_text() -> str:
    """A pip constraints file pinning the installed :data:`PINNED_DISTRIBUTIONS` (those with a
    version pip can parse): an install never replaces Slicer's SimpleITK or numpy, nor the torch
    build installed first."""
    lines = []
    for name in PINNED_DISTRIBUTIONS:
        version = installed_version(name)
        if version and re.fullmatch(r"[0-9]+(\.[0-9]+)*((a|b|rc)[0-9]+)?(\.post[0-9]+)?(\.dev[0-9]+)?(\+[A-Za-z0-9.]+)?", version):
            lines.append(f"{name}=={version}")
    return "\n".join(lines) + ("\n" if lines else "")


def slicer_version_problem(major: int, minor: int, python: tuple[int, int] | None = None) -> str | None:
    """Why this Slicer (``major.minor``, running ``python``) is too old for SinusAnomaly, or None."""
    python = tuple((python or sys.version_info)[:2])
    if (major, minor) < MIN_SLICER or python < MIN_SLICER_PYTHON:
        return (f"SinusAnomaly needs 3D Slicer {MIN_SLICER[0]}.{MIN_SLICER[1]} or newer (Python "
                f"{MIN_SLICER_PYTHON[0]}.{MIN_SLICER_PYTHON[1]}); this is Slicer {major}.{minor} with Python "
                f"{python[0]}.{python[1]}. Install a newer Slicer from the Slicer download page.")
    return None


def slicer_app_version_problem(app) -> str | None:
    """:func:`slicer_version_problem` of a running Slicer application (``slicer.app``); None where
    there is none or it has no version (plain Python with the ``slicer-core`` wheel)."""
    major, minor = getattr(app, "majorVersion", None), getattr(app, "minorVersion", None)
    if major is None or minor is None:
        return None
    return slicer_version_problem(int(major), int(minor))


def pip_in_subprocess(pip_requirements: list[str], constraints_file: Path, log=print) -> None:
    """Install with ``python -m pip`` of the running interpreter (outside Slicer)."""
    command = [sys.executable, "-m", "pip", "install", *pip_requirements, "-c", str(constraints_file)]
    log("running: " + " ".join(command))
    subprocess.run(command, check=True)


def install(pip, install_torch=None, confirm=None, log=print, work_dir: str | Path | None = None) -> bool:
    """Install what :func:`problems` reports, torch first. The one sequence for every installer.

    ``pip(requirements, constraints_file)`` installs pip requirement strings (Slicer: ``pip_ensure``
    or ``pip_install``; elsewhere :func:`pip_in_subprocess`). ``install_torch(specifier)`` installs
    torch itself when given (the PyTorch extension, which picks the build that fits the GPU) and
    returns False when the user declined; without it torch comes from ``pip``. ``confirm(message)``
    is asked once before anything is installed (None: no question). The constraints file pins
    Slicer's SimpleITK and numpy and, after the torch step, the torch just installed.

    Returns False when declined; raises RuntimeError naming what is still wrong afterwards.
    """
    found = problems()
    if not found:
        return True
    if confirm is not None and not confirm(describe(found, "install them now?")):
        log("SinusAnomaly: installation declined; nothing was installed")
        return False
    folder = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="SinusAnomalyPip"))
    folder.mkdir(parents=True, exist_ok=True)
    constraints_file = folder / "constraints.txt"
    torch_problem = next((p for p in found if p.requirement.module == "torch"), None)
    if torch_problem is not None:
        torch_spec = torch_problem.requirement.specifier
        # pins without torch: an old torch may be what is being replaced
        constraints_file.write_text("".join(line + "\n" for line in constraints_text().splitlines()
                                            if not line.lower().startswith("torch==")), encoding="utf-8")
        if install_torch is not None:
            log(f"SinusAnomaly: installing torch{torch_spec} with the PyTorch extension")
            if install_torch(torch_spec) is False:
                log("SinusAnomaly: PyTorch installation declined")
                return False
        else:
            log(f"SinusAnomaly: installing torch{torch_spec}")
            pip([torch_problem.requirement.pip], constraints_file)
        importlib.invalidate_caches()
    others = [p.requirement.pip for p in found if p.requirement.module != "torch"]
    if others:
        constraints_file.write_text(constraints_text(), encoding="utf-8")
        log("SinusAnomaly: installing " + " ".join(others))
        pip(others, constraints_file)
        importlib.invalidate_caches()
    still = problems()
    if still:
        raise RuntimeError(describe(still, "the installation did not fix this; see the log above"))
    return True

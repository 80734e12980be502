"""The one dependency policy (SinusAnomalyLib.dependencies), its Slicer installer and ``sinus-anomaly setup``.

Nothing is downloaded: pip, the PyTorch extension and Slicer's packaging API are recorded stand-ins.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from SinusAnomalyLib import dependencies as deps
from SinusAnomalyTraining.cli import main

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "SinusAnomaly") not in sys.path:
    sys.path.insert(0, str(REPO / "SinusAnomaly"))

from SinusAnomalyMRMLLib import installer  # noqa: E402


# --------------------------------------------------------------------------- requirement ranges

def test_torch_and_monai_ranges_follow_python_and_numpy():
    torch, monai = deps.torch_and_monai((3, 11), numpy_version="1.26.4")
    assert torch.pip == "torch>=2.1,<=2.13.0" and monai.pip == "monai>=1.3,<1.7"
    torch, monai = deps.torch_and_monai((3, 12), numpy_version="1.26.4")
    assert torch.pip == "torch>=2.2,<=2.13.0"  # the first torch with Python 3.12 wheels
    # Slicer 5.10+ ships numpy 2: torch built for it, and a MONAI that allows numpy 2
    torch, monai = deps.torch_and_monai((3, 12), numpy_version="2.0.2")
    assert torch.pip == "torch>=2.4.1,<=2.13.0" and monai.pip == "monai>=1.5,<1.7"
    torch, monai = deps.torch_and_monai((3, 13), numpy_version="2.4.6")
    assert torch.pip == "torch>=2.6,<=2.13.0"  # max() of the two lower bounds, compared as versions
    with pytest.raises(deps.UnsupportedPythonError, match="Python 3.9 is not supported"):
        deps.torch_and_monai((3, 9))
    names = [r.distribution for r in deps.requirements((3, 12), numpy_version="2.0.2")]
    assert names[0] == "torch" and "monai" in names and "matplotlib" in names
    assert not {"SimpleITK", "numpy"} & set(names)  # Slicer's own builds are never installed


@pytest.mark.parametrize("version, specifier, expected", [
    ("2.13.0+cu128", ">=2.4.1,<=2.13.0", True),  # a local build tag does not exceed <=2.13.0
    ("2.4.0", ">=2.4.1,<=2.13.0", False),
    ("2.14.0", ">=2.4.1,<=2.13.0", False),
    ("1.6.1", ">=1.5,<1.7", True),
    ("1.7.0", ">=1.5,<1.7", False),
    ("5.0", ">=5.0", True),
])
def test_version_satisfies_with_and_without_the_packaging_library(version, specifier, expected):
    assert deps.version_satisfies(version, specifier) is expected
    assert deps._simple_satisfies(version.split("+")[0], specifier) is expected


def test_problems_name_missing_and_outdated_packages_and_what_to_update(monkeypatch):
    wanted = [deps.Requirement("surely_not_installed_xyz", "surely-not-installed-xyz", ">=1.0"),
              deps.Requirement("numpy", "numpy", ">=999"),
              deps.Requirement("numpy", "numpy", ">=1.0")]
    found = deps.problems(wanted)
    assert [p.requirement.distribution for p in found] == ["surely-not-installed-xyz", "numpy"]
    assert str(found[0]) == "surely-not-installed-xyz is not installed (needs surely-not-installed-xyz>=1.0)"
    assert "is installed but numpy>=999 is needed: update it" in str(found[1])
    message = deps.describe(found)
    assert "sinus-anomaly setup" in message and "surely-not-installed-xyz" in message
    assert deps.problems() == []  # this environment has everything


def test_monai_that_needs_another_torch_is_a_problem(monkeypatch):
    versions = {"torch": "2.5.1", "monai": "1.6.1", "numpy": "2.0.2"}
    monkeypatch.setattr(deps, "installed_version", lambda name: versions.get(name))
    monkeypatch.setattr(deps.importlib.metadata, "requires", lambda name: ["torch>=2.8.0", "numpy<3.0,>=1.24"])
    found = deps.problems([deps.Requirement("monai", "monai", ">=1.5,<1.7")])
    assert len(found) == 1 and "needs torch>=2.8.0 but torch 2.5.1 is installed" in str(found[0])


def test_constraints_pin_slicers_simpleitk_and_numpy():
    import numpy
    import SimpleITK

    lines = deps.constraints_text().splitlines()
    assert f"SimpleITK=={SimpleITK.Version_VersionString()}" in lines
    assert f"numpy=={numpy.__version__}" in lines
    assert any(line.startswith("torch==") for line in lines)


# --------------------------------------------------------------------------- the install sequence

class Recorder:
    def __init__(self):
        self.calls = []

    def pip(self, requirements, constraints_file):
        self.calls.append(("pip", list(requirements), Path(constraints_file).read_text(encoding="utf-8")))

    def torch(self, specifier):
        self.calls.append(("torch", specifier))
        return True


def fake_problems(monkeypatch, sequence):
    """problems() returns the next entry of ``sequence`` on each call."""
    answers = iter(sequence)
    monkeypatch.setattr(deps, "problems", lambda wanted=None: next(answers))


TORCH = deps.Requirement("torch", "torch", ">=2.4.1,<=2.13.0")
MONAI = deps.Requirement("monai", "monai", ">=1.5,<1.7")
TQDM = deps.Requirement("tqdm", "tqdm", ">=4.60")


def test_install_puts_torch_first_through_its_installer_then_the_rest_with_pins(monkeypatch, tmp_path):
    fake_problems(monkeypatch, [[deps.Problem(TORCH, "2.2.0"), deps.Problem(MONAI, None), deps.Problem(TQDM, None)], []])
    monkeypatch.setattr(deps, "constraints_text", lambda: "SimpleITK==2.5.7\nnumpy==2.0.2\ntorch==2.2.0\n")
    recorder, questions = Recorder(), []
    assert deps.install(recorder.pip, recorder.torch, confirm=lambda m: questions.append(m) or True, log=lambda m: None,
                        work_dir=tmp_path)
    assert recorder.calls[0] == ("torch", ">=2.4.1,<=2.13.0")
    kind, requirements, constraints = recorder.calls[1]
    assert kind == "pip" and requirements == ["monai>=1.5,<1.7", "tqdm>=4.60"]
    assert "SimpleITK==2.5.7" in constraints and "numpy==2.0.2" in constraints
    assert len(questions) == 1 and "torch 2.2.0 is installed but torch>=2.4.1,<=2.13.0 is needed" in questions[0]


def test_install_without_the_pytorch_extension_gets_torch_from_pip_without_pinning_the_old_one(monkeypatch, tmp_path):
    fake_problems(monkeypatch, [[deps.Problem(TORCH, "2.2.0")], []])
    monkeypatch.setattr(deps, "constraints_text", lambda: "SimpleITK==2.5.7\nnumpy==2.0.2\ntorch==2.2.0\n")
    recorder = Recorder()
    assert deps.install(recorder.pip, None, log=lambda m: None, work_dir=tmp_path)
    assert recorder.calls == [("pip", ["torch>=2.4.1,<=2.13.0"], "SimpleITK==2.5.7\nnumpy==2.0.2\n")]


def test_install_declined_installs_nothing_and_failure_names_what_is_left(monkeypatch, tmp_path):
    fake_problems(monkeypatch, [[deps.Problem(MONAI, None)]])
    recorder = Recorder()
    assert deps.install(recorder.pip, None, confirm=lambda m: False, log=lambda m: None, work_dir=tmp_path) is False
    assert recorder.calls == []
    fake_problems(monkeypatch, [[deps.Problem(MONAI, None)], [deps.Problem(MONAI, None)]])
    with pytest.raises(RuntimeError, match="monai is not installed"):
        deps.install(recorder.pip, None, log=lambda m: None, work_dir=tmp_path)


# --------------------------------------------------------------------------- Slicer's installers

def fake_slicer(pip_ensure=True, app=True):
    calls = []
    util = types.SimpleNamespace(pip_install=lambda args: calls.append(("pip_install", args)))
    slicer = types.SimpleNamespace(util=util, app=object() if app else None)
    if pip_ensure:
        slicer.packaging = types.SimpleNamespace(
            pip_ensure=lambda reqs, **kw: calls.append(("pip_ensure", reqs, kw)))
    return slicer, calls


def test_slicer_pip_prefers_pip_ensure_and_falls_back_to_pip_install(tmp_path):
    constraints = tmp_path / "c.txt"
    slicer, calls = fake_slicer(pip_ensure=True)
    installer.slicer_pip(slicer, interactive=False)(["monai>=1.5,<1.7"], constraints)
    assert calls == [("pip_ensure", ["monai>=1.5,<1.7"], {"constraints": str(constraints), "requester": "SinusAnomaly",
                                                         "prompt_install": False, "prompt_restart": False})]
    slicer, calls = fake_slicer(pip_ensure=False)  # Slicer 5.10: no slicer.packaging
    installer.slicer_pip(slicer)(["monai>=1.5,<1.7", "tqdm>=4.60"], constraints)
    assert calls == [("pip_install", ["monai>=1.5,<1.7", "tqdm>=4.60", "-c", str(constraints)])]


def test_slicer_pip_uses_pydeps_pip_ensure_with_requirement_objects(tmp_path):
    """Slicer's development branch moved pip_ensure to slicer.pydeps, taking Requirement objects."""
    calls = []
    slicer = types.SimpleNamespace(util=types.SimpleNamespace(pip_install=lambda args: calls.append(("pip_install", args))),
                                   app=object(), packaging=types.SimpleNamespace(),
                                   pydeps=types.SimpleNamespace(pip_ensure=lambda reqs, **kw: calls.append(("pydeps", reqs, kw))))
    installer.slicer_pip(slicer, interactive=False)(["monai>=1.5,<1.7"], tmp_path / "c.txt")
    (name, reqs, kwargs), = calls
    assert name == "pydeps" and [type(r).__name__ for r in reqs] == ["Requirement"]
    assert str(reqs[0]) in ("monai<1.7,>=1.5", "monai>=1.5,<1.7") and kwargs["constraints"] == str(tmp_path / "c.txt")


def test_torch_comes_from_the_pytorch_extension_when_slicer_has_it(monkeypatch):
    requested = []

    class Logic:
        def installTorch(self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None):
            requested.append((askConfirmation, torchVersionRequirement))
            return types.SimpleNamespace(__version__="2.13.0")

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=Logic))
    slicer, _ = fake_slicer()
    install_torch = installer.pytorch_extension_installer(slicer, interactive=True)
    assert install_torch(">=2.4.1,<=2.13.0") is True
    assert requested == [(True, ">=2.4.1,<=2.13.0")]

    class OldLogic:  # an old PyTorch extension without version requirements; declined by the user
        def installTorch(self, askConfirmation=False):
            return None

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=OldLogic))
    assert installer.pytorch_extension_installer(slicer)(">=2.4.1") is False
    # PythonSlicer (no application, no modules loaded): pip instead
    assert installer.pytorch_extension_installer(fake_slicer(app=False)[0]) is None


def test_install_into_slicer_runs_the_shared_sequence(monkeypatch, tmp_path):
    fake_problems(monkeypatch, [[deps.Problem(TORCH, None), deps.Problem(TQDM, None)], []])
    monkeypatch.setattr(deps, "constraints_text", lambda: "SimpleITK==2.5.7\n")
    monkeypatch.delitem(sys.modules, "PyTorchUtils", raising=False)
    monkeypatch.setattr(installer, "pytorch_extension_installer", lambda *a, **k: None)
    slicer, calls = fake_slicer(pip_ensure=False)
    assert installer.install_into_slicer(log=lambda m: None, work_dir=tmp_path, slicer_module=slicer)
    assert [call[1][0] for call in calls] == ["torch>=2.4.1,<=2.13.0", "tqdm>=4.60"]


def test_running_in_slicer_python_tells_slicer_core_from_slicer(monkeypatch):
    monkeypatch.delenv("SLICER_HOME", raising=False)
    assert installer.running_in_slicer_python(types.SimpleNamespace()) is False  # slicer-core: no app
    assert installer.running_in_slicer_python(types.SimpleNamespace(app=object())) is True
    monkeypatch.setenv("SLICER_HOME", "/opt/Slicer")  # PythonSlicer's launcher sets it
    assert installer.running_in_slicer_python(types.SimpleNamespace()) is True


# --------------------------------------------------------------------------- sinus-anomaly setup and the other commands

def test_setup_check_reports_ready(capsys):
    assert main(["setup", "--check"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and ": ok" in out and "Everything SinusAnomaly needs is installed." in out


def test_setup_check_and_dry_run_name_what_is_missing(monkeypatch, capsys):
    missing = deps.Requirement("surely_not_installed_xyz", "surely-not-installed-xyz", ">=1.0")
    monkeypatch.setattr(deps, "requirements", lambda *a, **k: [missing])
    assert main(["setup", "--check"]) == 2
    captured = capsys.readouterr()
    assert "surely-not-installed-xyz is not installed" in captured.err
    assert main(["setup", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "Would install with" in out and "-m pip" in out and "surely-not-installed-xyz>=1.0" in out


def test_other_commands_refuse_outdated_packages_and_name_setup(monkeypatch, capsys, tmp_path):
    outdated = deps.Requirement("numpy", "numpy", ">=999")
    monkeypatch.setattr(deps, "requirements", lambda *a, **k: [outdated])
    assert main(["evaluate", "--dataset", str(tmp_path / "d"), "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "sinus-anomaly evaluate: error:" in err and "numpy>=999 is needed: update it" in err
    assert "sinus-anomaly setup" in err
    assert not (tmp_path / "r").exists()

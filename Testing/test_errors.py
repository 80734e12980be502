"""Every exception class lives in SinusAnomalyLib/errors.py, derives from SinusAnomalyError and exits with 2."""
from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from SinusAnomalyLib import errors
from SinusAnomalyTraining import cli

REPO = Path(__file__).resolve().parents[1]
SOURCES = [*(REPO / "SinusAnomaly").rglob("*.py"), *(REPO / "SinusAnomalyTraining").rglob("*.py")]


def _exception_classes(path: Path) -> list[str]:
    """Names of classes in ``path`` whose bases' names end in Error or Exception."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef):
            bases = [b.attr if isinstance(b, ast.Attribute) else getattr(b, "id", "") for b in node.bases]
            if any(name.endswith(("Error", "Exception")) for name in bases):
                found.append(node.name)
    return found


def test_every_exception_class_is_defined_in_errors_py():
    elsewhere = {str(p.relative_to(REPO)): _exception_classes(p) for p in SOURCES if p.name != "errors.py"}
    assert {path: names for path, names in elsewhere.items() if names} == {}
    assert len(_exception_classes(REPO / "SinusAnomaly" / "SinusAnomalyLib" / "errors.py")) >= 15


def test_every_exception_class_is_a_sinus_anomaly_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, BaseException)]
    assert len(classes) >= 16
    assert all(issubclass(c, errors.SinusAnomalyError) for c in classes), [c.__name__ for c in classes]


@pytest.mark.parametrize("error", [errors.InvalidValueError("learning rate must be positive, got -1"),
                                   errors.CheckpointError("run/last.pt", "not a SinusAnomaly checkpoint"),
                                   errors.ResultError("out/result.json: no result file")])
def test_the_cli_turns_every_error_into_exit_code_2_with_one_line(error, monkeypatch, capsys):
    def fails(args):
        raise error

    module = __import__("SinusAnomalyTraining.commands.evaluate", fromlist=["run"])
    monkeypatch.setattr(module, "run", fails)
    code = cli.main(["evaluate", "--dataset", "d", "--run-dir", "r"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == f"sinus-anomaly evaluate: error: {error}"
    assert "Traceback" not in err

"""What the training commands and prepare do to the folders they write (issue 25): SIGTERM stops
them as Ctrl-C does, one writer per run folder, and commands given --config never rewrite an
existing run's config.json or dataset.json. Signals and exit codes are checked in subprocesses,
as a user (or a cluster's scheduler) sees them."""
from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from SinusAnomalyLib.fileio import LOCK_FILE, locked_output_folder
from SinusAnomalyTraining.cli import main
from SinusAnomalyTraining.engine import load_checkpoint
from conftest import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
# fold 0, method none, 50 % labels only: what `evaluate` needs after one fine-tuning
ONE_CELL = {**copy.deepcopy(TINY_CONFIG), "methods": ["none"], "fractions": [50], "folds": [0]}


def write_config(path: Path, **changes) -> Path:
    config = copy.deepcopy(ONE_CELL)
    for key, value in changes.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    path.write_text(json.dumps(config))
    return path


def finetune_args(dataset: Path, run: Path, config: Path) -> list[str]:
    return ["finetune", "--method", "none", "--fraction", "50", "--config", str(config), "--dataset", str(dataset),
            "--run-dir", str(run), "--no-progress"]


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "SinusAnomalyTraining", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def terminated_when(args: list[str], ready, script: str = "", timeout: float = 240) -> subprocess.CompletedProcess:
    """The CLI run with ``args`` (after ``script``, e.g. a slowed-down stand-in), sent SIGTERM once ``ready()``."""
    code = f"import sys\n{script}\nfrom SinusAnomalyTraining.cli import run_and_exit\nrun_and_exit(sys.argv[1:])\n"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and not ready():
        time.sleep(0.01)
    assert proc.poll() is None, proc.communicate()[1][-3000:]  # still running: the signal lands mid-work
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def leftovers(folder: Path) -> list[str]:
    """Temporary files an interruption must not leave behind."""
    return [str(p) for p in folder.rglob("*") if ".partial" in p.name or p.name.endswith(".old")]


def assert_stopped_like_ctrl_c(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 130, (proc.returncode, proc.stderr[-3000:])
    assert "interrupted; finished outputs are kept, re-run to resume" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]


def test_sigterm_stops_a_training_stage_as_ctrl_c_does(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    config = write_config(tmp_path / "long.json", finetune={"epochs": 200})  # long enough to be stopped mid-training
    stage = run / "fold0" / "finetune" / "none" / "frac50"
    proc = terminated_when(finetune_args(tiny_dataset, run, config), lambda: (stage / "last.pt").is_file())
    assert_stopped_like_ctrl_c(proc)
    assert 1 <= load_checkpoint(stage / "last.pt")["epoch"] < 200 and not (stage / "done.json").exists()
    assert leftovers(run) == []
    with locked_output_folder(run, "run folder"):  # the lock was released
        pass


def test_sigterm_stops_prepare_as_ctrl_c_does(tmp_path):
    """Scans finished before the signal stay in the cache, whole; nothing half-written, no dataset.json."""
    images = tmp_path / "images"
    images.mkdir()
    for i in range(30):
        (images / f"p{i:02d}.nii.gz").write_bytes(b"placeholder: extraction is faked")
    (tmp_path / "labels.csv").write_text("patient,side,label,anomaly_type\n" + "".join(
        f"p{i:02d},{side},0,normal\n" for i in range(30) for side in ("left", "right")))
    slow_fake = ("import time\nimport numpy as np\nimport SinusAnomalyLib.dataset as d\nfrom conftest import _FakeExtraction\n"
                 "def fake(path, *a, **k):\n    time.sleep(0.3)\n"
                 "    return _FakeExtraction({s: np.full((64, 64, 64), 0.5, np.float32) for s in ('left', 'right')})\n"
                 "d.extract_sinuses = fake\n")
    dataset = tmp_path / "dataset"
    proc = terminated_when(["prepare", "--images", str(images), "--labels", str(tmp_path / "labels.csv"), "--out", str(dataset),
                            "--folds", "2", "--no-progress", "--workers", "1"], lambda: len(list(dataset.glob("scans/*/crops.npz"))) >= 2,
                           script="sys.path.insert(0, 'Testing')\n" + slow_fake)
    assert_stopped_like_ctrl_c(proc)
    cached = list(dataset.glob("scans/*/crops.npz"))
    assert 2 <= len(cached) < 30 and not (dataset / "dataset.json").exists()
    assert leftovers(dataset) == []
    with locked_output_folder(dataset, "dataset"):
        pass


def test_a_second_command_writing_the_same_run_folder_is_refused(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    config = write_config(tmp_path / "tiny.json")
    with locked_output_folder(run, "run folder"):  # as a running training command holds it
        proc = cli(*finetune_args(tiny_dataset, run, config))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{run}: another process is writing this run folder now" in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written by the refused command


def test_commands_given_a_config_never_rewrite_an_existing_run(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    config = write_config(tmp_path / "tiny.json")
    assert main(finetune_args(tiny_dataset, run, config)) == 0
    recorded = {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns) for name in ("config.json", "dataset.json")}

    def unchanged() -> bool:
        return all(((run / n).read_bytes(), (run / n).stat().st_mtime_ns) == recorded[n] for n in recorded)

    assert main(finetune_args(tiny_dataset, run, config)) == 0 and unchanged()  # the run's own settings: nothing rewritten
    other = write_config(tmp_path / "other.json", evaluate={"bootstrap": 60}, finetune={"epochs": 3})
    capsys.readouterr()
    assert main(["evaluate", "--config", str(other), "--dataset", str(tiny_dataset), "--run-dir", str(run)]) == 0  # read-only
    assert unchanged() and (run / "evaluation" / "report.md").is_file()
    proc = cli(*finetune_args(tiny_dataset, run, other))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"{run / 'config.json'}: the run was made with other settings" in proc.stderr
    assert "finetune.epochs: 2 -> 3" in proc.stderr and "evaluate.bootstrap: 50 -> 60" in proc.stderr
    assert unchanged()


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_signal_as_the_temporary_file_or_folder_is_made_leaves_nothing_behind(kind, tmp_path, monkeypatch):
    """SIGTERM landing just after the temporary is created (before the code that removes it knows its
    name), with another thread running, as torch's are: the write is stopped and nothing stays."""
    import os
    import tempfile
    import threading

    from SinusAnomalyLib import fileio
    from SinusAnomalyTraining.cli import terminate_as_interrupt

    name = {"file": "mkstemp", "folder": "mkdtemp"}[kind]
    make = getattr(tempfile, name)

    def made_then_signalled(*args, **kwargs):
        made = make(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return made

    monkeypatch.setattr(tempfile, name, made_then_signalled)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)  # a thread that does not block the signal
    other.start()
    target = tmp_path / "out"
    try:
        with terminate_as_interrupt(), pytest.raises(KeyboardInterrupt):
            with fileio.atomic_path(target / "result.json") if kind == "file" else fileio.atomic_folder(target, ["result.json"]):
                pytest.fail("the signal should have stopped the write before its body")
    finally:
        stop.set()
    assert [p.name for p in tmp_path.rglob("*") if p != target] == []


def test_sigterm_stops_the_pool_workers_of_train_default_at_once(tmp_path):
    """The pools' worker processes end with the command; each pool keeps the heads it finished, whole."""
    work = tmp_path / "work"
    heads = lambda: sorted(work.glob("pools/*/images/synth-*.nii.gz"))  # noqa: E731
    proc = terminated_when(["train-default", "--out", str(work), "--heads", "20", "--unlabelled", "0", "--workers", "2"],
                           lambda: len(heads()) >= 1)
    assert_stopped_like_ctrl_c(proc)
    made = heads()
    time.sleep(3)  # a worker left running would go on writing heads
    assert heads() == made and 1 <= len(made) < 2 * 20
    assert leftovers(work) == []

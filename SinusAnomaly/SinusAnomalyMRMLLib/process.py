"""The background ``classify`` process: where its script and interpreter are, its command line and
environment, and a process wrapper that never blocks the caller.

Plain Python (no slicer, vtk or Qt). The module polls :class:`ClassificationProcess` from a
``qt.QTimer``; scripts wait on it.
"""
from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

from SinusAnomalyLib.errors import PythonSlicerNotFoundError
from SinusAnomalyLib.resultformat import RESULT_FILE

CANCEL_GRACE_SECONDS = 3.0  # after Cancel, the process may exit cleanly this long before it is killed


def find_training_script(module_dir: str | Path) -> Path | None:
    """``SinusAnomalyTraining/slicer_script.py`` next to the module (installed extension) or one level
    up (source tree, and where the extension build copies ``../SinusAnomalyTraining``)."""
    module_dir = Path(module_dir).resolve()
    for base in (module_dir, module_dir.parent):
        candidate = base / "SinusAnomalyTraining" / "slicer_script.py"
        if candidate.is_file():
            return candidate
    return None


def training_script(module_dir: str | Path) -> Path:
    """:func:`find_training_script`, or a RuntimeError saying where it looked."""
    script = find_training_script(module_dir)
    if script is None:
        module_dir = Path(module_dir).resolve()
        raise RuntimeError(f"SinusAnomalyTraining/slicer_script.py was found neither in {module_dir} nor in "
                           f"{module_dir.parent}; the extension is incompletely installed")
    return script


def find_python_slicer(executable: str | Path, search_path: str | None = None) -> str:
    """``PythonSlicer`` (Slicer's Python launcher): on ``search_path`` (default PATH; Slicer puts its
    ``bin`` there) or in the folder of ``executable`` (the running interpreter or application).

    Raises :class:`PythonSlicerNotFoundError` naming where it looked.
    """
    names = ("PythonSlicer.exe", "PythonSlicer") if os.name == "nt" else ("PythonSlicer",)
    for name in names:
        found = shutil.which(name, path=search_path)
        if found:
            return found
    folder = Path(executable).resolve().parent
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return str(candidate)
    raise PythonSlicerNotFoundError(
        f"PythonSlicer (Slicer's Python launcher) was found neither on PATH nor in {folder}: "
        "the background classification cannot start; reinstall 3D Slicer")


def classify_command(python: str | Path, script: str | Path, input_file: str | Path, model: str | Path,
                     out_dir: str | Path, force_cpu: bool = False) -> list[str]:
    """``PythonSlicer slicer_script.py -v classify INPUT --model BUNDLE --out DIR [--device cpu]``.

    ``-v`` makes the process log each phase with its time, which the module's log shows.
    """
    command = [str(python), str(script), "-v", "classify", str(input_file), "--model", str(model), "--out", str(out_dir)]
    if force_cpu:
        command += ["--device", "cpu"]
    return command


def classify_environment(base: dict | None = None, force_cpu: bool = False, python_paths=()) -> dict:
    """Environment of the background process.

    ``force_cpu`` hides every GPU (``CUDA_VISIBLE_DEVICES=-1``). ``python_paths`` (the module folder
    holding ``SinusAnomalyLib``, the folder holding ``SinusAnomalyTraining``) go first on
    ``PYTHONPATH`` so the script finds both in any layout. Output is unbuffered so the log streams.
    """
    env = dict(os.environ if base is None else base)
    if force_cpu:
        env["CUDA_VISIBLE_DEVICES"] = "-1"
    paths = [str(p) for p in python_paths]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if paths:
        env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("PYTHONIOENCODING", "utf-8")
    return env


class ClassificationProcess:
    """A command run in the background; its output is read line by line by a thread.

    ``poll()`` returns the lines that arrived since the last call and never blocks (call it from a
    timer); ``wait()`` blocks until the end (scripts). ``cancel()`` asks the process and everything
    it started (the PythonSlicer launcher starts the real interpreter as a child) to end and
    returns at once; ``poll()``/``wait()`` kill them if they are still there after the grace period.
    """

    def __init__(self, command, env: dict | None = None, cwd: str | Path | None = None,
                 cancel_grace_seconds: float = CANCEL_GRACE_SECONDS):
        self.command = [str(c) for c in command]
        self.env = env
        self.cwd = str(cwd) if cwd is not None else None
        self.cancel_grace_seconds = float(cancel_grace_seconds)
        self.returncode: int | None = None
        self.cancelled = False
        self.killed = False
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.lines: list[str] = []  # everything read so far
        self._proc: subprocess.Popen | None = None
        self._queue: queue.Queue = queue.Queue()
        self._reader: threading.Thread | None = None
        self._done = False
        self._kill_at: float | None = None

    def start(self) -> "ClassificationProcess":
        kwargs = dict(stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                      encoding="utf-8", errors="replace", bufsize=1, env=self.env, cwd=self.cwd)
        if os.name == "nt":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | getattr(subprocess, "CREATE_NO_WINDOW", 0)
        else:
            kwargs["start_new_session"] = True  # own process group: cancel() reaches the launcher's children
        if not Path(self.command[0]).is_file() and shutil.which(self.command[0]) is None:
            raise FileNotFoundError(f"{self.command[0]}: the program to run does not exist")
        self.start_time = time.time()
        self._proc = subprocess.Popen(self.command, **kwargs)
        self._reader = threading.Thread(target=self._read, name="SinusAnomaly output reader", daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        proc = self._proc
        for line in proc.stdout:
            self._queue.put(line.rstrip("\r\n"))
        proc.stdout.close()
        proc.wait()
        self._queue.put(None)  # end marker, after all output

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and not self._done

    @property
    def finished(self) -> bool:
        """True once the process ended and all its output has been returned by poll()/wait()."""
        return self._done

    @property
    def succeeded(self) -> bool:
        return self._done and not self.cancelled and self.returncode == 0

    @property
    def elapsed(self) -> float:
        if self.start_time is None:
            return 0.0
        return (self.end_time or time.time()) - self.start_time

    def poll(self) -> list[str]:
        """New output lines since the last call (never blocks); kills a cancelled process whose
        grace period is over."""
        self._kill_if_overdue()
        new = []
        while not self._done:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self._finish()
            else:
                new.append(item)
        self.lines.extend(new)
        return new

    def wait(self, timeout: float | None = None, on_line=None) -> int | None:
        """Block until the process ends (or ``timeout`` seconds pass); ``on_line`` gets each line."""
        deadline = None if timeout is None else time.time() + timeout
        while not self._done:
            self._kill_if_overdue()
            remaining = None if deadline is None else deadline - time.time()
            if remaining is not None and remaining <= 0:
                break
            try:
                item = self._queue.get(timeout=0.2 if remaining is None else min(0.2, remaining))
            except queue.Empty:
                continue
            if item is None:
                self._finish()
            else:
                self.lines.append(item)
                if on_line:
                    on_line(item)
        return self.returncode

    def _finish(self) -> None:
        self._done = True
        self.end_time = time.time()
        self.returncode = self._proc.returncode

    def cancel(self) -> None:
        """Ask the process and its children to end (SIGTERM to its process group; on Windows the
        whole tree is ended at once). Returns immediately."""
        if self._proc is None or self._done:
            return
        if self._proc.poll() is not None:
            self.cancelled = True  # ended by itself meanwhile; its output is still collected
            return
        self.cancelled = True
        if self._kill_at is not None:
            return  # asked already
        self._kill_at = time.time() + self.cancel_grace_seconds
        if os.name == "nt":
            # taskkill /T ends the launcher and the interpreter it started; not waited for
            subprocess.Popen(["taskkill", "/F", "/T", "/PID", str(self._proc.pid)], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        else:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)  # the group started with start_new_session
            except ProcessLookupError:
                pass

    def _kill_if_overdue(self) -> None:
        if self._kill_at is None or self.killed or time.time() < self._kill_at:
            return
        if self._proc.poll() is not None and os.name == "nt":
            return
        self.killed = True
        if os.name == "nt":
            self._proc.kill()
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)  # also children that outlived the launcher
        except ProcessLookupError:
            pass


def finished_outcome(background: ClassificationProcess, result_dir: str | Path) -> str:
    """What to do with a finished classify process: ``"load"`` its result folder, or report it
    ``"cancelled"`` or ``"failed"``.

    ``classify`` moves its result folder into place whole, ``result.json`` included, only once
    everything is written. So a Cancel that arrived after that (the process was finishing or had
    finished, whatever its exit code then) keeps the result; a Cancel before it cancels.
    """
    if background.cancelled:
        return "load" if (Path(result_dir) / RESULT_FILE).is_file() else "cancelled"
    return "load" if background.returncode == 0 else "failed"

"""Writing outputs safely: a reader never sees a half-written file or result folder, an
interruption leaves none, two processes never write one output, and a folder that cannot be
written is reported (naming it) before any work is done.

JSON is written strictly (``allow_nan=False``): a NaN or infinity is an error, never a bare
``NaN`` token that other JSON readers reject.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import OutputError


def _problem(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise OutputError(folder, "is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise OutputError(folder, "cannot be created: a file is in the way") from None
    except OSError as exc:
        raise OutputError(folder, f"cannot be created: {_problem(exc)}") from exc


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one step.

    The temporary name keeps the suffixes of ``path`` (``.nii.gz`` etc.) so writers that choose
    the format from the extension still work. On error the temporary file is removed. An
    ``OSError`` (read-only file system, disk full, a folder in the way) becomes an
    :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    _make_folder(path.parent)
    suffix = "".join(path.suffixes)
    tmp = None
    try:
        with _signals_deferred():  # Ctrl-C or SIGTERM waits until tmp is known, so the finally below removes it
            fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=".partial" + suffix, dir=path.parent)
            os.close(fd)
            tmp = Path(tmp_name)
        yield tmp
        # mkstemp creates 0600 files; give the result the permissions a plain open() would
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(path, f"cannot be written: {_problem(exc)}") from exc
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_text(obj) -> str:
    """Strict JSON (NaN and infinities are errors) as this project writes it."""
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_json_atomic(path: str | Path, obj) -> None:
    """Write ``obj`` as strict JSON atomically; raise ``ValueError`` for NaN or infinite numbers."""
    write_text_atomic(path, json_text(obj))


def write_csv_atomic(path: str | Path, columns: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Write a CSV table (header ``columns``, then ``rows``; None becomes an empty cell) atomically."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(["" if v is None else v for v in row] for row in rows)
    write_text_atomic(path, buffer.getvalue())


def check_output_folder(folder: str | Path) -> Path:
    """Create ``folder`` (and its parents) and check a file can be written in it.

    Called before any heavy work, so a read-only location or a file in the way is reported in
    a second, not after minutes of registration. Raises :class:`OutputError` naming the folder.
    """
    folder = Path(folder)
    _make_folder(folder)
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".write-test."):
            pass
    except OSError as exc:
        raise OutputError(folder, f"is not writable: {_problem(exc)}") from exc
    return folder


LOCK_FILE = ".sinus-anomaly.lock"


@contextlib.contextmanager
def _exclusive(lock_path: Path, target: Path, what: str) -> Iterator[None]:
    """Hold ``lock_path`` (``flock`` through the ``filelock`` package) or refuse at once."""
    from filelock import FileLock, Timeout  # noqa: PLC0415  (a torch dependency; imported only when writing)

    lock = FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise OutputError(target, f"another process is writing this {what} now (lock {lock_path}); "
                                  "wait for it to finish or choose another output") from None
    except OSError as exc:
        raise OutputError(target, f"cannot be locked for writing: {_problem(exc)}") from exc
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def locked_output_folder(folder: str | Path, what: str = "output folder") -> Iterator[Path]:
    """Create and check ``folder`` (:func:`check_output_folder`) and hold its lock while writing.

    One process at a time: a second ``sinus-anomaly`` process writing the same folder gets an
    :class:`OutputError` at once instead of silently mixing its files with the first one's. The
    lock is the file :data:`LOCK_FILE` inside the folder (it stays; unheld it is harmless). When
    the work fails and this call created the folder, the folder is removed again if nothing but
    the lock was written into it.
    """
    folder = Path(folder)
    created = not folder.exists()
    check_output_folder(folder)
    try:
        with _exclusive(folder / LOCK_FILE, folder, what):
            yield folder
    except BaseException:
        if created and folder.is_dir() and {p.name for p in folder.iterdir()} <= {LOCK_FILE}:
            shutil.rmtree(folder, ignore_errors=True)
        raise


@contextlib.contextmanager
def locked_result_folder(folder: str | Path, replaceable: Iterable[str], what: str = "result folder") -> Iterator[None]:
    """:func:`check_replaceable` for a folder that :func:`atomic_folder` will replace, and its lock
    while writing: the file ``.<name>.lock`` beside it (inside, it would be replaced with it)."""
    folder = Path(folder)
    check_replaceable(folder, replaceable)
    with _exclusive(folder.parent / f".{folder.name}.lock", folder, what):
        yield


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM for a few system calls, then act on one that came meanwhile as
    it would have been acted on (main thread, where Python runs signal handlers; else a no-op).

    The handlers are swapped for ones that only note the signal: blocking it in the main thread
    with pthread_sigmask need not hold it back, as the kernel may hand it to another thread (torch's,
    a prefetch thread) and Python runs the handler in the main thread all the same.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: list[int] = []
    # a handler set outside Python (getsignal gives None, e.g. by an embedding application) is left alone
    previous = {sig: signal.signal(sig, lambda signum, frame: noted.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) is not None}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if noted:
            signal.raise_signal(noted[0])


def check_replaceable(folder: str | Path, replaceable: Iterable[str]) -> None:
    """Check that :func:`atomic_folder` may put a new folder at ``folder``: its parent can be
    created and written, and an existing ``folder`` holds nothing but names in ``replaceable``."""
    folder = Path(folder)
    allowed = set(replaceable)
    if folder.exists():
        if not folder.is_dir():
            raise OutputError(folder, "is a file, not a folder")
        try:
            foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
        except OSError as exc:
            raise OutputError(folder, f"cannot be read: {_problem(exc)}") from exc
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise OutputError(folder, f"holds other files ({shown}); choose a new or empty folder, or one holding "
                                      "an earlier result of this command")
    try:
        check_output_folder(folder.parent)
    except OutputError as exc:
        raise OutputError(folder, f"cannot be created: {exc}") from exc


@contextlib.contextmanager
def atomic_folder(folder: str | Path, replaceable: Iterable[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; on success it takes ``folder``'s place.

    Everything is written into the temporary folder; then an existing ``folder`` (an earlier
    result) is moved aside and the new one renamed into place, with Ctrl-C and SIGTERM held back
    for those two renames. An interruption or error at any point leaves either the old folder or
    the new one complete, never a mix, and removes the temporary folder. An existing ``folder``
    holding anything other than the names in ``replaceable`` is refused (:class:`OutputError`),
    so a result never replaces a folder of other files.
    """
    folder = Path(folder)
    check_replaceable(folder, replaceable)
    tmp = old = None
    try:
        with _signals_deferred():  # Ctrl-C or SIGTERM waits until tmp is known, so the finally below removes it
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".partial", dir=folder.parent))
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders
        with _signals_deferred():
            if folder.exists():
                old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
                os.replace(folder, old)
            os.replace(tmp, folder)
    except OSError as exc:
        if old is not None and not folder.exists():
            os.replace(old, folder)  # put the earlier result back
            old = None
        raise OutputError(folder, f"cannot be written: {_problem(exc)}") from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

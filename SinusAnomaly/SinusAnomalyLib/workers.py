"""Worker processes for the CPU-bound work on heads (extraction, synthetic pools).

One way to make them: ``with process_pool(n) as pool``. Its workers are spawned, not forked (the
parent may hold torch's and ITK's threads, which a forked child would inherit half-made); an error
or an interrupt in the ``with`` block ends them at once; and each leaves when its parent is gone,
so a killed command leaves no worker behind waiting for work forever.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

from .errors import InvalidValueError

PARENT_CHECK_S = 1.0


def default_workers() -> int:
    """Processes for the CPU-bound work on heads: one per core, at most 4 (each holds a head and its
    registration in memory, about 1 GB)."""
    return max(1, min(4, os.cpu_count() or 1))


def check_workers(workers: int) -> None:
    """Refuse a number of worker processes below 1 (the ``--workers`` of the commands)."""
    if workers < 1:
        raise InvalidValueError(f"--workers must be at least 1 (got {workers})")


@contextlib.contextmanager
def process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of ``workers`` spawned processes that exit when this process is gone. An exception
    leaving the ``with`` block (an error, Ctrl-C, SIGTERM) ends them at once (:func:`stop_workers`);
    otherwise they are shut down as usual, after their jobs."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_leave_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            yield pool
        except BaseException:
            stop_workers(pool)
            raise


def stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the jobs not started and end the running ones now (on an error or an interrupt: Ctrl-C,
    SIGTERM, the Slicer module's Cancel), rather than wait for them. Safe for work that writes each
    head or scan whole or not at all, so that a re-run resumes it."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public way before Python 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _leave_with_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_S)
        os._exit(1)  # the parent died without shutting the pool down (killed): nobody waits for results

    threading.Thread(target=watch, name="leave-with-parent", daemon=True).start()

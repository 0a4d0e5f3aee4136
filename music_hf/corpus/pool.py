"""Conversion tasks in worker processes: per-piece time limits, and a pool that survives crashed workers.

music21 can spin for minutes on one score and abc2midi (C code inside symusic) can hang or crash, so each
task runs under a time limit in a separate process; a worker that dies fails only its own task.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

#: Reason recorded for the tasks of a worker that died twice (crash, or a hang the watchdog killed).
CRASH_REASON = "worker process crashed (or hung past the timeout)"

T = TypeVar("T")
R = TypeVar("R")


class PieceTimeout(Exception):
    """A piece ran past its time limit."""


def reason(exc: BaseException) -> str:
    """A one-line failure reason for the manifest: exception type and first message line."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}"[:300]


_IN_WORKER = False


def _worker_init() -> None:
    """Worker process setup: mark the process so a hard watchdog may kill it."""
    global _IN_WORKER
    _IN_WORKER = True
    warnings.simplefilter("ignore")


@contextlib.contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise :class:`PieceTimeout` after ``seconds``; in a worker, also hard-exit if C code ignores that.

    The timeout uses SIGALRM (POSIX main thread only); the watchdog (faulthandler) exits the worker a
    minute later, which the pool reports as a crash of that task.
    """
    alarm = (
        seconds
        and seconds > 0
        and hasattr(signal, "SIGALRM")
        and threading.current_thread() is threading.main_thread()
    )
    with contextlib.ExitStack() as stack:
        if alarm:
            def _handler(signum, frame):  # noqa: ARG001
                raise PieceTimeout(f"timeout after {seconds:.0f} s")

            old = signal.signal(signal.SIGALRM, _handler)
            signal.setitimer(signal.ITIMER_REAL, float(seconds))
            stack.callback(signal.signal, signal.SIGALRM, old)
            stack.callback(signal.setitimer, signal.ITIMER_REAL, 0)
        if _IN_WORKER and seconds:
            faulthandler.dump_traceback_later(seconds + 60, exit=True)
            stack.callback(faulthandler.cancel_dump_traceback_later)
        yield


def run_tasks(
    fn: Callable[[T], R],
    tasks: Sequence[T],
    num_workers: int,
    on_result: Callable[[T, R], Any],
    on_error: Callable[[T, str], Any],
) -> None:
    """Call ``fn(task)`` for every task in worker processes; ``on_result(task, result)`` runs in the caller.

    Tasks of a worker that died are retried in a fresh pool, then once more each alone in its own pool, so
    only the culprit fails: ``on_error(task, CRASH_REASON)``.  A task whose result cannot come back (e.g.
    unpicklable) gets ``on_error(task, reason)``.  One worker or one task runs in this process.
    """
    if num_workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            on_result(task, fn(task))
        return

    remaining = list(tasks)
    for attempt in range(3):
        if not remaining:
            return
        isolate = attempt == 2
        workers = 1 if isolate else min(num_workers, len(remaining))
        batches = [[t] for t in remaining] if isolate else [remaining]
        unfinished: list[T] = []
        for batch in batches:
            try:
                with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
                    futures = {pool.submit(fn, t): t for t in batch}
                    pending = set(futures)
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            task = futures[fut]
                            try:
                                result = fut.result()
                            except BrokenProcessPool:
                                unfinished.append(task)
                            except Exception as exc:  # noqa: BLE001 - e.g. unpicklable result
                                on_error(task, reason(exc))
                            else:
                                on_result(task, result)
            except BrokenProcessPool:
                pass
        if unfinished and attempt < 2:
            logger.warning("worker process died; retrying %d task(s)", len(unfinished))
        remaining = unfinished
    for task in remaining:
        on_error(task, CRASH_REASON)

"""Worker processes for trials and seeds: spawned, sharing the cores, and never outliving the call.

- Each worker asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so ``kill -9`` of
  the parent leaves no orphan: the worker's own handler marks its open runs KILLED, then it exits. A watchdog
  thread makes sure of it: an orphaned worker signals itself (where the kernel cannot) and, if closing its runs
  has not ended it within ``_ORPHAN_GRACE_S`` (a worker idle between tasks, a store that does not answer),
  leaves at once; a trial left RUNNING that way is re-queued by the next call.
- When the parent is interrupted (SIGINT, SIGTERM), :meth:`WorkerPool.close` sends SIGTERM to every
  worker and waits for them to close their runs before it returns.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from typing import Any

from fluxbench.allocator import keep_freed_memory
from fluxbench.protocols.interrupts import Interrupted, install, stopping

_PR_SET_PDEATHSIG = 1
_CLOSE_TIMEOUT_S = 60.0
_ORPHAN_GRACE_S = 20.0
_WATCH_EVERY_S = 0.5


def _die_with_parent(parent_pid: int) -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the workers' loops also stop when orphaned
        pass
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_WATCH_EVERY_S)
    if not stopping():  # the kernel's PDEATHSIG may already be closing the runs
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(_ORPHAN_GRACE_S)
    os._exit(1)


def _init_worker(parent_pid: int, threads: int) -> None:
    _die_with_parent(parent_pid)
    install()
    keep_freed_memory()
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="fluxbench-orphan-watch", daemon=True).start()
    import torch

    import fluxbench.methods  # noqa: F401  (registers in-tree methods)

    torch.set_num_threads(threads)


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Run one task; after an interrupt (its runs already closed on the way out) the worker ends at once."""
    try:
        return fn(*args)
    except Interrupted as err:
        os._exit(128 + err.signum)


class WorkerPool:
    """``n_jobs`` spawned processes splitting this machine's cores."""

    def __init__(self, n_jobs: int) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.n_jobs = n_jobs
        self._pool = ProcessPoolExecutor(n_jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                                         initargs=(os.getpid(), max(1, cores // n_jobs)))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        return self._pool.submit(_call, fn, *args)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> list[Any]:
        return [job.result() for job in [self.submit(fn, *args) for args in zip(*iterables)]]

    def close(self, interrupted: bool = False) -> None:
        """Shut the pool down; after an interrupt, stop the workers first (they mark their runs KILLED)."""
        if interrupted:
            processes = list((self._pool._processes or {}).values())  # noqa: SLF001  (no public handle)
            for proc in processes:
                if proc.is_alive():
                    os.kill(proc.pid, signal.SIGTERM)
            for proc in processes:
                proc.join(_CLOSE_TIMEOUT_S)
                if proc.is_alive():
                    proc.kill()
        self._pool.shutdown(wait=not interrupted, cancel_futures=True)

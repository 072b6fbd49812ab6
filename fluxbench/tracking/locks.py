"""File locks that several processes on one machine use to share a store (released by the kernel if one dies)."""

from __future__ import annotations

import fcntl
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fluxbench.errors import DataError


@contextmanager
def file_lock(path: Path, waiting: str | None = None) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``; when another process holds it and ``waiting`` is given, say so, then wait."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115  (held for the whole block)
    except OSError as err:
        raise DataError(f"cannot create the lock file {path}: {err.strerror}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                print(f"fluxbench: {waiting}", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""SIGINT and SIGTERM as an exception, so that every open run is marked KILLED with the reason on the way out.

``install()`` is called once by the CLI (and by every worker process). The first signal raises
:class:`Interrupted` in the main thread; the runs' guards record it and the CLI exits with
``128 + signal``. Further signals while the runs are being closed are noted, not raised, so the
clean-up itself is not interrupted (``kill -9`` still ends everything at once).
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

_state = {"stopping": False}


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _raise(signum: int, frame: FrameType | None) -> None:
    if _state["stopping"]:
        print(f"fluxbench: {signal.Signals(signum).name} again: still closing the open runs", file=sys.stderr)
        return
    _state["stopping"] = True
    raise Interrupted(signum)


def install() -> None:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` (main thread only, as Python requires)."""
    _state["stopping"] = False
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _raise)


def stopping() -> bool:
    """Whether a signal has already been turned into :class:`Interrupted` in this process."""
    return _state["stopping"]


def exit_status(err: BaseException) -> int:
    """The shell's convention: 128 + the signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + getattr(err, "signum", signal.SIGINT)

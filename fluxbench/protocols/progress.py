"""A progress bar on stderr that protocols drive; silent when disabled or not a terminal."""

from __future__ import annotations

import sys

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self._bar = tqdm(total=total, desc=desc, unit="exp", file=sys.stderr, disable=not enabled, leave=False,
                         dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()

"""``python tests/store_capped.py PAGES run ...``: fluxbench's command line with every SQLite database capped at
PAGES pages, so that a write past them fails with SQLite's own "database or disk is full" (a full disk, for real,
without filling one)."""

import sqlite3
import sys

from sqlalchemy import event
from sqlalchemy.engine import Engine

MAX_PAGES = int(sys.argv.pop(1))


@event.listens_for(Engine, "connect")
def _cap(connection, _record) -> None:
    if isinstance(connection, sqlite3.Connection):
        connection.execute(f"PRAGMA max_page_count = {MAX_PAGES}")


if __name__ == "__main__":
    from fluxbench.cli import main

    main()

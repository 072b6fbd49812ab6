"""Where a store lives and whether it answers: a local SQLite file, PostgreSQL, or an MLflow tracking server.

A server store is checked before anything is written, so a wrong address costs seconds (MLflow's own
retries would take minutes) and never sends runs to a local store instead. Passwords never reach a
message. Processes on several machines serialise on PostgreSQL advisory locks, which the server releases
when a process dies, where a file lock would only cover one machine.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

from fluxbench.errors import DataError
from fluxbench.tracking.locks import file_lock

CONNECT_TIMEOUT_S = 5
T = TypeVar("T")


def scheme(uri: str) -> str:
    """``sqlite``, ``postgresql`` (any driver), ``http`` (or https), ``file`` for a path, else the URI's scheme."""
    found = urlsplit(uri).scheme.lower()
    if found.startswith("postgres"):
        return "postgresql"
    if found in ("http", "https"):
        return "http"
    return found or "file"


def is_server(uri: str) -> bool:
    return scheme(uri) in ("postgresql", "http")


def redact(uri: str) -> str:
    """The URI with its password replaced by ``***`` (for messages)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def libpq_url(uri: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) as libpq reads it (``postgresql://``)."""
    return re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql://", uri)


def check_reachable(uri: str, key: str) -> None:
    """A server store answers within seconds, or one line naming it and what to check."""
    kind = scheme(uri)
    if kind == "postgresql":
        _check_postgres(uri, key)
    elif kind == "http":
        _check_http(uri, key)


def _connect(uri: str, key: str, retry: bool = False):
    """A libpq connection; with ``retry``, waited for while the server restarts (it answered before)."""
    import psycopg

    def connect():
        return psycopg.connect(libpq_url(uri), connect_timeout=CONNECT_TIMEOUT_S, autocommit=True)

    try:
        return retry_disconnects(uri, f"{key}={redact(uri)}", connect) if retry else connect()
    except psycopg.Error as err:
        raise DataError(postgres_problem(uri, key, str(err))) from None


def _check_postgres(uri: str, key: str) -> None:
    _connect(uri, key).close()


def postgres_problem(uri: str, key: str, message: str) -> str:
    """One line for a failed connection: where, what the server said, what to check."""
    parts = urlsplit(libpq_url(uri))
    host, port, user = parts.hostname or "localhost", parts.port or 5432, parts.username or "(your login)"
    database = parts.path.lstrip("/") or user
    where = f"{key}={redact(uri)}: cannot connect to PostgreSQL at {host}:{port}"
    lower = message.lower()
    if "password" in lower or "authentication" in lower:
        return (f"{where}: the server refused the credentials of user {user}; check the user name and password "
                "in the URL (and pg_hba.conf)")
    if "does not exist" in lower and "database" in lower:
        return f"{where}: database {database!r} does not exist; create it: createdb -h {host} -p {port} -U {user} " \
               f"{database}"
    if "refused" in lower:
        return (f"{where}: connection refused; check that PostgreSQL runs there and listens on that port "
                f"(pg_isready -h {host} -p {port})")
    if "timeout" in lower or "timed out" in lower:
        return f"{where}: no answer within {CONNECT_TIMEOUT_S} s; check the host name, the port and any firewall"
    detail = next((line.strip() for line in message.splitlines() if line.strip()), "unknown error")
    return f"{where}: {detail[:200]}; check the host, port, user and database in the URL"


def _check_http(uri: str, key: str) -> None:
    parts = urlsplit(uri)
    health = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") +
                                       "/health", query="", fragment=""))
    where = f"{key}={redact(uri)}: the MLflow tracking server"
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S) as answer:
            status = answer.status
    except urllib.error.HTTPError as err:
        status = err.code
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        text = "no answer within 5 s" if "timed out" in str(reason) else f"does not answer ({reason})"
        raise DataError(f"{where} {text}; check that `mlflow server` runs there and the host and port are right "
                        f"(curl {health})") from None
    if status != 200:
        raise DataError(f"{where} answered HTTP {status} at /health; is it an MLflow server? check the address")


def _lock_key(name: str) -> int:
    """A signed 64-bit key for ``pg_advisory_lock``: fluxbench's names hashed, so they never meet other users'."""
    return int.from_bytes(hashlib.sha256(f"fluxbench:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def advisory_lock(uri: str, name: str, key: str, waiting: str | None = None) -> Iterator[None]:
    """An exclusive session lock on the PostgreSQL server, held by a connection of its own."""
    conn = _connect(uri, key, retry=True)
    lock = _lock_key(name)
    try:
        (got,) = conn.execute("SELECT pg_try_advisory_lock(%s)", (lock,)).fetchone()
        if not got:
            if waiting:
                print(f"fluxbench: {waiting}", file=sys.stderr, flush=True)
            conn.execute("SELECT pg_advisory_lock(%s)", (lock,))
        yield
    finally:
        try:
            conn.execute("SELECT pg_advisory_unlock(%s)", (lock,))
        except Exception:  # noqa: BLE001  (the server went away: it released the lock with the session)
            pass
        conn.close()


@contextmanager
def store_lock(uri: str, name: str, path: Path, waiting: str | None = None, key: str = "store") -> Iterator[None]:
    """One holder at a time among all processes sharing the store: an advisory lock on a PostgreSQL store (any
    machine), else a file lock at ``path`` (this machine)."""
    if scheme(uri) == "postgresql":
        with advisory_lock(uri, name, key, waiting):
            yield
    else:
        with file_lock(path, waiting):
            yield


def retry_seconds() -> float:
    """How long a call waits for a PostgreSQL store that dropped its connections (``FLUXBENCH_STORE_RETRY_S``)."""
    try:
        return max(0.0, float(os.environ.get("FLUXBENCH_STORE_RETRY_S", "60")))
    except ValueError:
        return 60.0


def is_disconnect(err: BaseException | None) -> bool:
    """A lost or refused database connection (the server restarting), not a bad statement."""
    try:
        import psycopg
        from sqlalchemy.exc import DBAPIError, OperationalError
    except ImportError:
        return False
    if isinstance(err, psycopg.OperationalError):  # a libpq connection of our own (an advisory lock)
        return True
    seen = 0
    while err is not None and not isinstance(err, DBAPIError) and seen < 20:
        err, seen = err.__cause__ or err.__context__, seen + 1
    return isinstance(err, OperationalError) or bool(getattr(err, "connection_invalidated", False))


def retry_disconnects(uri: str, label: str, call: Callable[[], T]) -> T:
    """``call()``, tried again while a PostgreSQL store is unreachable (a restart), saying so once."""
    deadline = time.monotonic() + (retry_seconds() if scheme(uri) == "postgresql" else 0.0)
    said = False
    while True:
        try:
            return call()
        except Exception as err:
            left = deadline - time.monotonic()
            if left <= 0 or not is_disconnect(err):
                raise
            if not said:
                cause = getattr(err, "orig", None) or err
                reason = next((line for line in str(cause).splitlines() if line.strip()), type(err).__name__)
                print(f"fluxbench: {label} dropped the connection ({reason[:200]}); retrying for up to {left:.0f} s",
                      file=sys.stderr, flush=True)
                said = True
            time.sleep(min(2.0, left))

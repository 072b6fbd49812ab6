"""Real servers for the shared-store tests: a throw-away PostgreSQL cluster and an ``mlflow server``.

PostgreSQL refuses to run as root, so when the tests run as root (CI does) the cluster's directory is
handed to ``nobody`` and ``initdb`` / ``pg_ctl`` run through ``runuser``. The cluster listens on
127.0.0.1 at a free port with password (scram) authentication, so wrong credentials are really refused.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

USER, PASSWORD = "fluxbench", "s3cret-pw"
SERVICE_USER = "nobody"  # who runs postgres when the tests run as root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir() -> Path | None:
    """Debian's ``/usr/lib/postgresql/<version>/bin`` (newest first), else ``initdb`` on PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name),
                            reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def missing_reason() -> str | None:
    """Why a PostgreSQL cluster cannot be started here (None when it can)."""
    if postgres_bindir() is None:
        return "PostgreSQL's initdb/pg_ctl are not installed (apt-get install postgresql, or `make postgres`)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without runuser: cannot start PostgreSQL as a non-root user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install -e '.[test]')"
    return None


@dataclass
class Postgres:
    """One cluster in its own temporary directory; ``url(db)`` is what fluxbench is given."""

    root: Path
    port: int
    bindir: Path
    databases: list[str] = field(default_factory=list)

    @classmethod
    def start(cls) -> Postgres:
        bindir = postgres_bindir()
        assert bindir is not None, missing_reason()
        root = Path(tempfile.mkdtemp(prefix="fluxbench-pg-"))  # not under pytest's root-only tmp dir
        server = cls(root, free_port(), bindir)
        (root / "pw").write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(root, SERVICE_USER)
            shutil.chown(root / "pw", SERVICE_USER)
        server._as_owner("initdb", "-D", str(root / "data"), "-U", USER, f"--pwfile={root / 'pw'}",
                         "--auth=scram-sha-256", "-E", "UTF8", "--no-sync")
        server.resume()
        atexit.register(server.close)  # a session that dies early leaves no server behind
        return server

    def _as_owner(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SERVICE_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=self.root)
        if done.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").is_file() else ""
            raise RuntimeError(f"{tool} failed: {done.stdout}{done.stderr}{log}")

    def resume(self) -> None:
        """Start (or start again after :meth:`stop`) on the same port and data."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._as_owner("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "log"), "-o", options,
                       "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._as_owner("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def url(self, database: str, password: str = PASSWORD, port: int | None = None) -> str:
        return f"postgresql://{USER}:{password}@127.0.0.1:{port or self.port}/{database}"

    def create_database(self, name: str, template: str | None = None) -> str:
        """A new database: empty (fluxbench's first use creates the tables), or a copy of ``template``."""
        import psycopg

        copy = f' TEMPLATE "{template}"' if template else ""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        self.databases.append(name)
        return self.url(name)

    def mlflow_template(self) -> str:
        """A database with MLflow's schema, migrated once (a migration takes 5-30 s) and copied per test."""
        name = "mlflow_template"
        if name not in self.databases:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            store = SqlAlchemyStore(self.create_database(name), str(self.root / "template-artifacts"))
            store.engine.dispose()  # a template must have no open sessions
        return name

    def close(self) -> None:
        if not self.root.exists():
            return
        try:
            if (self.root / "data" / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class MlflowServer:
    """``mlflow server`` on a free local port, runs in ``backend``, artifacts served from a directory."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def start(cls, backend: str, artifacts: Path, log: Path, timeout_s: float = 120) -> MlflowServer:
        port = free_port()
        mlflow = Path(sys.executable).with_name("mlflow")
        cmd = [str(mlflow), "server", "--backend-store-uri", backend, "--artifacts-destination", str(artifacts),
               "--serve-artifacts", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        handle = open(log, "w")  # noqa: SIM115  (the server's output, kept for a failing test)
        env = {**os.environ, "MLFLOW_LOGGING_LEVEL": "WARNING"}
        process = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        server = cls(process, port, log)
        atexit.register(server.close)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return server
            except OSError:
                time.sleep(0.5)
        server.close()
        raise RuntimeError(f"mlflow server did not answer within {timeout_s} s: {log.read_text()[-3000:]}")

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(5)  # a throw-away server: no need to wait for idle connections
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

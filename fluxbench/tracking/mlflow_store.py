"""Writing fluxbench's MLflow run layout: one parent run per protocol call, nested runs per trial and per seed.

Every run carries the tag ``HASH_TAG`` (a hash of the resolved config, minus tracking settings) so that a
finished configuration is found and skipped, and an unfinished one is found and resumed. Params are the
flattened resolved config; metrics are logged per experience with ``step``; artifacts are CSV/YAML/JSON
files. Names live in :mod:`fluxbench.tracking.layout`.

Several processes may share one store, a fresh one included: creating (and migrating) the store and its
experiment happens under a lock, and :meth:`Tracker.exclusive` serialises the "already finished / resume /
start" decision for one config hash. The lock is a file lock beside a local SQLite store, an advisory lock
on a PostgreSQL store (shared by every machine), and a file lock per server address on this machine for an
MLflow tracking server. Store failures (a full disk, a read-only directory, a server gone) become one-line
:class:`~fluxbench.errors.DataError` s; a PostgreSQL store that drops its connections is retried for a while.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.cache import cache_dir
from fluxbench.errors import DataError
from fluxbench.tracking import layout, stores
from fluxbench.tracking.fresh_store import seed_sqlite_store
from fluxbench.tracking.layout import FAILURE_TAG, HASH_TAG, KIND_TAG, MATRIX_ARTIFACT, PARENT_TAG, SIZES_TAG

_EXCLUDED_FROM_HASH = ("tracking", "progress", "reproduce")  # where results go, how they are shown, what they
# are compared with (a preset's published figure)
_PACKAGES = ("fluxbench", "torch", "torchvision", "timm", "avalanche-lib", "open_clip_torch", "mlflow", "optuna")
_STEP_METRIC = re.compile(layout.STEP_METRIC_PATTERN)


def flatten(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def config_hash(cfg: Mapping[str, Any], *extra: Any) -> str:
    """A stable hash of everything that changes results (the tracking section does not)."""
    kept = {k: v for k, v in cfg.items() if k not in _EXCLUDED_FROM_HASH}
    blob = json.dumps([kept, *extra], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


@functools.cache
def provenance_tags() -> dict[str, str]:
    tags = {}
    for pkg in _PACKAGES:
        try:
            tags[f"version.{pkg}"] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    tags[layout.GIT_TAG] = commit or "unknown"
    return tags


def sqlite_path(uri: str) -> Path | None:
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


@dataclass
class RunHandle:
    run_id: str
    resumed: bool = False


@dataclass
class SeedRecord:
    """A finished seed run as read back from the store: what every aggregate is computed from."""

    seed: int
    run_id: str
    metrics: dict[str, float]
    matrix: np.ndarray | None = None
    sizes: list[int] | None = None
    tags: dict[str, str] = field(default_factory=dict)
    skipped: bool = False  # finished by an earlier call, read back instead of run


class _GuardedClient:
    """An ``MlflowClient`` whose store failures (full disk, locked or unreadable database) are one-line DataErrors."""

    def __init__(self, client: Any, uri: str) -> None:
        self._client, self._uri = client, uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return stores.retry_disconnects(self._uri, f"the MLflow store {stores.redact(self._uri)} ({name})",
                                                lambda: attr(*args, **kwargs))
            except DataError:
                raise
            except Exception as err:
                if not _is_store_error(err):
                    raise
                raise DataError(f"the MLflow store {stores.redact(self._uri)} failed ({name}): {first_line(err)}") \
                    from err

        return call


def _open_client(client_class: Any, uri: str) -> Any:
    try:
        return client_class(tracking_uri=uri)
    except Exception as err:
        if not _is_store_error(err):
            raise
        raise DataError(f"cannot open the MLflow store {stores.redact(uri)}: {first_line(err)}") from err


def _is_store_error(err: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # mlflow-skinny without sqlalchemy: only remote stores
        SQLAlchemyError = OSError  # noqa: N806
    return isinstance(err, (MlflowException, SQLAlchemyError, OSError))


def first_line(err: BaseException) -> str:
    """The database's own message (``database or disk is full``), not the wrappers' advice around it."""
    while err.__cause__ is not None and type(err).__module__.startswith(("mlflow", "sqlalchemy")):
        err = err.__cause__
    if getattr(err, "orig", None) is not None:  # a SQLAlchemy error: the DBAPI error it wraps
        err = err.orig
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    text = lines[0] if lines else type(err).__name__
    return text[:300]


def check_store_location(uri: str) -> None:
    """A local SQLite store must be creatable where it is asked for, a server store must answer: one line,
    before anything is written."""
    path = sqlite_path(uri)
    if path is None:
        stores.check_reachable(uri, "tracking.uri")
        return
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise DataError(f"tracking.uri={uri}: {parent} is not a directory (a file is in the way); "
                        "point tracking.uri at a directory") from None
    except OSError as err:
        raise DataError(f"tracking.uri={uri}: cannot create {parent}: {err.strerror}") from None
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise DataError(f"tracking.uri={uri}: {target} is read-only; point tracking.uri at a writable place, "
                        "e.g. tracking.uri=sqlite:////tmp/mlflow.db")


class Tracker:
    """A thin layer over ``MlflowClient`` with fluxbench's run layout."""

    def __init__(self, uri: str, experiment: str, artifact_location: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        check_store_location(uri)
        self.uri = uri
        self.lock_dir = self._lock_dir(uri)
        # opening a fresh store creates and migrates its schema: one process at a time, or they collide
        with self._lock("store", "store.lock"):
            path = sqlite_path(uri)
            if path is not None:
                seed_sqlite_store(path)
            self.client = _GuardedClient(_open_client(MlflowClient, uri), uri)
            found = self.client.get_experiment_by_name(experiment)
            self.experiment_id = found.experiment_id if found else self._create_experiment(experiment,
                                                                                           artifact_location)

    @staticmethod
    def _lock_dir(uri: str) -> Path:
        path = sqlite_path(uri)
        if path is not None:
            return path.parent / f".{path.name}.locks"
        if "FLUXBENCH_LOCK_DIR" in os.environ:
            return Path(os.environ["FLUXBENCH_LOCK_DIR"])
        if stores.scheme(uri) == "http":  # every process on this machine using that server, whatever its cwd
            return cache_dir("locks", hashlib.sha256(stores.redact(uri).encode()).hexdigest()[:16])
        return Path(".fluxbench/locks")

    def _lock(self, name: str, file_name: str, waiting: str | None = None):
        return stores.store_lock(self.uri, name, self.lock_dir / file_name, waiting, key="tracking.uri")

    def _create_experiment(self, name: str, artifact_location: str | None) -> str:
        path = sqlite_path(self.uri)
        if artifact_location is None and path is not None:
            # artifacts beside a local store (not in whatever directory the first run started in)
            artifact_location = (path.resolve().parent / "mlartifacts").as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=artifact_location)
        except DataError:  # another machine created it a moment ago (a tracking server has no shared lock)
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # -- one process per config ---------------------------------------------------------------
    @contextmanager
    def exclusive(self, chash: str, label: str) -> Iterator[None]:
        """Hold the config hash: a second process with the same config waits here (and says so), then finds the
        first one's result."""
        with self._lock(f"config {chash}", f"{chash}.lock",
                        waiting=f"waiting for another process running {label} (the same config) to finish"):
            yield

    # -- finding runs -----------------------------------------------------------------------
    def find(self, chash: str, status: str | None = None, parent_id: str | None = None):
        query = f"tags.`{HASH_TAG}` = '{chash}'"
        if status:
            query += f" and attributes.status = '{status}'"
        if parent_id:
            query += f" and tags.`{PARENT_TAG}` = '{parent_id}'"
        runs = self.client.search_runs([self.experiment_id], query, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    def finished(self, chash: str, parent_id: str | None = None):
        return self.find(chash, "FINISHED", parent_id)

    # -- writing ---------------------------------------------------------------------------
    def start(self, name: str, chash: str, kind: str, parent_id: str | None = None,
              tags: Mapping[str, Any] | None = None, resume: bool = True) -> RunHandle:
        """A new run, or the latest unfinished one with the same hash (then ``resumed``)."""
        if resume:
            old = self.find(chash, parent_id=parent_id)
            if old is not None and old.info.status in ("RUNNING", "FAILED", "KILLED"):
                self.client.update_run(old.info.run_id, status="RUNNING")
                if FAILURE_TAG in old.data.tags:  # the reason of the earlier stop no longer holds
                    self.client.delete_tag(old.info.run_id, FAILURE_TAG)
                return RunHandle(old.info.run_id, resumed=True)
        all_tags = {HASH_TAG: chash, KIND_TAG: kind, layout.RUN_NAME_TAG: name, **provenance_tags()}
        if parent_id:
            all_tags[PARENT_TAG] = parent_id
        all_tags.update({k: str(v) for k, v in (tags or {}).items()})
        run = self.client.create_run(self.experiment_id, tags=all_tags, run_name=name)
        return RunHandle(run.info.run_id)

    def log_params(self, run: RunHandle, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        if run.resumed:
            return  # params are immutable in MLflow and were written when the run started
        items = [Param(k, _short(v)) for k, v in params.items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run.run_id, params=items[start:start + 100])

    def log_metrics(self, run: RunHandle, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and np.isfinite(v)]
        for start in range(0, len(items), 500):
            self.client.log_batch(run.run_id, metrics=items[start:start + 500])

    def set_tags(self, run: RunHandle, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        if tags:
            self.client.log_batch(run.run_id, tags=[RunTag(k, _short(v)) for k, v in tags.items()])

    def log_text(self, run: RunHandle, text: str, path: str) -> None:
        self.client.log_text(run.run_id, text, path)

    def log_json(self, run: RunHandle, data: Any, path: str) -> None:
        self.client.log_text(run.run_id, json.dumps(data, indent=1, default=str), path)

    def log_matrix(self, run: RunHandle, R: np.ndarray, path: str = MATRIX_ARTIFACT) -> None:
        self.client.log_text(run.run_id, write_matrix(R), path)

    def log_seed_result(self, run: RunHandle, metrics: Mapping[str, float], matrix: np.ndarray | None = None,
                        sizes: list[int] | None = None) -> None:
        """A seed's final metrics and, for class-incremental streams, its accuracy matrix and test sizes."""
        self.log_metrics(run, metrics)
        if matrix is not None:
            self.log_matrix(run, matrix)
            self.set_tags(run, {SIZES_TAG: list(sizes or [])})

    @contextmanager
    def failing_on_error(self, run: RunHandle) -> Iterator[None]:
        """Any exception ends ``run`` with its reason, then propagates: KILLED for an interrupt, else FAILED."""
        try:
            yield
        except BaseException as err:
            self.fail(run, err)
            raise

    def fail(self, run: RunHandle, err: BaseException) -> None:
        interrupted = isinstance(err, KeyboardInterrupt)
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        try:
            self.set_tags(run, {FAILURE_TAG: reason})
            self.end(run, "KILLED" if interrupted else "FAILED")
        except DataError as store_err:  # the store itself is failing: say so, keep the original error
            print(f"fluxbench: could not record run {run.run_id} as failed: {store_err}", file=sys.stderr)

    def end(self, run: RunHandle, status: str = "FINISHED") -> None:
        self.client.set_terminated(run.run_id, status=status)

    # -- reading back ------------------------------------------------------------------------
    def children(self, parent_id: str, extra_filter: str = "") -> list:
        query = f"tags.`{PARENT_TAG}` = '{parent_id}'" + (f" and {extra_filter}" if extra_filter else "")
        return self.client.search_runs([self.experiment_id], query, max_results=10000)

    def read_text(self, run_id: str, path: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()

    def read_seed(self, run: Any, skipped: bool = False) -> SeedRecord:
        """A finished seed run (an MLflow ``Run`` or its id): its result metrics, matrix and sizes."""
        if isinstance(run, str):
            run = self.client.get_run(run)
        tags = dict(run.data.tags)
        metrics = {k: v for k, v in run.data.metrics.items() if not _STEP_METRIC.match(k)}
        matrix = sizes = None
        if SIZES_TAG in tags:
            sizes = json.loads(tags[SIZES_TAG])
            matrix = read_matrix(self.read_text(run.info.run_id, MATRIX_ARTIFACT))
        seed = int(tags.get(layout.SEED_TAG, run.data.params.get(layout.SEED_TAG, -1)))
        return SeedRecord(seed, run.info.run_id, metrics, matrix, sizes, tags, skipped)


def _short(value: Any, limit: int = 6000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def write_matrix(R: np.ndarray) -> str:
    """CSV with every float's shortest exact repr: a matrix read back gives the very same metrics."""
    buf = io.StringIO()
    np.savetxt(buf, np.asarray(R, dtype=float), delimiter=",", fmt="%.17g")
    return buf.getvalue()


def read_matrix(text: str) -> np.ndarray:
    return np.atleast_2d(np.loadtxt(io.StringIO(text), delimiter=","))


__all__ = ["RunHandle", "SeedRecord", "Tracker", "config_hash", "flatten", "read_matrix", "write_matrix"]

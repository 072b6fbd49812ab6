"""MLflow run layout: one parent run per protocol call, nested runs per trial and per seed.

Every run carries the tag ``fluxbench.config_hash`` (a hash of the resolved config, minus
tracking settings) so that a finished configuration is found and skipped, and an
unfinished one is found and resumed. Params are the flattened resolved config; metrics
are logged per experience with ``step``; artifacts are CSV/YAML/JSON files.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

HASH_TAG = "fluxbench.config_hash"
KIND_TAG = "fluxbench.kind"
FAILURE_TAG = "fluxbench.failure"
_EXCLUDED_FROM_HASH = ("tracking", "progress")  # where results go and how they are shown
_PACKAGES = ("fluxbench", "torch", "torchvision", "timm", "avalanche-lib", "open_clip_torch", "mlflow", "optuna")


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
    tags["git_commit"] = commit or "unknown"
    return tags


@dataclass
class RunHandle:
    run_id: str
    resumed: bool = False


class Tracker:
    """A thin layer over ``MlflowClient`` with fluxbench's run layout."""

    def __init__(self, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(experiment)
        self.experiment_id = found.experiment_id if found else self._create_experiment(experiment)

    def _create_experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.create_experiment(name)
        except MlflowException:  # another process created it first
            return self.client.get_experiment_by_name(name).experiment_id

    # -- finding runs -----------------------------------------------------------------------
    def find(self, chash: str, status: str | None = None, parent_id: str | None = None):
        query = f"tags.`{HASH_TAG}` = '{chash}'"
        if status:
            query += f" and attributes.status = '{status}'"
        if parent_id:
            query += f" and tags.`mlflow.parentRunId` = '{parent_id}'"
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
                return RunHandle(old.info.run_id, resumed=True)
        all_tags = {HASH_TAG: chash, KIND_TAG: kind, "mlflow.runName": name, **provenance_tags()}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
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

        self.client.log_batch(run.run_id, tags=[RunTag(k, _short(v)) for k, v in tags.items()])

    def log_text(self, run: RunHandle, text: str, path: str) -> None:
        self.client.log_text(run.run_id, text, path)

    def log_json(self, run: RunHandle, data: Any, path: str) -> None:
        self.client.log_text(run.run_id, json.dumps(data, indent=1, default=str), path)

    def log_matrix(self, run: RunHandle, R: np.ndarray, path: str = "accuracy_matrix.csv") -> None:
        buf = io.StringIO()
        np.savetxt(buf, np.asarray(R, dtype=float), delimiter=",", fmt="%.6f")
        self.client.log_text(run.run_id, buf.getvalue(), path)

    @contextmanager
    def failing_on_error(self, run: RunHandle) -> Iterator[None]:
        """Any exception (a kill included) ends ``run`` as FAILED with its reason, then propagates."""
        try:
            yield
        except BaseException as err:
            self.set_tags(run, {FAILURE_TAG: f"{type(err).__name__}: {err}"})
            self.end(run, "FAILED")
            raise

    def end(self, run: RunHandle, status: str = "FINISHED") -> None:
        self.client.set_terminated(run.run_id, status=status)

    def children(self, parent_id: str, extra_filter: str = "") -> list:
        query = f"tags.`mlflow.parentRunId` = '{parent_id}'" + (f" and {extra_filter}" if extra_filter else "")
        return self.client.search_runs([self.experiment_id], query, max_results=10000)

    def read_text(self, run_id: str, path: str) -> str:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            return Path(self.client.download_artifacts(run_id, path, tmp)).read_text()


def _short(value: Any, limit: int = 6000) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:limit]


def read_matrix(text: str) -> np.ndarray:
    return np.atleast_2d(np.loadtxt(io.StringIO(text), delimiter=","))


__all__ = ["Tracker", "RunHandle", "config_hash", "flatten", "read_matrix"]

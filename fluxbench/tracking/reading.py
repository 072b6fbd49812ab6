"""Reading a store back, for reports: runs as plain records, in the names of :mod:`fluxbench.tracking.layout`.

Nothing here writes, and nothing sets MLflow's global tracking URI: a report can read one store while a
protocol in the same process writes another.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fluxbench.errors import ConfigError, DataError
from fluxbench.tracking import layout as L
from fluxbench.tracking import stores
from fluxbench.tracking.mlflow_store import first_line, read_matrix

HINT = "run `fluxbench run ...` first, or pass --tracking-uri / --experiment"
FINISHED = "FINISHED"


@dataclass(frozen=True)
class StoredRun:
    """One run as the store holds it: identity, status, and the layout's tags decoded."""

    run_id: str
    status: str
    start_time: int
    tags: dict[str, str] = field(repr=False)
    params: dict[str, str] = field(repr=False)
    metrics: dict[str, float] = field(repr=False)

    @property
    def kind(self) -> str:
        return self.tags.get(L.KIND_TAG, "")

    @property
    def parent_id(self) -> str:
        return self.tags.get(L.PARENT_TAG, "")

    @property
    def phase(self) -> str:
        return self.tags.get(L.PHASE_TAG, L.PHASE_EVALUATION)

    @property
    def seed(self) -> str:
        return self.tags.get(L.SEED_TAG) or self.params.get(L.SEED_TAG, "")

    @property
    def sizes(self) -> list[int] | None:
        """Test samples per experience, for a class-incremental seed run (None otherwise)."""
        text = self.tags.get(L.SIZES_TAG)
        return json.loads(text) if text else None

    @property
    def rank_metric(self) -> str | None:
        return self.tags.get(L.RANK_TAG)

    @property
    def higher_is_better(self) -> bool:
        return self.tags.get(L.RANK_ORDER_TAG, "max") != "min"

    @property
    def preset(self) -> str | None:
        """The conf/experiment/ preset this protocol run reproduces (None for other runs)."""
        return self.tags.get(L.PRESET_TAG) or None

    @property
    def published(self) -> dict[str, Any]:
        """The preset's figure as the run recorded it: metric, published (%), tolerance, source, also."""
        text = self.tags.get(L.REPRODUCE_TAG)
        try:
            return json.loads(text) if text else {}
        except json.JSONDecodeError:
            return {}  # a hand-edited tag must not cost the report

    def tag(self, name: str, default: str = "?") -> str:
        return self.tags.get(name, default)


class StoreReader:
    """An existing, readable MLflow store (a missing one is an error, never created as a side effect)."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        _check_exists(uri)
        stores.check_reachable(uri, "--tracking-uri")  # a server that does not answer: seconds, not minutes
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.client.search_experiments(max_results=1)
        except Exception as err:  # sqlalchemy, HTTP or MLflow errors all mean "cannot read this store"
            raise DataError(f"cannot read the MLflow store {stores.redact(uri)}: {first_line(err)}") from err

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        names = sorted(e.name for e in self.client.search_experiments())
        if not names:
            raise ConfigError(f"the MLflow store {stores.redact(self.uri)} has no experiments; {HINT}")
        raise ConfigError(f"unknown experiment {name!r} in {stores.redact(self.uri)}; experiments there: "
                          f"{', '.join(names)} (pass --experiment NAME)")

    def runs(self, experiment_id: str) -> list[StoredRun]:
        """Every run of the experiment, page by page (a store may hold more than one page)."""
        out: list[StoredRun] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], max_results=1000, page_token=token)
            out += [_stored(r) for r in page]
            token = page.token
            if not token:
                return out

    def run(self, run_id: str) -> StoredRun:
        """One run by id (a run a command just wrote or found)."""
        try:
            return _stored(self.client.get_run(run_id))
        except Exception as err:  # MLflow's not-found and store errors alike
            raise DataError(f"cannot read run {run_id} from {stores.redact(self.uri)}: {first_line(err)}") from err

    def matrix(self, run_id: str) -> np.ndarray | None:
        """A seed run's accuracy matrix; None when missing or unreadable (that seed is unusable, not the report)."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.client.download_artifacts(run_id, L.MATRIX_ARTIFACT, tmp)
                return read_matrix(Path(path).read_text())
            except Exception:
                return None

    def history(self, run_id: str, key: str) -> dict[int, float]:
        """A metric logged with ``step``: ``{step: value}`` (the last value logged at a step); {} when none."""
        try:
            points = self.client.get_metric_history(run_id, key)
        except Exception:  # store errors: that run's curve is left out, not the report
            return {}
        return {int(m.step): float(m.value) for m in sorted(points, key=lambda m: (m.step, m.timestamp))}

    def text_artifact(self, run_id: str, name: str) -> str | None:
        """A run's text artifact (a name of :mod:`fluxbench.tracking.layout`); None when missing or unreadable."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return Path(self.client.download_artifacts(run_id, name, tmp)).read_text()
            except Exception:  # missing artifact or store error: that run's figure is left out
                return None

    def json_artifact(self, run_id: str, name: str) -> Any | None:
        """A run's JSON artifact (a name of :mod:`fluxbench.tracking.layout`); None when missing or unreadable."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                return json.loads(Path(self.client.download_artifacts(run_id, name, tmp)).read_text())
            except Exception:  # missing artifact, store error or bad JSON: that run's figure is left out
                return None


def _stored(run: Any) -> StoredRun:
    return StoredRun(run.info.run_id, run.info.status, int(run.info.start_time or 0), dict(run.data.tags),
                     dict(run.data.params), {k: float(v) for k, v in run.data.metrics.items()})


def _check_exists(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise DataError(f"no MLflow store at {path}; {HINT}")
    elif "://" not in uri or uri.startswith("file:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not path.is_dir():
            raise DataError(f"no MLflow store at {path}; {HINT}")


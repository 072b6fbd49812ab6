"""Finished runs of one MLflow experiment, as pandas frames (reports read MLflow only, never re-run training).

A protocol call leaves a parent run (``fluxbench.kind=protocol``) and per-seed child runs
(``fluxbench.kind=seed``). The leaderboard uses the evaluation seed runs of finished parents;
failed, killed or still-running parents are skipped with everything under them, and counted.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from fluxbench.errors import ConfigError, DataError
from fluxbench.tracking.mlflow_store import HASH_TAG, KIND_TAG, read_matrix

FINISHED = "FINISHED"
HINT = "run `fluxbench run ...` first, or pass --tracking-uri / --experiment"
_PARENT_TAGS = {"method": "method", "benchmark": "benchmark", "protocol": "protocol", "config_hash": HASH_TAG,
                "git_commit": "git_commit"}


@dataclass
class Collected:
    """What a report is built from.

    ``parents``: one row per finished protocol run (index ``run_id``; columns method, benchmark,
    protocol, config_hash, git_commit, start_time, metrics: a dict of the parent's logged metrics).
    ``seeds``: one row per finished evaluation seed run of those parents (run_id, parent_id, seed,
    metrics: dict of logged metrics, sizes: test size per experience or None, matrix: R or None).
    ``skipped``: protocol runs left out, by status; ``skipped_seeds``: seed runs left out, by reason.
    """

    uri: str
    experiment: str
    parents: pd.DataFrame
    seeds: pd.DataFrame
    skipped: Counter = field(default_factory=Counter)
    skipped_seeds: Counter = field(default_factory=Counter)


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def check_location(uri: str) -> None:
    """A local store must exist: reading must not create an empty database as a side effect."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise DataError(f"no MLflow store at {path}; {HINT}")
    elif "://" not in uri or uri.startswith("file:"):
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not path.is_dir():
            raise DataError(f"no MLflow store at {path}; {HINT}")


def open_client(uri: str):
    """An ``MlflowClient`` on an existing, readable store, else a one-line DataError."""
    from mlflow.tracking import MlflowClient

    check_location(uri)
    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)
    except Exception as err:  # sqlalchemy, HTTP or MLflow errors all mean "cannot read this store"
        raise DataError(f"cannot read the MLflow store {uri}: {one_line(err)}") from err
    return client


def experiment_id(client, uri: str, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    names = sorted(e.name for e in client.search_experiments())
    if not names:
        raise ConfigError(f"the MLflow store {uri} has no experiments; {HINT}")
    raise ConfigError(f"unknown experiment {name!r} in {uri}; experiments there: {', '.join(names)} "
                      "(pass --experiment NAME)")


@contextlib.contextmanager
def tracking_uri(uri: str) -> Iterator[None]:
    """``mlflow.search_runs`` reads the global tracking URI; set it for the call, then restore it."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def search(uri: str, exp_id: str) -> pd.DataFrame:
    import mlflow

    with tracking_uri(uri):
        df = mlflow.search_runs(experiment_ids=[exp_id], output_format="pandas")
    for col in ("status", f"tags.{KIND_TAG}", "tags.mlflow.parentRunId", "tags.phase", "tags.fluxbench.sizes"):
        if col not in df.columns:
            df[col] = None
    return df.set_index("run_id", drop=False)


def metrics_of(row: pd.Series) -> dict[str, float]:
    return {k.removeprefix("metrics."): float(v) for k, v in row.items()
            if k.startswith("metrics.") and pd.notna(v)}


def tag(row: pd.Series, name: str, default: str = "") -> str:
    value = row.get(f"tags.{name}")
    return default if value is None or pd.isna(value) else str(value)


def parent_frame(rows: pd.DataFrame) -> pd.DataFrame:
    records = [{"run_id": rid, **{k: tag(row, t, "?") for k, t in _PARENT_TAGS.items()},
                "start_time": row.get("start_time"), "metrics": metrics_of(row)} for rid, row in rows.iterrows()]
    return pd.DataFrame.from_records(records, columns=["run_id", *_PARENT_TAGS, "start_time", "metrics"]
                                     ).set_index("run_id", drop=False)


def load_matrix(client, run_id: str) -> np.ndarray | None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "accuracy_matrix.csv", tmp)
            return read_matrix(Path(path).read_text())
        except Exception:  # a missing or unparsable artifact makes this one seed unusable, not the report
            return None


def seed_record(client, rid: str, row: pd.Series) -> dict | None:
    """A seed run's metrics, and its accuracy matrix when it logged one (class-incremental runs)."""
    sizes_tag = tag(row, "fluxbench.sizes")
    sizes = matrix = None
    if sizes_tag:
        sizes = json.loads(sizes_tag)
        matrix = load_matrix(client, rid)
        if matrix is None or matrix.shape != (len(sizes), len(sizes)):
            return None
    seed = tag(row, "seed") or str(row.get("params.seed", ""))
    return {"run_id": rid, "parent_id": tag(row, "mlflow.parentRunId"), "seed": seed, "metrics": metrics_of(row),
            "sizes": sizes, "matrix": matrix}


def seed_frame(client, rows: pd.DataFrame, skipped: Counter) -> pd.DataFrame:
    records = []
    for rid, row in rows.iterrows():
        if row["status"] != FINISHED:
            skipped[str(row["status"]).lower()] += 1
            continue
        record = seed_record(client, rid, row)
        if record is None:
            skipped["unreadable accuracy matrix"] += 1
        else:
            records.append(record)
    columns = ["run_id", "parent_id", "seed", "metrics", "sizes", "matrix"]
    return pd.DataFrame.from_records(records, columns=columns)


def collect(uri: str, experiment: str) -> Collected:
    """Finished protocol runs and their finished evaluation seed runs; raises a one-line error when none."""
    client = open_client(uri)
    df = search(uri, experiment_id(client, uri, experiment))
    where = f"experiment {experiment!r} in {uri}"
    if df.empty:
        raise DataError(f"{where} has no runs; {HINT}")
    protocols = df[df[f"tags.{KIND_TAG}"] == "protocol"]
    if protocols.empty:
        raise DataError(f"{where} has no fluxbench protocol runs; {HINT}")
    done = protocols[protocols["status"] == FINISHED]
    skipped = Counter(str(s).lower() for s in protocols.loc[protocols["status"] != FINISHED, "status"])
    is_eval_seed = ((df[f"tags.{KIND_TAG}"] == "seed") & df["tags.mlflow.parentRunId"].isin(done.index)
                    & df["tags.phase"].fillna("evaluation").eq("evaluation"))
    skipped_seeds: Counter = Counter()
    seeds = seed_frame(client, df[is_eval_seed], skipped_seeds)
    parents = parent_frame(done)
    empty = ~parents.index.isin(seeds["parent_id"])
    skipped["without finished seed runs"] += int(empty.sum())
    parents = parents[~empty]
    if parents.empty:
        reasons = ", ".join(f"{n} {status}" for status, n in sorted(skipped.items()) if n)
        raise DataError(f"{where} has no finished runs (skipped {reasons}); wait for them or rerun them")
    return Collected(uri, experiment, parents, seeds, +skipped, +skipped_seeds)

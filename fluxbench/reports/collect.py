"""Finished runs of one MLflow experiment, as pandas frames (reports read MLflow only, never re-run training).

A protocol call leaves a parent run (kind ``protocol``) and per-seed child runs (kind ``seed``). The
leaderboard uses the evaluation seed runs of finished parents; failed, killed or still-running parents are
skipped with everything under them, and counted. The store is read through :mod:`fluxbench.tracking.reading`,
in the names of :mod:`fluxbench.tracking.layout`: this module knows no tag or artifact name of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pandas as pd

from fluxbench.errors import DataError
from fluxbench.tracking import layout as L
from fluxbench.tracking.reading import FINISHED, HINT, StoredRun, StoreReader
from fluxbench.tracking.stores import redact

_PARENT_TAGS = {"method": L.METHOD_TAG, "benchmark": L.BENCHMARK_TAG, "protocol": L.PROTOCOL_TAG,
                "config_hash": L.HASH_TAG, "git_commit": L.GIT_TAG}
PARENT_COLUMNS = ["run_id", *_PARENT_TAGS, "rank_metric", "higher_is_better", "start_time", "metrics", "preset",
                  "published"]
SEED_COLUMNS = ["run_id", "parent_id", "seed", "metrics", "sizes", "matrix"]


@dataclass
class Collected:
    """What a report is built from.

    ``parents``: one row per finished protocol run (index ``run_id``; columns method, benchmark, protocol,
    config_hash, git_commit, rank_metric and higher_is_better (what the protocol said ranks it), start_time,
    metrics: a dict of the parent's logged metrics; preset and published: the conf/experiment/ preset it
    reproduces and that preset's figure, or None and {}).
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


def parent_frame(runs: list[StoredRun]) -> pd.DataFrame:
    records = [{"run_id": r.run_id, **{k: r.tag(t) for k, t in _PARENT_TAGS.items()},
                "rank_metric": r.rank_metric, "higher_is_better": r.higher_is_better,
                "start_time": pd.Timestamp(r.start_time, unit="ms", tz="UTC"), "metrics": r.metrics,
                "preset": r.preset, "published": r.published} for r in runs]
    return pd.DataFrame.from_records(records, columns=PARENT_COLUMNS).set_index("run_id", drop=False)


def seed_frame(reader: StoreReader, runs: list[StoredRun], skipped: Counter) -> pd.DataFrame:
    """Finished seed runs with their metrics, and their accuracy matrix when they logged one (class-incremental)."""
    records = []
    for run in runs:
        if run.status != FINISHED:
            skipped[run.status.lower()] += 1
            continue
        sizes, matrix = run.sizes, None
        if sizes is not None:
            matrix = reader.matrix(run.run_id)
            if matrix is None or matrix.shape != (len(sizes), len(sizes)):
                skipped["unreadable accuracy matrix"] += 1
                continue
        records.append({"run_id": run.run_id, "parent_id": run.parent_id, "seed": run.seed, "metrics": run.metrics,
                        "sizes": sizes, "matrix": matrix})
    return pd.DataFrame.from_records(records, columns=SEED_COLUMNS)


def collect(uri: str, experiment: str) -> Collected:
    """Finished protocol runs and their finished evaluation seed runs; raises a one-line error when none."""
    reader = StoreReader(uri)
    runs = reader.runs(reader.experiment_id(experiment))
    where = f"experiment {experiment!r} in {redact(uri)}"
    if not runs:
        raise DataError(f"{where} has no runs; {HINT}")
    protocols = [r for r in runs if r.kind == L.KIND_PROTOCOL]
    if not protocols:
        raise DataError(f"{where} has no fluxbench protocol runs; {HINT}")
    skipped = Counter(r.status.lower() for r in protocols if r.status != FINISHED)
    done = [r for r in protocols if r.status == FINISHED]
    unranked = [r for r in done if not r.rank_metric]  # written before parents named their ranking metric
    skipped["without a ranking metric"] += len(unranked)
    done = [r for r in done if r.rank_metric]
    done_ids = {r.run_id for r in done}
    eval_seeds = [r for r in runs if r.kind == L.KIND_SEED and r.parent_id in done_ids
                  and r.phase == L.PHASE_EVALUATION]
    skipped_seeds: Counter = Counter()
    seeds = seed_frame(reader, eval_seeds, skipped_seeds)
    parents = parent_frame(done)
    empty = ~parents.index.isin(seeds["parent_id"])
    skipped["without finished seed runs"] += int(empty.sum())
    parents = parents[~empty]
    if parents.empty:
        reasons = ", ".join(f"{n} {status}" for status, n in sorted(skipped.items()) if n)
        raise DataError(f"{where} has no finished runs (skipped {reasons}); wait for them or rerun them")
    return Collected(redact(uri), experiment, parents, seeds, +skipped, +skipped_seeds)  # shown in the report

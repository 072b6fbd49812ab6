"""The whole cluster set-up at once: two_phase's trials and seeds as Ray tasks, its Optuna study in PostgreSQL and
its runs on an ``mlflow server`` backed by PostgreSQL. Every trial runs once, the numbers are those of the same
command on local processes with SQLite, and the report built from the server is the report built from SQLite."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from cluster_servers import MlflowServer, Postgres, missing_reason
from conftest import compose_config

from fluxbench.protocols import two_phase
from fluxbench.reports.build import build
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import HASH_TAG, KIND_TAG

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")
ray = pytest.importorskip("ray")

# finetune, one epoch, three random learning rates of one tuning seed, two phase-2 seeds
SMALL = ("protocol=two_phase", "method=finetune", "method.epochs=1", "~method.search_space.epochs",
         "~method.search_space.batch_size", "protocol.n_trials=3", "protocol.tuning_seeds=1", "protocol.num_seeds=2",
         "benchmark.num_experiences=3")
EXPERIMENT = "end_to_end"
MEASURED = ("wall_time_s", "peak_memory_mb")  # the machine's, not the result's
IDS = ("run_id", "start_time", "config_hash", "git_commit")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """PostgreSQL (the study and the server's backend), an MLflow server on it, and a local Ray cluster of 2 CPUs."""
    from fluxbench.protocols.ray_pool import connect

    root = tmp_path_factory.mktemp("cluster")
    postgres = Postgres.start()
    server = MlflowServer.start(postgres.create_database("mlflow", postgres.mlflow_template()), root / "artifacts",
                                root / "server.log")
    connect("local", num_cpus=2)
    try:
        yield postgres, server
    finally:
        ray.shutdown()
        server.close()
        postgres.close()


def _run(root: Path, *overrides: str) -> dict:
    cfg = compose_config(*SMALL, f"tracking.checkpoint_dir={root / 'checkpoints'}", f"tracking.experiment={EXPERIMENT}",
                         *overrides)
    tracking = cfg["tracking"]
    return two_phase.run(cfg, Tracker(tracking["uri"], tracking["experiment"], tracking.get("artifact_location")))


def _trials(study_url: str) -> dict[float, float]:
    (name,) = optuna.get_all_study_names(study_url)
    study = optuna.load_study(study_name=name, storage=study_url)
    assert all(t.state.name == "COMPLETE" for t in study.trials)
    return {t.params["lr"]: t.value for t in study.trials}


def _runs(uri: str) -> dict[str, list]:
    tracker = Tracker(uri, EXPERIMENT)
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.data.tags[KIND_TAG], []).append(r)
    return out


def _report(uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    report = build(uri, EXPERIMENT)
    board = report.board.drop(columns=[c for c in report.board if c in IDS or c.startswith(MEASURED)])
    return board, report.two_phase.drop(columns=[c for c in IDS if c in report.two_phase])


def test_two_phase_on_ray_with_postgresql_and_an_mlflow_server_equals_the_local_run(cluster, tmp_path):
    postgres, server = cluster
    local_root = tmp_path / "local"
    local = _run(local_root, f"tracking.uri=sqlite:///{local_root / 'mlflow.db'}")
    study = postgres.create_database("study")
    shared = _run(tmp_path / "shared", f"tracking.uri={server.url}", f"protocol.study_storage={study}",
                  "protocol.launcher=ray", "protocol.ray.heartbeat_s=1")

    assert shared["selected"] == local["selected"]
    assert _trials(study) == _trials(f"sqlite:///{local_root / 'optuna.db'}")  # each trial once, same scores
    on_server, on_sqlite = _runs(server.url), _runs(f"sqlite:///{local_root / 'mlflow.db'}")
    assert {k: len(v) for k, v in on_server.items()} == {"protocol": 1, "trial": 3, "seed": 3 + 2}
    assert all(r.info.status == "FINISHED" for runs in on_server.values() for r in runs)
    assert len({r.data.params["lr"] for r in on_server["trial"]}) == 3  # nothing duplicated

    def parent(runs: dict) -> dict:
        (run,) = runs["protocol"]
        return {"metrics": {k: v for k, v in run.data.metrics.items() if not k.startswith(MEASURED)},
                "hash": run.data.tags[HASH_TAG]}

    assert parent(on_server) == parent(on_sqlite)
    for got, want in zip(_report(server.url), _report(f"sqlite:///{local_root / 'mlflow.db'}")):
        pd.testing.assert_frame_equal(got, want)
    assert not (tmp_path / "shared" / "optuna.db").exists() and not (tmp_path / "shared" / "mlflow.db").exists()

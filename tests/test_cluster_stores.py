"""Shared stores, for real: a PostgreSQL server and an ``mlflow server`` started here, on free local ports.

Two-phase with its study and its runs in PostgreSQL gives the very numbers (and the report) of the local
SQLite run; concurrent processes on the MLflow server each leave one parent run; a fresh PostgreSQL
database opened by several processes at once is created once; a restart of PostgreSQL mid-run costs no
run; a wrong address, a refused password or a silent server is one line within seconds, and nothing is
written to a local store instead.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from cluster_servers import PASSWORD, MlflowServer, Postgres, free_port, missing_reason
from conftest import compose_config

from fluxbench.cli import main
from fluxbench.errors import DataError
from fluxbench.protocols import two_phase
from fluxbench.protocols.search import SearchStudy, search_distributions
from fluxbench.reports.build import build
from fluxbench.tracking import Tracker
from fluxbench.tracking.layout import HASH_TAG, KIND_TAG

pytestmark = pytest.mark.skipif(missing_reason() is not None, reason=missing_reason() or "")

# two_phase on the embedded default, as small as it gets: 2 learning rates, 1 tuning seed, 1 phase-2 seed
TWO_PHASE = ("protocol=two_phase", "method=finetune", "method.epochs=1", "~method.search_space.epochs",
             "~method.search_space.batch_size", "protocol.n_trials=2", "protocol.tuning_seeds=1",
             "protocol.num_seeds=1", "benchmark.num_experiences=3")
EXPERIMENT = "cluster"
MEASURED = ("wall_time_s", "peak_memory_mb")  # how long and how much memory: the machine's, not the result's


def results(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(MEASURED)}


@pytest.fixture(scope="module")
def postgres():
    server = Postgres.start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def mlflow_server(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow-server")
    backend = postgres.create_database("mlflow_server", postgres.mlflow_template())
    server = MlflowServer.start(backend, root / "artifacts", root / "server.log")
    yield server, root / "artifacts"
    server.close()


def silent_port() -> tuple[socket.socket, int]:
    """A port that accepts connections and never answers (a hung server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock, sock.getsockname()[1]


# -- same numbers, same report --------------------------------------------------------------
def _two_phase(tracking_uri: str, study: str | None, root: Path) -> tuple[dict, Tracker]:
    overrides = [f"tracking.uri={tracking_uri}", f"tracking.checkpoint_dir={root / 'checkpoints'}",
                 f"tracking.experiment={EXPERIMENT}", f"tracking.artifact_location={(root / 'artifacts').as_uri()}"]
    if study:
        overrides.append(f"protocol.study_storage={study}")
    cfg = compose_config(*TWO_PHASE, *overrides)
    tracker = Tracker(cfg["tracking"]["uri"], EXPERIMENT, cfg["tracking"]["artifact_location"])
    return two_phase.run(cfg, tracker), tracker


def _board(uri: str):
    report = build(uri, EXPERIMENT)
    ids = ["run_id", "start_time", "config_hash", "git_commit"]
    board = report.board.drop(columns=[c for c in report.board if c in ids or c.startswith(MEASURED)])
    return board, report.two_phase.drop(columns=[c for c in ids if c in report.two_phase])


def test_two_phase_in_postgresql_gives_the_sqlite_numbers_and_report(postgres, tmp_path):
    local, local_tracker = _two_phase(f"sqlite:///{tmp_path / 'local' / 'mlflow.db'}", None, tmp_path / "local")
    runs, study = postgres.create_database("runs", postgres.mlflow_template()), postgres.create_database("study")
    shared, shared_tracker = _two_phase(runs, study, tmp_path / "shared")

    def parent(tracker: Tracker, run_id: str) -> dict:
        run = tracker.client.get_run(run_id)
        return {"metrics": results(run.data.metrics), "hash": run.data.tags[HASH_TAG]}

    assert parent(shared_tracker, shared["run_id"]) == parent(local_tracker, local["run_id"])
    seeds = [shared_tracker.client.search_runs([t.experiment_id], f"tags.`{KIND_TAG}` = 'seed'")
             for t in (shared_tracker, local_tracker)]
    assert sorted(r.data.metrics["last_accuracy"] for r in seeds[0]) == \
        sorted(r.data.metrics["last_accuracy"] for r in seeds[1])
    assert len(seeds[0]) == 2 + 1  # two trials of one tuning seed, one phase-2 seed
    for got, want in zip(_board(runs), _board(local_tracker.uri)):
        pd.testing.assert_frame_equal(got, want)  # NaN (a CI over one seed) equals NaN here
    assert not (tmp_path / "shared" / "optuna.db").exists()  # the study is in PostgreSQL, not beside the runs


# -- the MLflow tracking server --------------------------------------------------------------
def test_concurrent_runs_on_the_mlflow_server_leave_one_parent_each(mlflow_server, tmp_path):
    server, artifacts = mlflow_server
    n = 8  # the 8 processes at once
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = []
    for seed in range(n):  # each in its own directory, as on separate machines
        cwd = tmp_path / f"job{seed}"
        cwd.mkdir()
        args = [sys.executable, "-m", "fluxbench.cli", "run", "protocol=conventional", "method=prototype",
                "protocol.num_seeds=1", "benchmark.num_experiences=2", f"seed={seed}", "progress=false",
                f"tracking.uri={server.url}", "tracking.experiment=concurrent"]
        procs.append(subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * n, "\n".join(outputs)
    tracker = Tracker(server.url, "concurrent")
    runs = tracker.client.search_runs([tracker.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags[KIND_TAG] == "protocol"]
    assert len(parents) == n and all(r.info.status == "FINISHED" for r in parents)
    assert len({r.data.tags[HASH_TAG] for r in parents}) == n
    assert len([r for r in runs if r.data.tags[KIND_TAG] == "seed"]) == n  # one seed each, none twice
    assert len(tracker.client.search_experiments(filter_string="name = 'concurrent'")) == 1
    assert list(artifacts.rglob("accuracy_matrix.csv"))  # artifacts went to the server's directory
    for seed in range(n):  # and nothing local
        assert not any((tmp_path / f"job{seed}" / name).exists() for name in ("mlflow.db", "mlruns", "mlartifacts"))
    board = build(server.url, "concurrent").board
    assert len(board) == 1 and board["configs"].iloc[0] == n


def _open_both(url: str, study_url: str, tmp: str) -> str:
    """One process's first use of a fresh store and study (run in a forked child)."""
    tracker = Tracker(url, "fresh")
    study = SearchStudy(study_url, "fresh-study", search_distributions({"lr": {"choices": [0.1, 0.01]}}), "random",
                        0, 2, Path(tmp) / "unused.lock")
    study.prepare([{"lr": 0.1}, {"lr": 0.01}])
    return tracker.experiment_id


def test_a_fresh_postgresql_database_opened_by_several_processes_at_once(postgres, tmp_path):
    url, study_url = postgres.create_database("fresh"), postgres.create_database("fresh_study")
    with multiprocessing.get_context("fork").Pool(4) as pool:
        ids = pool.starmap(_open_both, [(url, study_url, str(tmp_path))] * 4)
    assert len(set(ids)) == 1
    import optuna

    study = optuna.load_study(study_name="fresh-study", storage=study_url)
    assert sorted(t.user_attrs["plan"] for t in study.trials) == [0, 1]  # enqueued once, not once per process
    assert not list(tmp_path.iterdir())  # no file locks: the server held them


def _down_for(postgres: Postgres, seconds: float) -> None:
    postgres.stop()
    threading.Timer(seconds, postgres.resume).start()


def test_postgresql_restarted_mid_run_is_retried_and_no_run_is_lost(postgres, tmp_path, capsys):
    tracker = Tracker(postgres.create_database("restart", postgres.mlflow_template()), "restart")
    study = SearchStudy(postgres.create_database("restart_study"), "s", {}, "random", 0, 1, tmp_path / "unused.lock")
    study.prepare([{}])
    done = tracker.start("done", "hash-done", "seed")
    tracker.log_metrics(done, {"x": 1.0})
    tracker.end(done)
    going = tracker.start("going", "hash-going", "seed")
    _down_for(postgres, 3.0)
    tracker.log_metrics(going, {"y": 2.0})  # the server is down: retried until it is back
    tracker.end(going)
    _down_for(postgres, 3.0)
    trial = study.claim()  # the study too (its advisory lock and its storage)
    study.complete(trial, 0.5, {})
    err = capsys.readouterr().err
    assert "the MLflow store postgresql://fluxbench:***@" in err and "protocol.study_storage=postgresql://" in err
    assert err.count("dropped the connection") >= 2
    assert PASSWORD not in err
    runs = {r.info.run_name: r for r in tracker.client.search_runs([tracker.experiment_id])}
    assert runs["done"].info.status == runs["going"].info.status == "FINISHED"
    assert runs["done"].data.metrics == {"x": 1.0} and runs["going"].data.metrics == {"y": 2.0}
    assert [t.state.name for t in study.trials()] == ["COMPLETE"]


def test_a_store_down_for_longer_than_the_retries_is_one_line(postgres, monkeypatch):
    tracker = Tracker(postgres.create_database("down", postgres.mlflow_template()), "down")
    run = tracker.start("run", "hash", "seed")
    monkeypatch.setenv("FLUXBENCH_STORE_RETRY_S", "2")
    postgres.stop()
    try:
        with pytest.raises(DataError, match=r"^the MLflow store postgresql://fluxbench:\*\*\*@[\d.:]+/down failed"):
            tracker.log_metrics(run, {"y": 2.0})
    finally:
        postgres.resume()


# -- bad input --------------------------------------------------------------------------------
def _bad(postgres: Postgres, case: str) -> tuple[list[str], str, str]:
    """Overrides for ``case``, the address the line must name, what it must say."""
    dead = free_port()
    if case == "refused":
        return [f"tracking.uri={postgres.url('runs', port=dead)}"], f"127.0.0.1:{dead}", "connection refused"
    if case == "password":
        return [f"tracking.uri={postgres.url('postgres', password='wrong')}"], "fluxbench:***@", "credentials"
    if case == "study":
        return ["protocol=two_phase", f"protocol.study_storage={postgres.url('postgres', password='wrong')}"], \
            "protocol.study_storage=", "credentials"
    if case == "no study":  # runs on a server, the study nowhere: not beside them in a local file either
        return ["protocol=two_phase", f"tracking.uri=http://127.0.0.1:{dead}"], "protocol.study_storage", \
            "not a local store"
    return [f"tracking.uri=http://127.0.0.1:{dead}"], f"http://127.0.0.1:{dead}", "mlflow server"


@pytest.mark.parametrize("case", ["refused", "password", "study", "no study", "server"])
def test_an_unreachable_store_is_one_line_within_seconds_and_nothing_local(case, postgres, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    overrides, address, says = _bad(postgres, case)
    start = time.monotonic()
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *overrides, "method=prototype", "progress=false"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert address in err[0] and says in err[0] and "wrong" not in err[0] and PASSWORD not in err[0]
    assert elapsed < 8, elapsed
    assert not [p.name for p in tmp_path.iterdir() if p.name != ".fluxbench"]  # no mlflow.db, optuna.db, mlruns


def test_a_server_that_does_not_answer_is_one_line_within_seconds(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sock, port = silent_port()
    with sock:
        start = time.monotonic()
        with pytest.raises(SystemExit):
            main(["report", "--tracking-uri", f"http://127.0.0.1:{port}"])
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"127.0.0.1:{port}" in err[0] and "no answer within 5 s" in err[0], err
    assert elapsed < 8 and not list(tmp_path.iterdir())

"""Trials and seeds on Ray (``protocol.launcher=ray``), sweeps through Hydra's submitit launcher, and a Ray address
that does not answer. One local Ray cluster of 2 CPUs serves the whole module."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import compose_config

from fluxbench.protocols import two_phase
from fluxbench.protocols.ray_pool import connect
from fluxbench.tracking import Tracker
from fluxbench.tracking.mlflow_store import KIND_TAG

ray = pytest.importorskip("ray")

# finetune, one epoch, lr only, three random trials of one tuning seed, two phase-2 seeds
SMALL = ("protocol=two_phase", "method=finetune", "method.epochs=1", "~method.search_space.epochs",
         "~method.search_space.batch_size", "protocol.n_trials=3", "protocol.tuning_seeds=1", "protocol.num_seeds=2")
ON_RAY = ("protocol.launcher=ray", "protocol.ray.heartbeat_s=1")
ROOT = Path(__file__).resolve().parents[1]


def store_overrides(root: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.checkpoint_dir={root / 'checkpoints'}",
            "tracking.experiment=tests"]


def numbers(root: Path, result: dict) -> dict:
    """What a run computed: each trial's score by its values, and the parent's phase-2 metrics."""
    url = f"sqlite:///{root / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(url)
    study = optuna.load_study(study_name=name, storage=url)
    trials = {t.params["lr"]: t.value for t in study.trials if t.state.name == "COMPLETE"}
    tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}", "tests")
    parent = tracker.client.get_run(result["run_id"]).data.metrics
    return {"trials": trials, "selected": result["selected"],
            "parent": {k: v for k, v in parent.items() if not k.startswith(("wall_time", "peak_memory"))}}


def runs_of(root: Path, kind: str) -> list:
    tracker = Tracker(f"sqlite:///{root / 'mlflow.db'}", "tests")
    return tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = '{kind}'")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, started by this process and stopped with it."""
    connect("local", num_cpus=2)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    """The same command on local processes: the numbers Ray must give."""
    root = tmp_path_factory.mktemp("local")
    cfg = compose_config(*SMALL, *store_overrides(root))
    result = two_phase.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    return numbers(root, result)


def test_two_phase_on_ray_runs_every_trial_once_with_the_local_numbers(ray_cluster, local_run, tmp_path):
    cfg = compose_config(*SMALL, *ON_RAY, *store_overrides(tmp_path))
    result = two_phase.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    assert numbers(tmp_path, result) == local_run
    trials = runs_of(tmp_path, "trial")
    assert len(trials) == 3 and len({t.data.params["lr"] for t in trials}) == 3
    assert all(t.info.status == "FINISHED" for t in trials)
    assert len(runs_of(tmp_path, "seed")) == 3 + 2  # one tuning seed per trial, two phase-2 seeds


def _running_worker(root: Path) -> int | None:
    """The process id of a Ray worker inside a phase-1 trial, read with sqlite3 only."""
    path = root / "optuna.db"
    if not path.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
            rows = db.execute("SELECT a.value_json FROM trials t JOIN trial_user_attributes a ON a.trial_id = "
                              "t.trial_id AND a.key = 'process' WHERE t.state = 'RUNNING'").fetchall()
    except sqlite3.Error:
        return None
    return int(rows[0][0].strip('"').split(":")[0]) if rows else None


def test_a_worker_killed_mid_trial_leaves_a_trial_that_is_retried_not_lost(ray_cluster, local_run, tmp_path):
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.monotonic() + 300
        while not killed and time.monotonic() < deadline:
            pid = _running_worker(tmp_path)
            if pid is not None:
                time.sleep(0.5)  # inside the trial, not at its claim
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_worker, daemon=True)
    killer.start()
    cfg = compose_config(*SMALL, *ON_RAY, *store_overrides(tmp_path))
    result = two_phase.run(cfg, Tracker(cfg["tracking"]["uri"], cfg["tracking"]["experiment"]))
    killer.join()
    assert killed, "no trial was seen running"
    assert numbers(tmp_path, result) == local_run  # the interrupted trial's seed resumed: the same numbers
    study = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")[0],
                              storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1  # the killed one, failed by Optuna's heartbeat check
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed[0].number]
    assert [t.state.name for t in retries] == ["COMPLETE"] and retries[0].params == failed[0].params
    assert sorted(t.user_attrs["plan"] for t in study.trials if t.state.name == "COMPLETE") == [0, 1, 2]
    trials = runs_of(tmp_path, "trial")  # nothing duplicated: the retry resumed the killed trial's run
    assert len(trials) == 3 and all(t.info.status == "FINISHED" for t in trials)
    assert len(runs_of(tmp_path, "seed")) == 3 + 2


def fluxbench(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "fluxbench.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_an_unreachable_ray_address_is_one_line_within_seconds_and_writes_nothing(tmp_path):
    began = time.monotonic()
    out = fluxbench("run", *SMALL, "protocol.launcher=ray", "protocol.ray.address=127.0.0.1:9", "progress=false",
                    cwd=tmp_path)
    elapsed = time.monotonic() - began
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "protocol.ray.address=127.0.0.1:9" in lines[0] and "ray start --head" in lines[0]
    assert elapsed < 60  # Ray alone waits a minute or more; the start-up of the CLI is the rest
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no store, no study, no lock


def test_a_multirun_through_submitits_local_executor(tmp_path):
    out = fluxbench("run", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
                    "protocol=conventional", "method=finetune", "method.epochs=1", "protocol.num_seeds=1",
                    "method.lr=0.01,0.03", "progress=false", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "fluxbench")
    parents = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = 'protocol'")
    assert sorted(float(p.data.params["method.lr"]) for p in parents) == [0.01, 0.03]
    assert all(p.info.status == "FINISHED" for p in parents)
    assert list(tmp_path.glob("multirun/*/.submitit/*")), "the jobs ran through submitit"


def _probe_from_another_process(address: str, **env: str) -> subprocess.CompletedProcess:
    """What ``fluxbench run protocol.ray.address=HOST:PORT`` asks first, from a process that did not start the
    cluster (as on a user's login node), with ``env`` on top of this one's."""
    code = ("import sys\nfrom fluxbench.errors import ConfigError\nfrom fluxbench.protocols.ray_pool import probe\n"
            "try:\n    probe(sys.argv[1])\nexcept ConfigError as err:\n    sys.exit(str(err))\n")
    clean = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    return subprocess.run([sys.executable, "-c", code, address], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, cwd=ROOT)


def test_a_running_cluster_is_joined_by_its_address_with_this_machines_token(ray_cluster):
    assert _probe_from_another_process(ray_cluster).returncode == 0


def test_a_cluster_asking_for_a_token_this_machine_lacks_is_one_line_that_says_so(ray_cluster):
    if os.environ.get("RAY_AUTH_MODE") != "token":
        pytest.skip("this Ray started its cluster without token authentication")
    out = _probe_from_another_process(ray_cluster, RAY_AUTH_TOKEN="not-the-heads-token")
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert f"protocol.ray.address={ray_cluster}" in last and "token" in last and "ray get-auth-token" in last
